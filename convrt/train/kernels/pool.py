"""Pooling for training: MaxPool forward that records the argmax, and the pooling gradients.

Each task owns one (image, channel) plane of the input gradient, so scatters never race.
"""


import numpy as np
from numba import prange

from ...kernels._jit import pjit


@pjit
def max_pool2d_argmax(x, out, arg, kh, kw, sh, sw, dh, dw, pt, pl):
    """Like convrt's max_pool2d, also writing the flat in-plane index of each maximum (the
    first one on ties, as PyTorch; a NaN wins)."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        src = x[i, j]
        for y in range(oh):
            for xo in range(ow):
                m = -np.inf
                best = -1
                for a in range(kh):
                    yy = y * sh - pt + a * dh
                    if yy < 0 or yy >= h:
                        continue
                    for b in range(kw):
                        xx = xo * sw - pl + b * dw
                        if xx < 0 or xx >= w:
                            continue
                        v = src[yy, xx]
                        if best < 0 or v > m or v != v:
                            m = v
                            best = yy * w + xx
                            if v != v:
                                break
                    if m != m:
                        break
                out[i, j, y, xo] = m
                arg[i, j, y, xo] = best


@pjit
def max_pool2d_backward(gy, arg, gx):
    """gx (zeroed here) gets gy scattered to the recorded argmax positions."""
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        dst = gx[i, j].reshape(h * w)
        for k in range(h * w):
            dst[k] = 0
        for y in range(oh):
            for xo in range(ow):
                dst[arg[i, j, y, xo]] += gy[i, j, y, xo]


@pjit
def avg_pool2d_backward(gy, gx, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad):
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        dst = gx[i, j]
        for yy in range(h):
            for xx in range(w):
                dst[yy, xx] = 0
        for y in range(oh):
            for xo in range(ow):
                cnt = 0
                padded = 0
                for a in range(kh):
                    yy = y * sh - pt + a * dh
                    in_pad_y = -pt <= yy < h + pb
                    for b in range(kw):
                        xx = xo * sw - pl + b * dw
                        if in_pad_y and -pl <= xx < w + pr:
                            padded += 1
                        if 0 <= yy < h and 0 <= xx < w:
                            cnt += 1
                g = gy[i, j, y, xo] / (padded if count_include_pad else cnt)
                for a in range(kh):
                    yy = y * sh - pt + a * dh
                    if yy < 0 or yy >= h:
                        continue
                    for b in range(kw):
                        xx = xo * sw - pl + b * dw
                        if 0 <= xx < w:
                            dst[yy, xx] += g


