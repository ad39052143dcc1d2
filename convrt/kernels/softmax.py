"""Softmax and LogSoftmax along the middle axis of an (outer, L, inner) view.

float64 (and any dtype but float32): ``softmax``, one task per (outer, inner) line, libm exp.
float32: ``softmax32``, with the vector ``exp32`` of ``kernels/elementwise.py`` (within 2 ulp of
numpy's, NaN/inf kept): a task per row when ``inner`` is 1 (a classifier's last axis: the exp
loop runs along the contiguous row), else per block of ``BLOCK`` contiguous inner positions, with
the max and the sum for the block in a scratch row, so every loop runs along memory.  YOLOv8's DFL
softmax over 16 bins at stride 8400 (134 K elements) took 1.1 ms as scalar lines.  NaN in a line
makes the whole line NaN, as in the reference: max picks NaN, and exp(NaN) is NaN.
"""

import math

from numba import prange

from ._jit import pjit
from .elementwise import exp32

BLOCK = 64  # inner positions per task of softmax32 (a float32 cache line is 16)


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


@pjit(error_model="numpy")
def softmax32(x, out, log, smax, ssum):
    """float32 ``x``, ``out`` (outer, n, inner).  When ``inner`` > 1: scratch ``smax`` float32
    and ``ssum`` float64, both (tasks, BLOCK) with tasks = outer * ceil(inner / BLOCK) (unused
    otherwise).  Sums are float64, as the scalar kernel's."""
    outer, n, inner = x.shape
    if inner == 1:
        for o in prange(outer):
            xr, orow = x[o, :, 0], out[o, :, 0]
            m = x.dtype.type(-math.inf)
            for k in range(n):
                v = xr[k]
                if v > m or v != v:
                    m = v
            for k in range(n):  # vectorized; the sum apart (a float reduction would not be)
                orow[k] = exp32(xr[k] - m)
            s = 0.0
            for k in range(n):
                s += orow[k]
            if log:
                ls = math.log(s)
                for k in range(n):
                    orow[k] = xr[k] - m - ls
            else:
                r = 1 / s
                for k in range(n):
                    orow[k] = orow[k] * r
        return
    blocks = (inner + BLOCK - 1) // BLOCK
    for t in prange(outer * blocks):
        o = t // blocks
        i0 = (t - o * blocks) * BLOCK
        w = min(BLOCK, inner - i0)
        m, s = smax[t, :w], ssum[t, :w]
        xs = x[o, 0, i0:i0 + w]
        for i in range(w):
            m[i] = xs[i]
            s[i] = 0
        for k in range(1, n):
            xs = x[o, k, i0:i0 + w]
            for i in range(w):
                v = xs[i]
                if v > m[i] or v != v:
                    m[i] = v
        for k in range(n):
            xs, os = x[o, k, i0:i0 + w], out[o, k, i0:i0 + w]
            for i in range(w):
                e = exp32(xs[i] - m[i])
                os[i] = e
                s[i] += e
        if log:
            for i in range(w):
                s[i] = math.log(s[i])
            for k in range(n):
                xs, os = x[o, k, i0:i0 + w], out[o, k, i0:i0 + w]
                for i in range(w):
                    os[i] = xs[i] - m[i] - s[i]
        else:
            for i in range(w):
                s[i] = 1 / s[i]
            for k in range(n):
                os = out[o, k, i0:i0 + w]
                for i in range(w):
                    os[i] = os[i] * s[i]
