"""LayerNormalization over rows: x viewed as (rows, width), width = the normalized dims; and
over the channels of an NCHW tensor (``channel_layer_norm``).

One task per block of rows (ConvNeXt: one row per pixel, width = channels); each row is read
three times from L1 (sum, squared deviations, output).  Statistics are accumulated in float64:
at least as accurate as the spec's float32 ``stash_type`` and than numpy's float32 pairwise
sums the op used before (ConvNeXt-tiny's 23 LayerNorms took 11-25 ms that way; measured here
at about a tenth of that).
"""

import math

from numba import prange

from ._jit import pjit

ROWS = 64  # rows per task


@pjit
def layer_norm(x, scale, bias, eps, out):
    """out[r] = (x[r] - mean) / sqrt(var + eps) * scale + bias; x, out (R, W); scale, bias (W,)
    (bias all zeros when the node has none)."""
    n, w = x.shape
    for t in prange((n + ROWS - 1) // ROWS):
        for r in range(t * ROWS, min(n, t * ROWS + ROWS)):
            xr = x[r]
            s = 0.0
            for j in range(w):
                s += xr[j]
            m = s / w
            v = 0.0
            for j in range(w):
                d = xr[j] - m
                v += d * d
            inv = 1.0 / math.sqrt(v / w + eps)
            orow = out[r]
            for j in range(w):
                orow[j] = (xr[j] - m) * inv * scale[j] + bias[j]


PIXELS = 64  # pixels per task of channel_layer_norm (a 64 x C slab stays in L2 for C <= 2048)


@pjit
def channel_layer_norm(x, scale, bias, eps, out, stats):
    """LayerNormalization over the channels of an NCHW tensor, per pixel: x, out (N, C, P);
    scale, bias (C,); ``stats`` (tasks, 2, PIXELS) float64 scratch, one slab per task, so the
    kernel allocates nothing.  ConvNeXt's channels-last LayerNorm after
    ``passes/channels_first.py`` moved its block to NCHW: the sums run along contiguous pixels
    (vectorised: every inner loop indexes a slice from 0, so numba drops its negative-index
    wrap-around), three reads of a 64-pixel slab that stays in L2."""
    n_img, c_n, p_n = x.shape
    blocks = (p_n + PIXELS - 1) // PIXELS
    for t in prange(n_img * blocks):
        i = t // blocks
        p0 = (t - i * blocks) * PIXELS
        p1 = min(p_n, p0 + PIXELS)
        w = p1 - p0
        mean = stats[t, 0, :w]
        inv = stats[t, 1, :w]
        for q in range(w):
            mean[q] = 0.0
            inv[q] = 0.0
        for c in range(c_n):
            xs = x[i, c, p0:p1]
            for q in range(w):
                mean[q] += xs[q]
        for q in range(w):
            mean[q] /= c_n
        for c in range(c_n):
            xs = x[i, c, p0:p1]
            for q in range(w):
                d = xs[q] - mean[q]
                inv[q] += d * d
        for q in range(w):
            inv[q] = 1.0 / math.sqrt(inv[q] / c_n + eps)
        for c in range(c_n):
            xs, os, sc, b = x[i, c, p0:p1], out[i, c, p0:p1], scale[c], bias[c]
            for q in range(w):
                os[q] = (xs[q] - mean[q]) * inv[q] * sc + b
