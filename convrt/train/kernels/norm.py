"""Batch normalization in training mode on (N, C, S) views, statistics in float64.

``bn_forward`` normalizes with the biased batch variance and returns per-channel mean and
biased variance; ``bn_backward`` is the usual three-term formula
``dx = invstd / M * (M * g*dy - sum(g*dy) - xhat * sum(g*dy * xhat))``.
"""

import math

from numba import prange

from ...kernels._jit import pjit


@pjit
def bn_forward(x, scale, bias, eps, out, mean, var):
    n, c, s = x.shape
    m = n * s
    for j in prange(c):
        acc = 0.0
        for i in range(n):
            for k in range(s):
                acc += x[i, j, k]
        mu = acc / m
        acc2 = 0.0
        for i in range(n):
            for k in range(s):
                d = x[i, j, k] - mu
                acc2 += d * d
        v = acc2 / m
        mean[j] = mu
        var[j] = v
        inv = 1.0 / math.sqrt(v + eps)
        a = scale[j] * inv
        b = bias[j] - mu * a
        for i in range(n):
            for k in range(s):
                out[i, j, k] = x[i, j, k] * a + b


@pjit
def bn_backward(x, gy, scale, mean, var, eps, gx, gscale, gbias, need_x):
    n, c, s = x.shape
    m = n * s
    for j in prange(c):
        mu = mean[j]
        inv = 1.0 / math.sqrt(var[j] + eps)
        sg = 0.0
        sgx = 0.0
        for i in range(n):
            for k in range(s):
                g = gy[i, j, k]
                sg += g
                sgx += g * (x[i, j, k] - mu)
        sgx *= inv  # sum(gy * xhat)
        gscale[j] = sgx
        gbias[j] = sg
        if need_x:
            a = scale[j] * inv
            mg = sg / m
            mgx = sgx / m
            for i in range(n):
                for k in range(s):
                    xh = (x[i, j, k] - mu) * inv
                    gx[i, j, k] = a * (gy[i, j, k] - mg - xh * mgx)


