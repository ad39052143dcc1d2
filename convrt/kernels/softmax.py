"""Softmax and LogSoftmax along the middle axis of an (outer, L, inner) view."""

import math

from numba import prange

from ._jit import pjit


@pjit
def softmax(x, out, log):
    outer, n, inner = x.shape
    for t in prange(outer * inner):
        o, i = t // inner, t % inner
        m = -math.inf
        for k in range(n):
            v = x[o, k, i]
            if v > m or v != v:
                m = v
        s = 0.0
        for k in range(n):
            s += math.exp(x[o, k, i] - m)
        if log:
            ls = math.log(s)
            for k in range(n):
                out[o, k, i] = x[o, k, i] - m - ls
        else:
            for k in range(n):
                out[o, k, i] = math.exp(x[o, k, i] - m) / s
