"""im2col / col2im for the convolution gradients (2-D; 1-D is lifted to unit height).

Layout: ``cols[r, i*P + p]`` with ``r = (c*kH + a)*kW + b`` over a chunk of images ``i`` and the
output pixels ``p = oh*OW + ow``; padding cells read as zero.  ``dW = dY_t @ cols.T`` and
``dcols = W.T @ dY_t`` are single BLAS calls over the chunk; ``col2im`` scatters ``dcols`` back
into ``dX``, one (image, channel) plane per task, so no two tasks write the same cell.
"""

import numpy as np
from numba import prange

from ...kernels._jit import njit, pjit
from ...kernels.conv._layout import tap_sources

_U = np.uint64


@njit
def _span(ow_n, w_n, sw, off):
    """The output columns ow whose input column ow*sw + off lies in [0, w_n): [lo, hi)."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = (w_n - 1 - off) // sw + 1 if w_n - 1 - off >= 0 else 0
    if hi > ow_n:
        hi = ow_n
    if lo > hi:
        lo = hi
    return lo, hi


# Output maps of up to this many pixels take ``_im2col_gather``: measured per ResNet-18 layer
# at batch 8, 0.05 vs 0.31 ms on 2x2 maps of 512 channels, 0.12 vs 0.17 on 8x8; on 16x16
# maps the row copies win (0.19 vs 0.23 ms)
GATHER_PIXELS = 64


def im2col(x, cols, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n):
    """x (N, C, H, W) -> cols (C*kh*kw, (n1-n0)*OH*OW) for images n0..n1-1 (the layout in the
    module docstring)."""
    small = oh_n * ow_n <= GATHER_PIXELS
    (_im2col_gather if small else _im2col_rows)(x, cols, n0, n1, kh, kw, sh, sw, dh, dw, pt,
                                                pl, oh_n, ow_n)


@pjit
def _im2col_gather(x, cols, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n):
    """``im2col`` for small output maps: each tap's source cells are listed once (row -1 for
    padding), then every (channel, image) plane is gathered through the list.  The row copies
    of ``_im2col_rows`` are a few elements long on such maps, so their bounds logic, not the
    copying, took the time."""
    c_n, h_n, w_n = x.shape[1], x.shape[2], x.shape[3]
    kk = kh * kw
    p_n = oh_n * ow_n
    ys, xs = tap_sources(h_n, w_n, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n)
    nimg = n1 - n0
    for t in prange(c_n * nimg):
        c = t // nimg
        i = t - c * nimg
        plane = x[n0 + i, c]
        o = _U(i * p_n)
        for tap in range(kk):
            dst, yt, xt = cols[c * kk + tap], ys[tap], xs[tap]
            for q in range(_U(p_n)):
                y = yt[q]
                dst[o + q] = plane[y, xt[q]] if y >= 0 else 0


@pjit
def _im2col_rows(x, cols, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n):
    """``im2col`` a row of taps at a time.

    One task per (channel, image) plane, which stays in L1 while its kh*kw rows are written;
    the copy loops index in ``uint64`` (numba adds a negative-index wrap-around to signed
    indices, which keeps LLVM from vectorising them): 3-5x faster than a task per row with
    signed indices (VGG's 32x32x64 layer at batch 64: 24.8 -> 4.8 ms)."""
    c_n, h_n, w_n = x.shape[1], x.shape[2], x.shape[3]
    p_n = oh_n * ow_n
    nimg = n1 - n0
    for t in prange(c_n * nimg):
        c = t // nimg
        i = t - c * nimg
        plane = x[n0 + i, c]
        for a in range(kh):
            for b in range(kw):
                dst = cols[(c * kh + a) * kw + b]
                off = b * dw - pl
                lo, hi = _span(ow_n, w_n, sw, off)
                ulo, uhi, uow = _U(lo), _U(hi), _U(ow_n)
                for oh in range(oh_n):
                    y = oh * sh - pt + a * dh
                    o = _U(i * p_n + oh * ow_n)
                    if y < 0 or y >= h_n:
                        for q in range(uow):
                            dst[o + q] = 0
                        continue
                    src = plane[y]
                    for q in range(ulo):
                        dst[o + q] = 0
                    if sw == 1:
                        s0 = _U(lo + off)
                        for q in range(uhi - ulo):
                            dst[o + ulo + q] = src[s0 + q]
                    else:
                        for ow in range(lo, hi):
                            dst[o + _U(ow)] = src[_U(ow * sw + off)]
                    for q in range(uhi, uow):
                        dst[o + q] = 0


@pjit
def col2im(dcols, dx, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n):
    """dx[n0:n1] = scatter-add of dcols (C*kh*kw, (n1-n0)*OH*OW); dx is overwritten."""
    c_n, h_n, w_n = dx.shape[1], dx.shape[2], dx.shape[3]
    p_n = oh_n * ow_n
    nimg = n1 - n0
    for t in prange(nimg * c_n):
        i = t // c_n
        c = t % c_n
        plane = dx[n0 + i, c]
        for y in range(h_n):
            for xx in range(w_n):
                plane[y, xx] = 0
        for a in range(kh):
            for b in range(kw):
                src = dcols[(c * kh + a) * kw + b]
                off = b * dw - pl
                lo, hi = _span(ow_n, w_n, sw, off)
                for oh in range(oh_n):
                    y = oh * sh - pt + a * dh
                    if y < 0 or y >= h_n:
                        continue
                    o = i * p_n + oh * ow_n
                    row = plane[y]
                    if sw == 1:
                        for ow in range(lo, hi):
                            row[ow + off] += src[o + ow]
                    else:
                        for ow in range(lo, hi):
                            row[ow * sw + off] += src[o + ow]


@pjit
def nchw_to_cnp(dy, out, n0, n1):
    """dy (N, M, P) images n0..n1-1 -> out (M, (n1-n0)*P)."""
    m_n, p_n = dy.shape[1], dy.shape[2]
    nimg = n1 - n0
    for t in prange(m_n * nimg):
        m = t // nimg
        i = t % nimg
        src, dst, o = dy[n0 + i, m], out[m], _U(i * p_n)
        for p in range(_U(p_n)):
            dst[o + p] = src[p]

