"""Data movement with copies: Transpose, Pad, Slice, ConstantOfShape.

Values that decide an output shape (pads, starts/ends/axes/steps, the shape of ConstantOfShape)
must be constant when a plan is built; at load time a non-constant one gives unknown dims.
"""

import numpy as np

from ._shape import known
from ._shape import axis as norm_axis
from .registry import register_op


def _ints_of(ctx, T, name, dtypes=(np.int64,)):
    """The int contents of a constant input; None at load time when not yet known."""
    if T.value is None:
        if ctx.binding:
            raise ctx.unsupported(f"input '{name}' must be computable before run time")
        return None
    ctx.check(T.dtype in tuple(np.dtype(d) for d in dtypes),
              f"{name} must be {' or '.join(np.dtype(d).name for d in dtypes)}, got {T.dtype}")
    ctx.check(T.rank == 1 or (T.rank == 0 and name != "pads"), f"{name} must be 1-D")
    return [int(v) for v in T.value.reshape(-1)]


# -- Transpose ---------------------------------------------------------------------------------
@register_op("Transpose", since=(1, 13, 21, 23, 24, 25))
def Transpose(ctx, data, *, perm=None):
    r = data.rank
    ctx.check(r is not None, "input rank must be known")
    p = tuple(range(r))[::-1] if perm is None else tuple(int(v) for v in perm)
    ctx.check(sorted(p) == list(range(r)), f"perm {list(p)} is not a permutation of "
              f"{r} axes")
    shape = tuple(data.shape[i] for i in p)
    return ctx.result([shape], [data.dtype], lambda x, out: np.copyto(out, x.transpose(p)))


# -- Pad ---------------------------------------------------------------------------------------
_PAD_MODES = ("constant", "reflect", "edge")


def _pad(ctx, data, pads, mode, axes=None, const=None):
    modes = _PAD_MODES + (("wrap",) if ctx.opset >= 19 else ())
    ctx.check(mode in modes, f"mode {mode!r} is not one of {', '.join(modes)}")
    r = data.rank
    ctx.check(r is not None, "input rank must be known")
    ax = list(range(r)) if axes is None else [norm_axis(ctx, a, r, "axes") for a in axes]
    ctx.check(len(set(ax)) == len(ax), f"axes {axes} has duplicates")
    if pads is None:
        return ctx.result([(None,) * r], [data.dtype])
    ctx.check(len(pads) == 2 * len(ax), f"pads has {len(pads)} entries, expected "
              f"{2 * len(ax)}")
    begin, end = [0] * r, [0] * r
    for i, a in enumerate(ax):
        begin[a], end[a] = pads[i], pads[i + len(ax)]
    shape = []
    for i, d in enumerate(data.shape):
        if not known(d):
            shape.append(d if begin[i] == end[i] == 0 else None)  # an unpadded batch keeps "N"
            continue
        o = d + begin[i] + end[i]
        ctx.check(o >= 0, f"pads {pads} crop axis {i} of size {d} below zero")
        if mode != "constant" and (begin[i] > 0 or end[i] > 0):
            ctx.check(d >= 1, f"{mode} padding of the empty axis {i}")
            if mode == "reflect":
                ctx.check(begin[i] < d and end[i] < d, f"reflect pads {pads} must be smaller "
                          f"than axis {i} of size {d}")
        shape.append(o)
    if const is not None:
        ctx.check(const.dtype == data.dtype, f"constant_value dtype {const.dtype} differs from "
                  f"data {data.dtype}")
        ctx.check(const.shape in ((), (1,)) or const.shape is None,
                  "constant_value must be a scalar")
    if not ctx.binding:
        return ctx.result([shape], [data.dtype])
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for b, e, d in zip(begin, end, data.shape))
    widths = tuple((max(b, 0), max(e, 0)) for b, e in zip(begin, end))

    def core(x, c, out):
        """``c`` is the constant_value array or None (zero)."""
        xc = x[crop]
        if mode == "constant":
            v = 0 if c is None else c.reshape(-1)[0]
            out[...] = np.pad(xc, widths, mode="constant", constant_values=v)
        else:
            out[...] = np.pad(xc, widths, mode=mode)

    return ctx.result([tuple(shape)], [data.dtype], core)


def _rewrap(res, fn):
    if res.kernel is not None:
        core = res.kernel
        res.kernel = lambda *a: fn(core, *a)
    return res


