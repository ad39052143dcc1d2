"""Resize / Upsample backward (YOLOv8's nearest upsampling, and the linear and cubic modes).

The forward is separable: each resized axis is a linear map given by convrt's own tap tables
(``kernels/resize.axis_table``: per output position, input indices and weights, plus the
positions that take the extrapolation value).  Its gradient is the transposed map, axis by axis:
``gx[idx[o, k]] += w[o, k] * gy[o]`` (weight 1 for nearest), nothing for extrapolated positions.
The scales are recovered as the op derives them (``scales`` as given; ``sizes`` as size / input,
or the aspect-ratio policy's common scale), so the tables are the forward's own.
"""

from __future__ import annotations

import numpy as np

from ...errors import TrainingError
from ...kernels import resize as K
from .registry import register_grad


def _attr(ctx, name, default):
    v = ctx.attrs.get(name, default)
    return v.decode() if isinstance(v, bytes) else v


def _scales(ctx, x, y, axes):
    """Per-axis float scale of the forward, for ``axes`` (the resized axes in order)."""
    op = ctx.node.op_type
    if op == "Upsample" and ctx.opset < 9:
        vals, kind = [float(v) for v in ctx.attrs["scales"]], "scales"
    elif op == "Upsample" or ctx.opset < 11:
        vals, kind = [float(v) for v in np.asarray(ctx.input(1)).reshape(-1)], "scales"
    else:
        sc, sz = ctx.input(2), ctx.input(3)
        if sc is not None and np.asarray(sc).size:
            vals, kind = [float(v) for v in np.asarray(sc).reshape(-1)], "scales"
        else:
            vals, kind = [int(v) for v in np.asarray(sz).reshape(-1)], "sizes"
    scale = [1.0] * x.ndim
    if kind == "scales":
        for a, s in zip(axes, vals):
            scale[a] = s
        return scale
    policy = _attr(ctx, "keep_aspect_ratio_policy", "stretch")
    ratios = [v / x.shape[a] for a, v in zip(axes, vals)]
    for a, r in zip(axes, ratios):
        scale[a] = r if policy == "stretch" else (min(ratios) if policy == "not_larger"
                                                  else max(ratios))
    return scale


@register_grad("Resize", nondiff=(1, 2, 3))
@register_grad("Upsample", nondiff=(1,))
def resize_grad(ctx, gy):
    x, y = ctx.inputs[0], ctx.outputs[0]
    legacy = ctx.node.op_type == "Upsample" or ctx.opset < 11
    mode = _attr(ctx, "mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise TrainingError(f"node '{ctx.label}' ({ctx.node.op_type}): no backward rule for "
                            f"mode {mode!r}")
    ctm = "asymmetric" if legacy else _attr(ctx, "coordinate_transformation_mode", "half_pixel")
    nearest_mode = "legacy" if legacy else _attr(ctx, "nearest_mode", "round_prefer_floor")
    axes = ctx.attrs.get("axes")
    axes = list(range(x.ndim)) if axes is None else [int(a) + x.ndim if int(a) < 0 else int(a)
                                                     for a in axes]
    scale = _scales(ctx, x, y, axes)
    roi = None if legacy or ctm != "tf_crop_and_resize" else np.asarray(ctx.input(1)).reshape(-1)
    g = np.asarray(gy[0], np.float64)
    for i, a in enumerate(axes):
        i_n, o_n = x.shape[a], y.shape[a]
        box = (0.0, 1.0) if roi is None else (roi[i], roi[i + len(axes)])
        if 0 in (i_n, o_n) or (scale[a] == 1.0 and i_n == o_n and tuple(box) == (0.0, 1.0)):
            continue
        t = K.axis_table(mode, ctm, i_n, o_n, scale[a], nearest_mode=nearest_mode,
                         cubic_a=float(ctx.attrs.get("cubic_coeff_a", -0.75)),
                         exclude_outside=bool(ctx.attrs.get("exclude_outside", 0)),
                         antialias=bool(ctx.attrs.get("antialias", 0)) and mode != "nearest",
                         roi=box)
        gm = np.moveaxis(g, a, 0)
        if t.ext is not None:
            gm = gm * ~t.ext.reshape((-1,) + (1,) * (gm.ndim - 1))
        out = np.zeros((i_n,) + gm.shape[1:])
        for k in range(t.idx.shape[1]):
            w = 1.0 if t.w is None else t.w[:, k].reshape((-1,) + (1,) * (gm.ndim - 1))
            np.add.at(out, t.idx[:, k], gm * w)
        g = np.moveaxis(out, 0, a)
    return (g.astype(x.dtype),) + (None,) * (len(ctx.inputs) - 1)
