"""2-D pooling kernels on (N, C, H, W) arrays; padding handled by index tests, not copies.

The caller resolves pads, strides, dilations and output sizes (ONNX rules, ceil_mode) and
guarantees every window holds at least one real input cell.
"""

import numpy as np
from numba import prange

from ._jit import njit, pjit

_U = np.uint64


@njit
def _nanmax3(dst, a, b, c):
    """dst[i] = the NaN-sticky max of a[i], b[i], c[i] (branch-free selects, vectorised)."""
    for i in range(dst.shape[0]):
        m = a[i]
        v = b[i]
        m = v if ((v > m) | (v != v)) else m
        v = c[i]
        dst[i] = v if ((v > m) | (v != v)) else m


@njit
def _max2x2_plane(xf, of, nc, h, w, oh, ow):
    """Plane ``nc`` of an unpadded 2x2/2 max pool on flat arrays: per output row, the
    NaN-sticky max of a 2x2 block.  Row slices indexed ``2*xo + k`` and branch-free selects
    (``|``, not ``or``) let LLVM vectorise it with interleaved loads."""
    for y in range(oh):
        r0 = (nc * h + 2 * y) * w
        s0 = xf[r0:r0 + w]
        s1 = xf[r0 + w:r0 + 2 * w]
        d = of[(nc * oh + y) * ow:(nc * oh + y + 1) * ow]
        for xo in range(ow):
            a = s0[2 * xo]
            v = s0[2 * xo + 1]
            a = v if ((v > a) | (v != v)) else a
            v = s1[2 * xo]
            a = v if ((v > a) | (v != v)) else a
            v = s1[2 * xo + 1]
            d[xo] = v if ((v > a) | (v != v)) else a


