"""Pooling for training: MaxPool forward that records the argmax, and the pooling gradients.

Each task owns one (image, channel) plane of the input gradient, so scatters never race.
"""


import numpy as np
from numba import prange

from ...kernels._jit import pjit
from ...kernels.pool import avg_divisor


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
def max_pool2x2_argmax(x, out, arg):
    """``max_pool2d_argmax`` for a 2x2 window at stride 2, no padding, every window inside
    the input (VGG's pools): the four candidates compared straight, in the generic kernel's
    order (row by row; the first maximum on ties; the first NaN wins), without its per-tap
    bounds tests (4-5x faster on small VGG's pools at batch 64)."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        src, dst, ag = x[i, j], out[i, j], arg[i, j]
        for y in range(oh):
            r0, r1 = src[2 * y], src[2 * y + 1]
            base = 2 * y * w
            for xo in range(ow):
                m = r0[2 * xo]
                k = base + 2 * xo
                if m == m:
                    v = r0[2 * xo + 1]
                    if v > m or v != v:
                        m, k = v, base + 2 * xo + 1
                    if m == m:
                        v = r1[2 * xo]
                        if v > m or v != v:
                            m, k = v, base + w + 2 * xo
                        if m == m:
                            v = r1[2 * xo + 1]
                            if v > m or v != v:
                                m, k = v, base + w + 2 * xo + 1
                dst[y, xo] = m
                ag[y, xo] = k


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
                g = gy[i, j, y, xo] / avg_divisor(y, xo, h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb,
                                                  pr, count_include_pad)
                for a in range(kh):
                    yy = y * sh - pt + a * dh
                    if yy < 0 or yy >= h:
                        continue
                    for b in range(kw):
                        xx = xo * sw - pl + b * dw
                        if 0 <= xx < w:
                            dst[yy, xx] += g


