"""Backward of the ops that only move data: Identity, Flatten, Reshape, Squeeze, Unsqueeze,
Concat, Split."""

from __future__ import annotations

import numpy as np

from .registry import register_grad


def _same_shape(ctx, gy):
    x = ctx.inputs[0]
    return (gy[0].reshape(x.shape),) + (None,) * (len(ctx.inputs) - 1)


register_grad("Identity")(_same_shape)
register_grad("Flatten")(_same_shape)
register_grad("Reshape", nondiff=(1,))(_same_shape)
register_grad("Squeeze", nondiff=(1,))(_same_shape)
register_grad("Unsqueeze", nondiff=(1,))(_same_shape)


@register_grad("Concat")
def concat_grad(ctx, gy):
    axis = int(ctx.attrs["axis"])
    axis = axis + gy[0].ndim if axis < 0 else axis
    bounds = np.cumsum([t.shape[axis] for t in ctx.inputs])[:-1]
    return tuple(np.split(gy[0], bounds, axis=axis))


@register_grad("Transpose")
def transpose_grad(ctx, gy):
    perm = ctx.attrs.get("perm")
    p = list(range(gy[0].ndim))[::-1] if perm is None else [int(v) for v in perm]
    return (np.ascontiguousarray(gy[0].transpose(np.argsort(p))),)


def _ints(v):
    return None if v is None else [int(i) for i in np.asarray(v).reshape(-1)]


@register_grad("Slice", nondiff=(1, 2, 3, 4))
def slice_grad(ctx, gy):
    """Scatter the output's gradient back into a zero tensor of the input's shape, through the
    same slices the forward took (negative steps, clamped bounds)."""
    x = ctx.inputs[0]
    if ctx.opset < 10:
        starts, ends = _ints(ctx.attrs["starts"]), _ints(ctx.attrs["ends"])
        axes, steps = _ints(ctx.attrs.get("axes")), None
    else:
        starts, ends = _ints(ctx.input(1)), _ints(ctx.input(2))
        axes, steps = _ints(ctx.input(3)), _ints(ctx.input(4))
    axes = list(range(len(starts))) if axes is None else [a + x.ndim if a < 0 else a
                                                          for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    sl = [slice(None)] * x.ndim
    for a, b, e, s in zip(axes, starts, ends, steps):
        sl[a] = slice(*slice(b, e, s).indices(x.shape[a]))
    gx = np.zeros_like(x)
    gx[tuple(sl)] = gy[0]
    return (gx,) + (None,) * (len(ctx.inputs) - 1)


@register_grad("Pad", nondiff=(1, 2, 3))
def pad_grad(ctx, gy):
    """Constant mode: the gradient is the output's gradient cropped back to the input (negative
    pads crop in the forward, so those cells of the input get zero)."""
    from ...errors import TrainingError

    x = ctx.inputs[0]
    mode = ctx.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        raise TrainingError(f"node '{ctx.label}' (Pad): no backward rule for mode {mode!r} "
                            "(only 'constant')")
    r = x.ndim
    if ctx.opset < 11:
        pads, axes = _ints(ctx.attrs["pads"]), None
    else:
        pads, axes = _ints(ctx.input(1)), _ints(ctx.input(3))
    axes = list(range(r)) if axes is None else [a + r if a < 0 else a for a in axes]
    begin, end = [0] * r, [0] * r
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + len(axes)]
    src, dst = [], []
    for d, b, e in zip(x.shape, begin, end):
        lo, hi = max(0, -b), min(d, d + e)  # the input cells that reach the output
        src.append(slice(lo + b, hi + b))
        dst.append(slice(lo, hi))
    gx = np.zeros_like(x)
    gx[tuple(dst)] = gy[0][tuple(src)]
    return (gx,) + (None,) * (len(ctx.inputs) - 1)


@register_grad("Split", nondiff=(1,))
def split_grad(ctx, gy):
    """The outputs' gradients concatenated back along the axis; an output nothing reads
    contributes zeros of its shape."""
    x = ctx.inputs[0]
    axis = int(ctx.attrs.get("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    parts = [np.zeros(o.shape, x.dtype) if g is None else g for g, o in zip(gy, ctx.outputs)]
    return (np.concatenate(parts, axis=axis),) + (None,) * (len(ctx.inputs) - 1)
