"""MaxPool (training forward with argmax), AveragePool and GlobalAveragePool backward."""

from __future__ import annotations

import numba
import numpy as np

from ...ops._shape import ints, window
from ...ops.registry import OpContext
from ..kernels import pool as K
from .registry import kept, register_forward, register_grad


def _geometry(ctx, x):
    """(k, s, d, pads, out spatial) resolved with ONNX's rules, cached per input shape."""
    geo = ctx.cache.get("geo")
    if geo is None:
        a = ctx.attrs
        octx = OpContext(ctx.label, ctx.node.op_type, ctx.opset, True)
        k = ints(octx, a["kernel_shape"], 2, "kernel_shape", 1)
        s = ints(octx, a.get("strides") or [1, 1], 2, "strides", 1)
        d = ints(octx, a.get("dilations") or [1, 1], 2, "dilations", 1)
        p = ints(octx, a.get("pads") or [0, 0, 0, 0], 4, "pads", 0)
        out, p = window(octx, x.shape[2:], k, s, d, p, a.get("auto_pad", "NOTSET"),
                        int(a.get("ceil_mode", 0)))
        geo = ctx.cache["geo"] = (k, s, d, p, out)
    return geo


@register_forward("MaxPool")
def maxpool_forward(ctx, x):
    (kh, kw), (sh, sw), (dh, dw), p, out_sp = _geometry(ctx, x)
    y = kept(ctx.scratch, "y", x.shape[:2] + tuple(out_sp), x.dtype)
    arg = kept(ctx.scratch, "argmax", y.shape, np.int64)
    if (kh, kw, sh, sw, dh, dw) == (2, 2, 2, 2, 1, 1) and not any(p) and \
            2 * y.shape[2] <= x.shape[2] and 2 * y.shape[3] <= x.shape[3]:
        K.max_pool2x2_argmax(x, y, arg)  # every window inside the input
    else:
        K.max_pool2d_argmax(x, y, arg, kh, kw, sh, sw, dh, dw, p[0], p[1],
                             min(numba.get_num_threads(), x.shape[0] * x.shape[1]))
    ctx.saved["argmax"] = arg
    if len(ctx.node.outputs) > 1:  # Indices output: flat NCHW index (storage_order 0)
        hw = x.shape[2] * x.shape[3]
        base = (np.arange(x.shape[0] * x.shape[1], dtype=np.int64) * hw).reshape(
            x.shape[0], x.shape[1], 1, 1)
        return y, arg + base
    return (y,)


@register_grad("MaxPool")
def maxpool_grad(ctx, gy):
    x = ctx.inputs[0]
    gx = kept(ctx.scratch, "gx", x.shape, x.dtype)
    K.max_pool2d_backward(np.ascontiguousarray(gy[0]), ctx.saved["argmax"], gx)
    return (gx,)


@register_grad("AveragePool")
def avgpool_grad(ctx, gy):
    x = ctx.inputs[0]
    (kh, kw), (sh, sw), (dh, dw), p, _ = _geometry(ctx, x)
    gx = np.empty_like(x)
    K.avg_pool2d_backward(np.ascontiguousarray(gy[0]), gx, kh, kw, sh, sw, dh, dw, p[0], p[1],
                          p[2], p[3], int(ctx.attrs.get("count_include_pad", 0)))
    return (gx,)


@register_grad("GlobalAveragePool")
def gap_grad(ctx, gy):
    x = ctx.inputs[0]
    s = int(np.prod(x.shape[2:]))
    g = gy[0].reshape(x.shape[:2] + (1,) * (x.ndim - 2)) / np.asarray(s, x.dtype)
    return (np.broadcast_to(g, x.shape).copy(),)


@register_grad("GlobalMaxPool")
def gmp_grad(ctx, gy):
    """All of each plane's gradient to its first maximum (the argmax PyTorch's max pooling
    routes to)."""
    x = ctx.inputs[0]
    n, c = x.shape[:2]
    flat = x.reshape(n * c, -1)
    arg = flat.argmax(axis=1)
    gx = np.zeros_like(flat)
    gx[np.arange(n * c), arg] = gy[0].reshape(-1)
    return (gx.reshape(x.shape),)


@register_grad("ReduceMean", nondiff=(1,))
def reduce_mean_grad(ctx, gy):
    """The output's gradient spread evenly over the reduced cells (axes from the attribute
    before opset 18, from input 1 since; no axes = all, unless noop_with_empty_axes)."""
    x = ctx.inputs[0]
    if ctx.opset < 18:
        axes = ctx.attrs.get("axes")
    else:
        axes = ctx.input(1)
    axes = [] if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if not axes:
        if ctx.opset >= 18 and int(ctx.attrs.get("noop_with_empty_axes", 0)):
            return (gy[0].reshape(x.shape),) + (None,) * (len(ctx.inputs) - 1)
        axes = list(range(x.ndim))
    axes = sorted({a + x.ndim if a < 0 else a for a in axes})
    g = gy[0]
    if not int(ctx.attrs.get("keepdims", 1)):
        g = np.expand_dims(g, tuple(axes))
    count = int(np.prod([x.shape[a] for a in axes]))
    g = g / np.asarray(count, x.dtype)
    return (np.broadcast_to(g, x.shape).copy(),) + (None,) * (len(ctx.inputs) - 1)
