"""2-D pooling kernels on (N, C, H, W) arrays; padding handled by index tests, not copies.

The caller resolves pads, strides, dilations and output sizes (ONNX rules, ceil_mode) and
guarantees every window holds at least one real input cell.
"""

import math

import numpy as np
from numba import prange

from ._jit import pjit


@pjit
def max_pool2d(x, out, kh, kw, sh, sw, dh, dw, pt, pl):
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        src = x[i, j]
        dst = out[i, j]
        for y in range(oh):
            for xo in range(ow):
                m = -np.inf
                nan = False
                for a in range(kh):
                    yy = y * sh - pt + a * dh
                    if yy < 0 or yy >= h:
                        continue
                    for b in range(kw):
                        xx = xo * sw - pl + b * dw
                        if xx < 0 or xx >= w:
                            continue
                        v = src[yy, xx]
                        if v > m:
                            m = v
                        elif v != v:
                            nan = True
                dst[y, xo] = math.nan if nan else m


@pjit
def avg_pool2d(x, out, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad):
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        src = x[i, j]
        dst = out[i, j]
        for y in range(oh):
            for xo in range(ow):
                s = 0.0
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
                            s += src[yy, xx]
                            cnt += 1
                dst[y, xo] = s / (padded if count_include_pad else cnt)


@pjit
def global_avg_pool(x, out):
    """(N, C, S) -> (N, C): the mean over S."""
    n, c, s = x.shape
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        acc = 0.0
        for k in range(s):
            acc += x[i, j, k]
        out[i, j] = acc / s


@pjit
def global_max_pool(x, out):
    n, c, s = x.shape
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        m = x[i, j, 0]
        for k in range(1, s):
            v = x[i, j, k]
            if v > m or v != v:
                m = v
                if v != v:
                    break
        out[i, j] = m
