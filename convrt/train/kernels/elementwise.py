"""Activation gradients over flat arrays."""

from numba import prange

from ...kernels._jit import pjit


@pjit
def relu_backward(y, gy, gx):
    for i in prange(y.size):
        gx[i] = gy[i] if y[i] > 0 else 0


@pjit
def leaky_relu_backward(x, gy, gx, alpha):
    for i in prange(x.size):
        gx[i] = gy[i] if x[i] > 0 else gy[i] * alpha
