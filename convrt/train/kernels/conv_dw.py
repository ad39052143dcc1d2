"""The weight gradient of a 2-D convolution on the inference microkernel, not BLAS.

``dW[m, r] = sum_k dY[m, k] * cols[r, k]`` (``r = (c*kH + a)*kW + b``, ``k`` = image and output
pixel) is a GEMM, usually with a long reduction.  numpy's OpenBLAS picks its kernels by CPU
model, and on CPUs it does not know (this Zen 5 machine: "Haswell") it runs AVX2 code at about
half of what the AVX-512 register tile of ``kernels/conv/_microkernel.py`` reaches here (the
products below: 420-450 GFLOP/s on 2 threads, the threaded BLAS ones ~215).  With its packing,
a VGG 3x3 layer's dW at batch 64 takes 0.55-0.7x the time of im2col + BLAS (small VGG-BN's
training step: 1.39 -> 1.24x PyTorch's time, benchmarks/RESULTS.md).  Two variants: the column
variant below for reductions of ``MIN_ROWS`` rows and more, the rows variant (end of the
module) for ``MIN_ROWS_ROWS`` up to that; shorter ones stay on BLAS.

Column variant: layouts, per chunk of images (``k`` runs over the chunk's images and output
pixels, padded to whole pieces of ``kc`` with zero rows on both sides, so padding adds nothing
and NaN/Inf propagate as in the plain sums):

* ``ap[piece, blk, k, j] = dY[n, blk*WD + j, p]``: dY as the microkernel's packed weights,
  ``WD`` = 32 output channels a block (zeros past M) (``pack_dy``);
* ``bq[tile, k, t] = x[n, c, oh*sh + a*dh - pt, ow*sw + b*dw - pl]`` for ``r = tile*T + t``:
  the im2col matrix transposed into panels of ``T`` columns, ``PITCH`` floats a row (one
  cache line), zero where the window leaves the image (``im2row``);
* ``dw_products``: per work item (block, tile) and piece, one ``T x WD`` register tile summed
  over the piece's ``kc`` rows (``kc * 128 B`` of dY and ``kc * 64 B`` of columns: both in L2)
  and added into dW.  Items are split statically among the threads and each item's sums run
  in one fixed order, so the result does not depend on the thread count.
"""

import numba
import numpy as np
from numba import prange

from ...kernels._jit import FAST, njit, pjit
from ...kernels.conv._ir import VEC
from ...kernels.conv._microkernel import TILE_ELEMS, tile_kernel, tile_kernel_t
from ...kernels.conv._layout import tap_sources
from .conv import _span

_U = np.uint64
_FM = set(FAST)
NB_ = 2  # microkernel shape (blocks of 16 channels, pixels): (2, 14), the fastest (SHAPES)
T = 14
WD = NB_ * VEC
PITCH = 16  # tile_pitch(T): a panel row is one 64-byte line
KC = 1024  # reduction rows per piece
# Images per chunk: about this many bytes of columns (the panels stay in L3 between im2row and
# the products: 1.3-1.6x faster than 32 MB chunks on VGG's layers at batch 64).
CHUNK_BYTES = 8 << 20
# From this many reduction rows (images x output pixels) the column variant; below, its per
# tile overhead is not paid back (ResNet-18 at 64x64, batch 8: K = 32..2048, 1.2-2.5x slower
# than BLAS) and the rows variant (``MIN_ROWS_ROWS``) or BLAS takes over.
MIN_ROWS = 4096


@pjit
def pack_dy(dy3, ap, n0, n1):
    """``ap[piece, blk, kk, j] = dy3[n, blk*WD + j, p]`` with ``piece*kc + kk = (n-n0)*P + p``;
    zeros past M and past the chunk's last row.  One task per (block, image)."""
    m_n, p_n = dy3.shape[1], dy3.shape[2]
    npc, nb, kc = ap.shape[0], ap.shape[1], ap.shape[2]
    nimg = n1 - n0
    for t in prange(nb * nimg):
        blk = t // nimg
        i = t - blk * nimg
        k0 = i * p_n
        for j in range(WD):
            m = blk * WD + j
            for p in range(p_n):
                k = k0 + p
                pc = k // kc
                ap[pc, blk, k - pc * kc, j] = dy3[n0 + i, m, p] if m < m_n else 0
    # the last piece's rows past the chunk
    k_end = nimg * p_n
    for t in prange(nb):
        for k in range(k_end, npc * kc):
            pc = k // kc
            for j in range(WD):
                ap[pc, t, k - pc * kc, j] = 0


