"""LRN: local response normalization across channels (AlexNet, GoogLeNet)."""

from ..kernels.lrn import lrn as _lrn
from ._shape import FLOAT_TYPES
from .registry import register_op


@register_op("LRN", since=(1, 13))
def LRN(ctx, X, *, alpha=0.0001, beta=0.75, bias=1.0, size):
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 3, f"input rank {X.rank} must be >= 3")
    n = int(size)
    ctx.check(n >= 1, f"size must be >= 1, got {size}")
    a, b, k = float(alpha), float(beta), float(bias)

    def run(x, out):
        nb, c = x.shape[:2]
        _lrn(x.reshape(nb, c, -1), out.reshape(nb, c, -1), n, a, b, k)

    return ctx.result([X.shape], [X.dtype], run)
