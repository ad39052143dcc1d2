"""Batch normalization in training mode on (N, C, S) views, statistics in float64.

``bn_forward`` normalizes with the biased batch variance and returns per-channel mean and
biased variance; ``bn_backward`` is the usual three-term formula
``dx = invstd / M * (M * g*dy - sum(g*dy) - xhat * sum(g*dy * xhat))``.

The forward statistics run in ``LANES`` float64 partial sums (element k of a plane into lane
k mod LANES, the lanes added in order at the end): one running sum waits on each add's latency
and cannot be vectorised without reordering it; the forward pass took 1.4-1.6x longer that way
on small VGG's layers at batch 64 (the backward sums, memory-bound beside their reads of x and
dY, measured no faster and were left as they were).  The order is fixed by the shapes alone,
so results repeat bit for bit.
"""

import math

import numpy as np
from numba import prange

from ...kernels._jit import njit, pjit

LANES = 16


@njit(inline="always")
def _lane_sums(row, mu, lanes, sq):
    """Add ``row`` (``(row - mu)**2`` with ``sq``) into ``lanes``, element k into lane
    k mod LANES."""
    s = row.size
    full = s - s % LANES
    for k0 in range(0, full, LANES):
        seg = row[k0:k0 + LANES]
        for l in range(LANES):
            d = seg[l] - mu
            lanes[l] += d * d if sq else d
    for k in range(full, s):
        d = row[k] - mu
        lanes[k - full] += d * d if sq else d


@njit(inline="always")
def _total(lanes):
    t = 0.0
    for l in range(LANES):
        t += lanes[l]
    return t


@pjit
def bn_forward(x, scale, bias, eps, out, mean, var):
    n, c, s = x.shape
    m = n * s
    for j in prange(c):
        lanes = np.zeros(LANES)  # one small array per channel (a task), not per element
        for i in range(n):
            _lane_sums(x[i, j], 0.0, lanes, False)
        mu = _total(lanes) / m
        lanes[:] = 0.0
        for i in range(n):
            _lane_sums(x[i, j], mu, lanes, True)
        v = _total(lanes) / m
        mean[j] = mu
        var[j] = v
        inv = 1.0 / math.sqrt(v + eps)
        a = scale[j] * inv
        b = bias[j] - mu * a
        for i in range(n):
            xs, os = x[i, j], out[i, j]
            for k in range(s):
                os[k] = xs[k] * a + b


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