@pjit
def im2row(x, bq, tcols, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n):
    """``bq[tile, (n-n0)*OH*OW + oh*OW + ow, t]`` = the input under tap ``r = tile*tcols + t``
    of output pixel (oh, ow) of image n, 0 outside the image (and for ``r`` past the last tap);
    rows past the chunk are zeros.  One task per (tile, image), a tap at a time over the
    whole image (row by row, with T taps per row, was 2x slower on small maps)."""
    c_n, h_n, w_n = x.shape[1], x.shape[2], x.shape[3]
    ntile, krows = bq.shape[0], bq.shape[1]
    bqf = bq.reshape(bq.size)
    kk = kh * kw
    r_n = c_n * kk
    p_n = oh_n * ow_n
    nimg = n1 - n0
    pitch = bq.shape[2]
    pu = _U(pitch)
    for task in prange(ntile * nimg):
        tile = task // nimg
        i = task - tile * nimg
        img = x[n0 + i]
        base = _U((tile * krows + i * p_n) * pitch)
        for t in range(tcols):
            r = tile * tcols + t
            ot = base + _U(t)
            if r >= r_n:
                for q in range(_U(p_n)):
                    bqf[ot + q * pu] = 0
                continue
            c = r // kk
            a = (r - c * kk) // kw
            b = r - c * kk - a * kw
            off = b * dw - pl
            lo, hi = _span(ow_n, w_n, sw, off)
            ulo, uhi, uow, uoff, usw = _U(lo), _U(hi), _U(ow_n), _U(off), _U(sw)
            plane = img[c]
            for oh in range(oh_n):
                y = oh * sh - pt + a * dh
                o = ot + _U(oh * ow_n) * pu
                if y < 0 or y >= h_n:
                    for ow in range(uow):
                        bqf[o + ow * pu] = 0
                    continue
                src = plane[y]
                for ow in range(ulo):
                    bqf[o + ow * pu] = 0
                for ow in range(ulo, uhi):
                    bqf[o + ow * pu] = src[ow * usw + uoff]  # ow >= lo: not negative
                for ow in range(uhi, uow):
                    bqf[o + ow * pu] = 0
    for tile in prange(ntile):
        for k in range(nimg * p_n, krows):
            for t in range(tcols):
                bq[tile, k, t] = 0


@njit(fastmath=_FM)
def _dw_items(bqf, ap, offs, zb, gw, first, i0, i1, ntile, bq_stride, kc):
    """Items ``i0..i1-1`` (tile-major: each panel piece is read once) over every piece: tile
    sums added into ``gw`` (assigned by the first piece when ``first``)."""
    m_n, r_n = gw.shape
    tile = np.empty(TILE_ELEMS, dtype=gw.dtype)
    nb = ap.shape[1]
    for pc in range(ap.shape[0]):
        a = ap[pc]
        for it in range(i0, i1):
            tl = it // nb
            blk = it - tl * nb
            tile_kernel_t(bqf, _U(tl * bq_stride + pc * kc * PITCH), offs, a, blk, zb, tile,
                          NB_, T, 0)
            m0 = blk * WD
            jv = min(WD, m_n - m0)
            r0 = tl * T
            tv = min(T, r_n - r0)
            for j in range(jv):
                row = gw[m0 + j]
                src = tile[j * PITCH:j * PITCH + tv]
                if first and pc == 0:
                    for t in range(tv):
                        row[r0 + t] = src[t]
                else:
                    for t in range(tv):
                        row[r0 + t] += src[t]


@pjit(fastmath=_FM)
def dw_products(bq, ap, offs, zb, gw, first, nthr):
    """``gw[m, r] (+)= sum_k ap[.., m // WD, k, m % WD] * bq[r // T, k, r % T]``."""
    ntile = bq.shape[0]
    items = ap.shape[1] * ntile
    bqf = bq.reshape(bq.size)
    stride = bq.shape[1] * bq.shape[2]
    kc = ap.shape[2]
    for th in prange(nthr):
        _dw_items(bqf, ap, offs, zb, gw, first, items * th // nthr, items * (th + 1) // nthr,
                  ntile, stride, kc)


