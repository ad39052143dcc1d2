"""Pooling: MaxPool, AveragePool (2-D windows), GlobalAveragePool, GlobalMaxPool."""

from ..kernels import pool as K
from ._shape import FLOAT_TYPES, ints, window
from .registry import register_op

def _pool_geometry(ctx, X, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode):
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 3, f"input rank {X.rank} must be >= 3")
    nsp = X.rank - 2
    if nsp != 2:
        raise ctx.unsupported(f"only 2-D pooling is supported, got {nsp}-D input")
    k = ints(ctx, kernel_shape, nsp, "kernel_shape", 1)
    s = ints(ctx, strides if strides is not None else [1] * nsp, nsp, "strides", 1)
    d = ints(ctx, dilations if dilations is not None else [1] * nsp, nsp, "dilations", 1)
    p = ints(ctx, pads if pads is not None else [0] * 2 * nsp, 2 * nsp, "pads", 0)
    ctx.check(ceil_mode in (0, 1), f"ceil_mode must be 0 or 1, got {ceil_mode}")
    for i in range(nsp):
        ctx.check(p[i] < (k[i] - 1) * d[i] + 1 and p[i + nsp] < (k[i] - 1) * d[i] + 1,
                  f"pads {list(p)} must be smaller than the window {list(k)}")
    out, p = window(ctx, X.shape[2:], k, s, d, p, auto_pad, ceil_mode)
    return k, s, d, p, tuple(X.shape[:2]) + out

@register_op("MaxPool", since=(8, 10, 11, 12, 22))
def MaxPool(ctx, X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape,
            pads=None, storage_order=0, strides=None):
    k, s, d, p, shape = _pool_geometry(ctx, X, kernel_shape, strides, pads, dilations, auto_pad,
                                       ceil_mode)
    if storage_order != 0:
        raise ctx.unsupported("storage_order=1 is not supported")

    def run(x, out, indices=None):
        K.max_pool2d(x, out, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1])

    return ctx.result([shape], [X.dtype], run)

@register_op("AveragePool", since=(7, 10, 11, 19, 22))
def AveragePool(ctx, X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                kernel_shape, pads=None, strides=None):
    if ctx.opset < 19 and dilations is not None and any(int(v) != 1 for v in dilations):
        raise ctx.fail("dilations need opset 19")
    k, s, d, p, shape = _pool_geometry(ctx, X, kernel_shape, strides, pads, dilations, auto_pad,
                                       ceil_mode)
    cip = int(count_include_pad)

    def run(x, out):
        K.avg_pool2d(x, out, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1], p[2], p[3], cip)

    return ctx.result([shape], [X.dtype], run)

def _global(ctx, X, kernel):
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 3, f"input rank {X.rank} must be >= 3")
    shape = tuple(X.shape[:2]) + (1,) * (X.rank - 2)

    def run(x, out):
        n, c = x.shape[:2]
        kernel(x.reshape(n, c, -1), out.reshape(n, c))

    return ctx.result([shape], [X.dtype], run)

@register_op("GlobalAveragePool", since=(1, 22))
def GlobalAveragePool(ctx, X):
    return _global(ctx, X, K.global_avg_pool)

@register_op("GlobalMaxPool", since=(1, 22))
def GlobalMaxPool(ctx, X):
    return _global(ctx, X, K.global_max_pool)

