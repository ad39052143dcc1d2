"""Broadcasting binary arithmetic: Add, Sub, Mul, Div.

Same-shape operands (residual adds) run in a parallel numba kernel; so does a Mul of a feature
map by a per-plane scale (squeeze-and-excitation: ``x[N, C, H, W] * gate[N, C, 1, 1]``, either
operand order); other broadcasts use numpy's compiled ufunc loops writing into the planned buffer.
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


def plane_rank(big, small, shape) -> int:
    """k when ``small``, left-padded with 1s to big's rank, equals ``big`` on its first k dims
    and is 1 on the rest, some of which ``big`` broadcasts (the result is ``big``'s shape): then
    ``small`` holds one scalar per plane (P = prod big[:k]) of ``big``; 0 otherwise.  Symbolic
    dims count as equal only when they are the same symbol, unknown ones never."""
    if big is None or small is None or tuple(big) != tuple(shape) or len(small) > len(big):
        return 0
    padded = (1,) * (len(big) - len(small)) + tuple(small)
    k = 0
    while k < len(big) and padded[k] is not None and padded[k] == big[k]:
        k += 1
    if k == 0 or k == len(big) or any(d != 1 for d in padded[k:]):
        return 0
    return k


def _mul(ctx, A, B):
    """Mul, with the per-plane scale kernel when one operand is a per-(N, C) scale of the other."""
    res = _binary(ctx, A, B, np.multiply, K.mul)
    if not ctx.binding or A.dtype.kind != "f":
        return res
    shape = broadcast(ctx, A.shape, B.shape)
    if plane_rank(A.shape, B.shape, shape):
        return ctx.result([shape], [A.dtype], lambda a, b, out: K.plane_scale(
            a.reshape(b.size, -1), b.reshape(-1), out.reshape(b.size, -1)))
    if plane_rank(B.shape, A.shape, shape):
        return ctx.result([shape], [A.dtype], lambda a, b, out: K.plane_scale(
            b.reshape(a.size, -1), a.reshape(-1), out.reshape(a.size, -1)))
    return res


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
    return _mul(ctx, A, B)


@register_op("Div", since=(7, 13, 14))
def Div(ctx, A, B):
    if A.dtype is not None and A.dtype.kind in "iu":
        return _binary(ctx, A, B, _int_div, K.div)
    return _binary(ctx, A, B, np.divide, K.div)
