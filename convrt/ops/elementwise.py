"""Broadcasting binary arithmetic: Add, Sub, Mul, Div.

Same-shape operands (residual adds) run in a parallel numba kernel; other broadcasts use numpy's
compiled ufunc loops writing into the planned buffer.
"""

import numpy as np

from ..kernels import elementwise as K
from ._shape import NUMERIC, broadcast
from .registry import register_op


def _binary(ctx, A, B, ufunc, kernel):
    ctx.check(A.dtype == B.dtype, f"operand dtypes differ ({A.dtype} vs {B.dtype})")
    ctx.check(A.dtype in NUMERIC, f"dtype {A.dtype} is not supported")
    shape = broadcast(ctx, A.shape, B.shape)
    fast = A.dtype.kind == "f" and tuple(A.shape) == tuple(B.shape) == shape

    def run(a, b, out):
        if fast:
            kernel(a.reshape(-1), b.reshape(-1), out.reshape(-1))
        else:
            ufunc(a, b, out=out)

    return ctx.result([shape], [A.dtype], run)


def _int_div(a, b, out):
    # ONNX integer Div truncates toward zero (C semantics), unlike numpy's floor division.
    np.copyto(out, np.trunc(np.divide(a, b)).astype(out.dtype), casting="unsafe")


@register_op("Add", since=(7, 13, 14))
def Add(ctx, A, B):
    return _binary(ctx, A, B, np.add, K.add)


@register_op("Sub", since=(7, 13, 14))
def Sub(ctx, A, B):
    return _binary(ctx, A, B, np.subtract, K.sub)


@register_op("Mul", since=(7, 13, 14))
def Mul(ctx, A, B):
    return _binary(ctx, A, B, np.multiply, K.mul)


@register_op("Div", since=(7, 13, 14))
def Div(ctx, A, B):
    if A.dtype is not None and A.dtype.kind in "iu":
        return _binary(ctx, A, B, _int_div, K.div)
    return _binary(ctx, A, B, np.divide, K.div)