@pjit
def max_pool2d(x, out, kh, kw, sh, sw, dh, dw, pt, pl):
    """Separable: per output row, the NaN-sticky max of the window's input rows (a contiguous,
    vectorised pass over W), then the max over each window's columns of that one row."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    if (kh == kw == sh == sw == 2 and dh == dw == 1 and pt == pl == 0
            and 2 * oh <= h and 2 * ow <= w):  # VGG's 2x2/2: whole planes, no row copy
        xf = x.reshape(-1)
        of = out.reshape(-1)
        for nc in prange(n * c):
            _max2x2_plane(xf, of, np.int64(nc), h, w, oh, ow)  # one type: one compile
        return
    xf = x.reshape(-1)
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        src = x[i, j]
        dst = out[i, j]
        row = np.empty(w, x.dtype)
        for y in range(oh):
            y0 = y * sh - pt
            if kh == 3 and y0 >= 0 and y0 + 2 * dh < h:  # a whole 3-row window: one pass
                _nanmax3(row, src[y0], src[y0 + dh], src[y0 + 2 * dh])
            else:  # flat loops over the input rows: a slice copy and a call per row cost
                # ~14 ns each (YOLOv8's 5x5 SPPF pools on 10x10 planes: 1.3 -> 1.1 us a plane)
                first = True
                for a in range(kh):
                    yy = y0 + a * dh
                    if yy < 0 or yy >= h:
                        continue
                    r0 = _U((nc * h + yy) * w)
                    if first:
                        for k in range(_U(w)):
                            row[k] = xf[r0 + k]
                        first = False
                    else:
                        for k in range(_U(w)):
                            v = xf[r0 + k]
                            m = row[k]
                            row[k] = v if ((v > m) | (v != v)) else m
            dr = dst[y]
            # outputs [lo, hi) have their whole window inside the row: no index tests
            lo = min(ow, (pl + sw - 1) // sw)
            hi = max(lo, min(ow, (w - 1 - (kw - 1) * dw + pl) // sw + 1))
            if kw == 3 and sw == 2 and dw == 1 and hi > lo:
                # the common 3x3/2 window with constant strides: a branch-free (``|``, not
                # ``or``) loop that LLVM vectorises with interleaved loads
                seg = row[lo * 2 - pl:]
                dseg = dr[lo:hi]
                for xo in range(hi - lo):
                    m = seg[2 * xo]
                    v = seg[2 * xo + 1]
                    m = v if ((v > m) | (v != v)) else m
                    v = seg[2 * xo + 2]
                    dseg[xo] = v if ((v > m) | (v != v)) else m
            elif hi > lo:
                # window column b outer, outputs inner: with stride 1 each pass is a
                # contiguous, vectorised max of two runs (YOLOv8's 5x5/1 SPPF pools on 10x10
                # maps took 0.34 ms with a loop over b per output); the same maxima in the same
                # order per output, so the same values
                dseg = dr[lo:hi]
                for b in range(kw):
                    seg = row[lo * sw - pl + b * dw:]
                    if b == 0:
                        for xo in range(hi - lo):
                            dseg[xo] = seg[xo * sw]
                    elif sw == 1:
                        for xo in range(hi - lo):
                            v = seg[xo]
                            m = dseg[xo]
                            dseg[xo] = v if ((v > m) | (v != v)) else m
                    else:
                        for xo in range(hi - lo):
                            v = seg[xo * sw]
                            m = dseg[xo]
                            dseg[xo] = v if ((v > m) | (v != v)) else m
            for e in range(lo + ow - hi):  # the edge outputs only: [0, lo) and [hi, ow)
                xo = e if e < lo else e - lo + hi
                x0 = xo * sw - pl
                m = -np.inf
                for b in range(kw):
                    xx = x0 + b * dw
                    if xx >= 0 and xx < w:
                        v = row[xx]
                        m = v if (v > m or v != v) else m
                dr[xo] = m


@njit
def avg_divisor(y, xo, h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad):
    """The divisor of output cell (y, xo): window cells inside the padded input
    (count_include_pad) or inside the input itself (ONNX's two AveragePool rules).  Shared with
    the backward kernel in convrt/train/kernels/pool.py."""
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
    return padded if count_include_pad else cnt


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
                for a in range(kh):
                    yy = y * sh - pt + a * dh
                    if yy < 0 or yy >= h:
                        continue
                    for b in range(kw):
                        xx = xo * sw - pl + b * dw
                        if 0 <= xx < w:
                            s += src[yy, xx]
                dst[y, xo] = s / avg_divisor(y, xo, h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr,
                                             count_include_pad)


LANES = 16  # partial sums per channel in global_avg_pool: four float64 vectors with AVX2


@njit
def _mean(r):
    """The mean of the float row ``r`` in float64: ``LANES`` partial sums (lane l adds the
    elements at l, l + 16, l + 32, ... in that order), combined pairwise in a fixed tree.  The
    sixteen adds of one step are independent, so LLVM's SLP vectorizer turns them into vector
    converts and adds (a strict left-to-right sum stays scalar without ``reassoc``, and then one
    add chain per channel was the latency bound: EfficientNet-B0's 16 pools took 1.6 ms against
    onnxruntime's 0.4).  The order is fixed, so the result does not depend on the thread count
    or the channel's place."""
    s = r.size
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = 0.0
    for q in range(s // LANES):
        k = q * LANES
        a0 += r[k]
        a1 += r[k + 1]
        a2 += r[k + 2]
        a3 += r[k + 3]
        a4 += r[k + 4]
        a5 += r[k + 5]
        a6 += r[k + 6]
        a7 += r[k + 7]
        b0 += r[k + 8]
        b1 += r[k + 9]
        b2 += r[k + 10]
        b3 += r[k + 11]
        b4 += r[k + 12]
        b5 += r[k + 13]
        b6 += r[k + 14]
        b7 += r[k + 15]
    t = 0.0
    for k in range(s // LANES * LANES, s):
        t += r[k]
    a = ((a0 + b0) + (a1 + b1)) + ((a2 + b2) + (a3 + b3))
    b = ((a4 + b4) + (a5 + b5)) + ((a6 + b6) + (a7 + b7))
    return ((a + b) + t) / s


@pjit
def global_avg_pool(x, out):
    """(N, C, S) -> (N, C): the mean over S (float64 sums, ``_mean``), one task per channel."""
    n, c, s = x.shape
    for t in prange(n * c):
        i, j = t // c, t % c
        out[i, j] = _mean(x[i, j])


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
