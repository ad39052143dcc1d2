"""Pooling: MaxPool, AveragePool (2-D windows), GlobalAveragePool, GlobalMaxPool."""

import math

import numpy as np

from ..kernels import first_tier
from ..kernels import pool as K
from . import pool_nd
from ._shape import FLOAT16_UP, FLOAT_TYPES, ints, window
from .registry import register_op

_INT8 = (np.dtype(np.int8), np.dtype(np.uint8))

def _pool_geometry(ctx, X, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode,
                   dtypes=FLOAT_TYPES):
    ctx.check(X.dtype in dtypes, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 3, f"input rank {X.rank} must be >= 3")
    nsp = X.rank - 2
    if nsp > 3:
        raise ctx.unsupported(f"{nsp}-D pooling is not supported (1-D, 2-D and 3-D are)")
    ctx.check(all(not isinstance(v, int) or v >= 1 for v in X.shape[2:]),
              f"input spatial dims {list(X.shape[2:])} are empty")
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
    dtypes = FLOAT16_UP + (_INT8 if ctx.opset >= 12 else ())
    k, s, d, p, shape = _pool_geometry(ctx, X, kernel_shape, strides, pads, dilations, auto_pad,
                                       ceil_mode, dtypes)
    if len(k) != 2 or X.dtype not in FLOAT_TYPES or ctx.n_outputs > 1:
        return pool_nd.bind_max(ctx, X, k, s, d, p, shape, int(storage_order), ctx.n_outputs)

    if ctx.first_tier:  # numpy (kernels/first_tier.py): nothing to compile
        def run_first(x, out, indices=None):
            first_tier.max_pool2d(x, out, k, s, d, p)

        return ctx.result([shape], [X.dtype], run_first)

    def run(x, out, indices=None):
        K.max_pool2d(x, out, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1])

    return ctx.result([shape], [X.dtype], run)

@register_op("MaxPool", since=1)
def MaxPool_1(ctx, X, *, auto_pad="NOTSET", kernel_shape, pads=None, strides=None):
    return MaxPool(ctx, X, auto_pad=auto_pad, kernel_shape=kernel_shape, pads=pads,
                   strides=strides)

@register_op("AveragePool", since=(7, 10, 11, 19, 22))
def AveragePool(ctx, X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                kernel_shape, pads=None, strides=None):
    if ctx.opset < 19 and dilations is not None and any(int(v) != 1 for v in dilations):
        raise ctx.fail("dilations need opset 19")
    k, s, d, p, shape = _pool_geometry(ctx, X, kernel_shape, strides, pads, dilations, auto_pad,
                                       ceil_mode)
    cip = int(count_include_pad)
    if len(k) != 2:
        return pool_nd.bind_avg(ctx, X, k, s, d, p, shape, cip)

    if ctx.first_tier:  # numpy (kernels/first_tier.py): nothing to compile
        def run_first(x, out):
            first_tier.avg_pool2d(x, out, k, s, d, p, cip)

        return ctx.result([shape], [X.dtype], run_first)

    def run(x, out):
        K.avg_pool2d(x, out, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1], p[2], p[3], cip)

    return ctx.result([shape], [X.dtype], run)

def _global(ctx, X, kernel, op):
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 3, f"input rank {X.rank} must be >= 3")
    ctx.check(all(not isinstance(v, int) or v >= 1 for v in X.shape[2:]),
              f"input spatial dims {list(X.shape[2:])} are empty")  # the kernels read x[..., 0]
    shape = tuple(X.shape[:2]) + (1,) * (X.rank - 2)

    if ctx.first_tier:  # numpy (kernels/first_tier.py): nothing to compile
        return ctx.result([shape], [X.dtype], lambda x, out: first_tier.global_pool(x, out, op))

    def run(x, out):
        n, c = x.shape[:2]
        # math.prod, not np.prod: numpy's reduce machinery measured 80 us here, the kernel 30
        kernel(x.reshape(n, c, math.prod(x.shape[2:])), out.reshape(n, c))

    return ctx.result([shape], [X.dtype], run)

@register_op("GlobalAveragePool", since=(1, 22))
def GlobalAveragePool(ctx, X):
    return _global(ctx, X, K.global_avg_pool, "avg")

@register_op("GlobalMaxPool", since=(1, 22))
def GlobalMaxPool(ctx, X):
    return _global(ctx, X, K.global_max_pool, "max")

