"""3-D Conv on the direct numba kernel (``ops/conv.py`` validates and dispatches here)."""

import numpy as np

from ..kernels.conv3d import conv3d

_ACT = {
    "none": None,
    "relu": lambda y, alpha, lo, hi: np.maximum(y, 0, out=y),
    "leaky_relu": lambda y, alpha, lo, hi: np.copyto(y, y * y.dtype.type(alpha), where=y < 0),
    "clip": lambda y, alpha, lo, hi: np.clip(y, lo, hi, out=y),
    "sigmoid": lambda y, alpha, lo, hi: np.copyto(y, 1 / (1 + np.exp(-y))),
    "tanh": lambda y, alpha, lo, hi: np.tanh(y, out=y),
}


def bind_conv3d(ctx, X, W, B, k, s, d, p, g, shape, macs, activation="none", alpha=0.01,
                clip=(-np.inf, np.inf), residual=False):
    """Kernel for a (possibly fused) 3-D Conv; the epilogue runs in numpy."""
    if activation not in _ACT:
        raise ctx.unsupported(f"activation {activation!r} is not supported for 3-D Conv")
    if not ctx.binding:
        return ctx.result([shape], [X.dtype], flops=macs)
    geo = np.array(tuple(s) + tuple(d) + tuple(p[:3]), dtype=np.int64)
    has_b = B is not None
    empty = np.zeros(1, X.dtype)
    act = _ACT[activation]

    def run(x, w, *rest):  # rest = ([b], [z], out)
        out = rest[-1]
        conv3d(x, w, rest[0] if has_b else empty, has_b, out, g, geo)
        if residual:
            np.add(out, rest[-2], out=out)
        if act is not None:
            act(out, alpha, clip[0], clip[1])

    return ctx.result([shape], [X.dtype], run, flops=macs)
