"""LayerNormalization over rows: x viewed as (rows, width), width = the normalized dims.

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