class DwBuffers:
    """The chunk buffers of one layer's weight gradient (kept in the node's cache: allocated
    once per input shape, reused every step)."""

    def __init__(self, m, r, rows, dtype):
        kc = min(KC, rows)
        npc = -(-rows // kc)
        self.ap = np.empty((npc, -(-m // WD), kc, WD), dtype=dtype)
        self.bq = np.empty((-(-r // T), npc * kc, PITCH), dtype=dtype)
        self.offs = np.arange(kc, dtype=np.uint64) * np.uint64(PITCH)
        self.zb = np.zeros((self.ap.shape[1], WD), dtype=dtype)


def weight_grad_chunk(bufs, x4, dy3, gw, n0, n1, geo, first):
    """``gw (M, C*kH*kW) (+)= dY[n0:n1] x cols[n0:n1]^T`` (assigned when ``first``)."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh, ow) = geo
    pack_dy(dy3, bufs.ap, n0, n1)
    im2row(x4, bufs.bq, T, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
    dw_products(bufs.bq, bufs.ap, bufs.offs, bufs.zb, gw, first, numba.get_num_threads())


# -- short reductions: the tile along dW's rows -------------------------------------------------
# With few reduction rows (ResNet-18 at 64x64, batch 8: 32..2048) the column variant's per-tile
# work (two 16x16 transposes, a scalar add of 32x14 sums into dW) outweighs the sums.  Here the
# register tile is TR output channels x WD columns of dW, stored untransposed: each of its rows
# is WD contiguous floats of a row of dW, written once (one piece: no accumulation).  The input
# panels are WD columns wide (``im2row`` with ``tcols = WD``) and feed the vector loads; dY,
# transposed to (rows, M), feeds the broadcasts.
TR = 14
# From this many reduction rows the rows variant beats im2col + BLAS; measured per ResNet-18
# layer at 64x64, batch 8, alternating the two (ms): K=2048 0.77-1.30 vs 1.13-1.56; K=512
# (8x8 maps, whose im2col gathers) 1.19 vs 0.95 and 0.62 vs 0.52; K=128 1.42 vs 0.82.
MIN_ROWS_ROWS = 1024


@pjit
def pack_dyt(dy3, dyt):
    """``dyt[n*P + p, m] = dy3[n, m, p]``: one task per (image, block of 16 channels)."""
    n_img, m_n, p_n = dy3.shape
    nmb = (m_n + VEC - 1) // VEC
    for t in prange(n_img * nmb):
        n = t // nmb
        m0 = (t - n * nmb) * VEC
        m1 = min(m_n, m0 + VEC)
        src = dy3[n]
        for p in range(p_n):
            row = dyt[n * p_n + p]
            for m in range(m0, m1):
                row[m] = src[m, p]


@njit(fastmath=_FM)
def _dw_rows_items(dytf, cp, offs, zb, gw, i0, i1, nmt):
    m_n, r_n = gw.shape
    tile = np.empty(TILE_ELEMS, dtype=gw.dtype)
    for it in range(i0, i1):
        rb = it // nmt
        mt = it - rb * nmt
        m0 = min(mt * TR, m_n - TR)  # the last tile shifted back: its overlap written twice
        tile_kernel(dytf, _U(m0), offs, cp, rb, zb, tile, NB_, TR)
        r0 = rb * WD
        rv = min(WD, r_n - r0)
        for t in range(TR):
            row = gw[m0 + t]
            src = tile[t * WD:t * WD + rv]
            for q in range(_U(rv)):  # unsigned: no wrap-around test, one vector copy
                row[_U(r0) + q] = src[q]


@pjit(fastmath=_FM)
def dw_rows_products(dyt, cp, offs, zb, gw, nthr):
    """``gw[m, r] = sum_k dyt[k, m] * cp[r // WD, k, r % WD]`` (M >= TR)."""
    nmt = (gw.shape[0] + TR - 1) // TR
    items = cp.shape[0] * nmt
    dytf = dyt.reshape(dyt.size)
    for th in prange(nthr):
        _dw_rows_items(dytf, cp, offs, zb, gw, items * th // nthr, items * (th + 1) // nthr,
                       nmt)


class DwRowsBuffers:
    """The rows variant's buffers for one layer and input shape (the whole batch at once)."""

    def __init__(self, m, r, rows, dtype):
        self.dyt = np.empty((rows, m), dtype=dtype)
        self.cp = np.empty((-(-r // WD), rows, WD), dtype=dtype)
        self.offs = np.arange(rows, dtype=np.uint64) * np.uint64(m)
        self.zb = np.zeros((self.cp.shape[0], WD), dtype=dtype)
        self.tab = None  # the gathered variant's offsets (``gather_table``), on small maps


def weight_grad_rows(bufs, x4, dy3, gw, geo):
    """``gw (M, C*kH*kW) = dY x cols^T`` over the whole batch, M >= TR."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh, ow) = geo
    pack_dyt(dy3, bufs.dyt)
    if bufs.tab is not None:
        im2row_gather(np.ascontiguousarray(x4), bufs.cp, bufs.tab)
    else:
        im2row(x4, bufs.cp, WD, 0, x4.shape[0], kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
    dw_rows_products(bufs.dyt, bufs.cp, bufs.offs, bufs.zb, gw, numba.get_num_threads())


# -- small maps: the rows variant's panels gathered ---------------------------------------------
# On small output maps im2row's row copies are a few elements long and its bounds logic takes
# the time: 0.31-0.57 ms a layer on ResNet-18's last three stages at 64x64, batch 8, against
# 0.08-0.24 ms for the products.  So those layers went to im2col + BLAS, whose products are
# slower (BLAS zeroes dW in a pass of its own before summing into it): measured cold, per layer,
# 0.85 vs 0.48 ms (K = 512), 0.86 vs 0.42 (K = 128), 1.21 vs 0.78 (K = 32).  Here each tap's
# source offset in an image is tabled once per layer and shape (``gather_table``, kept with the
# buffers) and every (tile, image) task gathers through it, as training's im2col does on such
# maps.  Measured cold, whole weight gradient against im2col + BLAS: 8x8 maps K = 64 0.29 vs
# 0.36 ms, 4x4 K = 16 0.48 vs 0.52, 2x2 K = 8 1.40 vs 1.17 (so from 32 rows); gathered panels
# against im2row: 16x16 maps 0.40 vs 0.48 ms, 8x8 0.20 vs 0.38 (32x32: 0.42 vs 0.53, but the
# table grows with the map and the ungathered variant is already ahead of BLAS there).
MIN_ROWS_GATHER = 32
GATHER_PIXELS_ROWS = 256
GATHER_TABLE_MAX = 1 << 21  # entries (8 MB of int32): a layer of 2048+ channels at 16x16 copies


@njit
def gather_table(c_n, h_n, w_n, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n, r_pad):
    """``tab[p, r]``: the offset in an image (``c*H*W + y*W + x``) that tap ``r = c*kH*kW +
    tap`` of output pixel ``p`` reads; -1 in the padding and for ``r`` past the last tap."""
    ys, xs = tap_sources(h_n, w_n, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n)
    kk = kh * kw
    tab = np.full((oh_n * ow_n, r_pad), -1, dtype=np.int32)
    for r in range(c_n * kk):
        c = r // kk
        tap = r - c * kk
        for p in range(oh_n * ow_n):
            if ys[tap, p] >= 0:
                tab[p, r] = (c * h_n + ys[tap, p]) * w_n + xs[tap, p]
    return tab


@pjit
def im2row_gather(x, cp, tab):
    """``cp[tile, n*P + p, t]`` = image n's element ``tab[p, tile*WD + t]`` (0 where -1), for
    the whole batch; ``x`` C-contiguous.  One task per (tile, image)."""
    nimg = x.shape[0]
    ntile, tc = cp.shape[0], cp.shape[2]
    p_n = tab.shape[0]
    img = x.size // max(nimg, 1)
    xf = x.reshape(x.size)
    for task in prange(ntile * nimg):
        tile = task // nimg
        i = task - tile * nimg
        base = i * img
        r0 = tile * tc
        for p in range(p_n):
            row = cp[tile, i * p_n + p]
            src = tab[p, r0:r0 + tc]
            for t in range(tc):
                o = src[t]
                row[t] = xf[_U(base + o)] if o >= 0 else 0


def _gathered(x4, p, rows) -> bool:
    """Whether the rows variant gathers its panels: small maps, a table of bounded size, and
    offsets that fit int32."""
    return p <= GATHER_PIXELS_ROWS and p * rows <= GATHER_TABLE_MAX and x4[0].size < 2 ** 31


def weight_grad(cache, x4, dy3, gw, geo) -> bool:
    """``gw (M, C*kH*kW) = dY x cols^T`` of one group on the microkernel, by the variant the
    reduction's length and the map's size pick, with its buffers kept in ``cache`` (the
    node's, per shapes); False (nothing done) for what stays on im2col + BLAS: short
    reductions on larger maps, float64."""
    n, m, p = dy3.shape
    rows = x4.shape[1] * geo[0][0] * geo[0][1]
    if x4.dtype != np.float32:
        return False
    if n * p >= MIN_ROWS:
        step = max(1, min(n, CHUNK_BYTES // (rows * p * x4.dtype.itemsize)))
        bufs = cache.get("dw_bufs")
        if bufs is None:
            bufs = cache["dw_bufs"] = DwBuffers(m, rows, step * p, x4.dtype)
        for n0 in range(0, n, step):
            weight_grad_chunk(bufs, x4, dy3, gw, n0, min(n, n0 + step), geo, n0 == 0)
        return True
    gathered = _gathered(x4, p, rows)
    if m >= TR and n * p >= (MIN_ROWS_GATHER if gathered else MIN_ROWS_ROWS):
        bufs = cache.get("dw_rows")
        if bufs is None:
            bufs = cache["dw_rows"] = DwRowsBuffers(m, rows, n * p, x4.dtype)
            if gathered:
                (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh, ow) = geo
                bufs.tab = gather_table(x4.shape[1], x4.shape[2], x4.shape[3], kh, kw, sh, sw,
                                        dh, dw, pt, pl, oh, ow, bufs.cp.shape[0] * WD)
        weight_grad_rows(bufs, x4, dy3, gw, geo)
        return True
    return False