@register_op("Pad", since=2)
def Pad_2(ctx, data, *, mode="constant", pads, value=0.0):
    c = np.asarray(value).astype(data.dtype)
    return _rewrap(_pad(ctx, data, [int(v) for v in pads], mode),
                   lambda core, x, out: core(x, c, out))


def _pad_inputs(core, x, p, *rest):  # rest = ([constant_value], [axes], out)
    core(x, rest[0] if len(rest) > 1 else None, rest[-1])


@register_op("Pad", since=(11, 13))
def Pad_11(ctx, data, pads, constant_value=None, *, mode="constant"):
    return _rewrap(_pad(ctx, data, _ints_of(ctx, pads, "pads"), mode, None, constant_value),
                   _pad_inputs)


@register_op("Pad", since=(18, 19, 21, 23, 24, 25))
def Pad(ctx, data, pads, constant_value=None, axes=None, *, mode="constant"):
    ax = None if axes is None else _ints_of(ctx, axes, "axes", (np.int64, np.int32))
    if axes is not None and ax is None:
        return ctx.result([(None,) * data.rank], [data.dtype])
    return _rewrap(_pad(ctx, data, _ints_of(ctx, pads, "pads"), mode, ax, constant_value),
                   _pad_inputs)


# -- Slice -------------------------------------------------------------------------------------
def _slice(ctx, data, starts, ends, axes, steps):
    r = data.rank
    ctx.check(r is not None, "input rank must be known")
    if starts is None or ends is None or axes is _UNKNOWN or steps is _UNKNOWN:
        return ctx.result([(None,) * r], [data.dtype])
    ctx.check(len(starts) == len(ends), f"starts {starts} and ends {ends} differ in length")
    ax = list(range(len(starts))) if axes is None else [norm_axis(ctx, a, r, "axes")
                                                        for a in axes]
    st = [1] * len(starts) if steps is None else list(steps)
    ctx.check(len(ax) == len(starts) and len(st) == len(starts),
              f"starts/ends/axes/steps lengths differ ({len(starts)}, {len(ax)}, {len(st)})")
    ctx.check(len(set(ax)) == len(ax), f"axes {ax} has duplicates")
    ctx.check(all(s != 0 for s in st), f"steps {st} contains 0")
    slices = [slice(None)] * r
    shape = list(data.shape)
    for a, b, e, s in zip(ax, starts, ends, st):
        d = data.shape[a]
        if not known(d):
            shape[a] = None
            continue
        sl = slice(*slice(b, e, s).indices(d))
        slices[a] = sl
        shape[a] = len(range(sl.start, sl.stop, sl.step))
    slices = tuple(slices)
    return ctx.result([tuple(shape)], [data.dtype],
                      lambda x, *rest: np.copyto(rest[-1], x[slices]))


_UNKNOWN = object()


def _known(v):
    return _UNKNOWN if v is None else v


@register_op("Slice", since=1)
def Slice_1(ctx, data, *, axes=None, ends, starts):
    return _slice(ctx, data, list(starts), list(ends), None if axes is None else list(axes),
                  None)


@register_op("Slice", since=(10, 11, 13))
def Slice(ctx, data, starts, ends, axes=None, steps=None):
    idx = (np.int32, np.int64)
    s = _ints_of(ctx, starts, "starts", idx)
    e = _ints_of(ctx, ends, "ends", idx)
    a = None if axes is None else _known(_ints_of(ctx, axes, "axes", idx))
    st = None if steps is None else _known(_ints_of(ctx, steps, "steps", idx))
    return _slice(ctx, data, s, e, a, st)


# -- ConstantOfShape ---------------------------------------------------------------------------
@register_op("ConstantOfShape", since=(9, 20, 21, 23, 24, 25))
def ConstantOfShape(ctx, input, *, value=None):
    ctx.check(input.dtype == np.int64, f"input must be int64, got {input.dtype}")
    ctx.check(input.rank == 1, f"input must be 1-D, got rank {input.rank}")
    fill = np.zeros((1,), np.float32) if value is None else np.asarray(value)
    ctx.check(fill.size == 1, f"value must hold one element, got shape {list(fill.shape)}")
    if input.value is None:
        if ctx.binding:
            raise ctx.unsupported("input 'input' must be computable before run time")
        n = input.shape[0]
        return ctx.result([(None,) * n if known(n) else None], [fill.dtype])
    shape = tuple(int(v) for v in input.value.reshape(-1))
    ctx.check(all(d >= 0 for d in shape), f"shape {list(shape)} has negative dims")
    v = fill.reshape(-1)[0]
    return ctx.result([shape], [fill.dtype], lambda s, out: out.fill(v))
