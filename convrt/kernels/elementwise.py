"""Elementwise kernels over flat, C-contiguous arrays (the runtime keeps every buffer so).

Each keeps numpy's NaN semantics: ``relu(NaN) = NaN`` like ``np.maximum(x, 0)``; clip passes
NaN through like ``np.clip``.
"""

import math

from numba import prange

from ._jit import pjit


@pjit
def relu(x, out):
    for i in prange(x.size):
        v = x[i]
        out[i] = 0 if v < 0 else v


@pjit
def leaky_relu(x, out, alpha):
    for i in prange(x.size):
        v = x[i]
        out[i] = v * alpha if v < 0 else v


@pjit
def clip(x, out, lo, hi):
    for i in prange(x.size):
        v = x[i]
        v = lo if v < lo else v
        out[i] = hi if v > hi else v  # min > max: every value is max, as ONNX specifies


@pjit
def sigmoid(x, out):
    for i in prange(x.size):
        v = x[i]
        if v >= 0:
            out[i] = 1 / (1 + math.exp(-v))
        else:
            e = math.exp(v)
            out[i] = e / (1 + e)


@pjit
def tanh(x, out):
    for i in prange(x.size):
        out[i] = math.tanh(x[i])


@pjit
def add(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] + b[i]


@pjit
def sub(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] - b[i]


@pjit
def mul(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] * b[i]


@pjit
def div(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] / b[i]


@pjit
def channel_affine(x, scale, shift, out):
    """out[n, c, :] = x[n, c, :] * scale[c] + shift[c] on (N, C, S) views."""
    n, c, s = x.shape
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        a, b = scale[j], shift[j]
        for k in range(s):
            out[i, j, k] = x[i, j, k] * a + b
