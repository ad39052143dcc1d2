"""Local response normalization across channels on an (N, C, S) view."""

from numba import prange

from ._jit import pjit


@pjit
def lrn(x, out, size, alpha, beta, bias):
    """out = x / (bias + alpha / size * sum of x^2 over the channel window) ** beta.

    The window of channel c is [c - (size - 1) // 2, c + ceil((size - 1) / 2)] clipped to [0, C).
    """
    n, c, s = x.shape
    lo_off = (size - 1) // 2
    hi_off = size - 1 - lo_off
    scale = alpha / size
    for t in prange(n * s):
        i, k = t // s, t % s
        for j in range(c):
            lo = max(0, j - lo_off)
            hi = min(c - 1, j + hi_off)
            acc = 0.0
            for q in range(lo, hi + 1):
                v = x[i, q, k]
                acc += v * v
            out[i, j, k] = x[i, j, k] / (bias + scale * acc) ** beta
