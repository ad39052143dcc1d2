"""3-D pooling kernels on (N, C, D, H, W) arrays; 1-D and 2-D inputs arrive lifted (unit dims).

Used for 1-D/3-D pooling, integer MaxPool and MaxPool's Indices output (the 2-D float paths
keep ``pool.py``'s kernels).  ``geo`` is an int64 array of 15 entries: kernel (3), strides (3),
dilations (3), pads begin (3), pads end (3), all resolved and validated by the op; every window
holds at least one real input cell.
"""

import math

import numpy as np
from numba import prange

from ._jit import pjit


@pjit
def max_pool3d(x, out, idx, want_idx, geo, col_major):
    """Max over each window; ``idx`` gets the flat (N, C, *spatial) index of the max.

    ``col_major``: spatial part of the index in column-major order (ONNX storage_order=1).
    """
    n, c, d0, d1, d2 = x.shape
    o0, o1, o2 = out.shape[2], out.shape[3], out.shape[4]
    k0, k1, k2, s0, s1, s2 = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    e0, e1, e2, p0, p1, p2 = geo[6], geo[7], geo[8], geo[9], geo[10], geo[11]
    sp = d0 * d1 * d2
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        src = x[i, j]
        for a in range(o0):
            for b in range(o1):
                for q in range(o2):
                    found = False
                    nan = False
                    m = src[0, 0, 0]
                    best = 0
                    for u in range(k0):
                        z = a * s0 - p0 + u * e0
                        if z < 0 or z >= d0:
                            continue
                        for v in range(k1):
                            y = b * s1 - p1 + v * e1
                            if y < 0 or y >= d1:
                                continue
                            for w in range(k2):
                                xx = q * s2 - p2 + w * e2
                                if xx < 0 or xx >= d2:
                                    continue
                                val = src[z, y, xx]
                                if val != val:
                                    if not nan:
                                        nan = True
                                        best = (z + y * d0 + xx * d0 * d1 if col_major
                                                else (z * d1 + y) * d2 + xx)
                                elif not found or val > m:
                                    found = True
                                    m = val
                                    if not nan:
                                        best = (z + y * d0 + xx * d0 * d1 if col_major
                                                else (z * d1 + y) * d2 + xx)
                    if nan:
                        out[i, j, a, b, q] = math.nan
                    else:
                        out[i, j, a, b, q] = m
                    if want_idx:
                        idx[i, j, a, b, q] = nc * sp + best


@pjit
def avg_pool3d(x, out, geo, count_include_pad):
    n, c, d0, d1, d2 = x.shape
    o0, o1, o2 = out.shape[2], out.shape[3], out.shape[4]
    k0, k1, k2, s0, s1, s2 = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    e0, e1, e2, p0, p1, p2 = geo[6], geo[7], geo[8], geo[9], geo[10], geo[11]
    q0, q1, q2 = geo[12], geo[13], geo[14]
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        src = x[i, j]
        for a in range(o0):
            for b in range(o1):
                for q in range(o2):
                    acc = 0.0
                    cnt = 0
                    padded = 0
                    for u in range(k0):
                        z = a * s0 - p0 + u * e0
                        in0 = -p0 <= z < d0 + q0
                        for v in range(k1):
                            y = b * s1 - p1 + v * e1
                            in1 = in0 and -p1 <= y < d1 + q1
                            for w in range(k2):
                                xx = q * s2 - p2 + w * e2
                                if in1 and -p2 <= xx < d2 + q2:
                                    padded += 1
                                if 0 <= z < d0 and 0 <= y < d1 and 0 <= xx < d2:
                                    acc += src[z, y, xx]
                                    cnt += 1
                    out[i, j, a, b, q] = acc / (padded if count_include_pad else cnt)


def geometry(k, s, d, p):
    """Lift n-D (n <= 3) window parameters to the 15-entry int64 array the kernels take."""
    n = len(k)
    lift = 3 - n
    one, zero = (1,) * lift, (0,) * lift
    return np.array(one + tuple(k) + one + tuple(s) + one + tuple(d) + zero + tuple(p[:n]) +
                    zero + tuple(p[n:]), dtype=np.int64)


