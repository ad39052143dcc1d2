"""Convolution of small output maps: a register tile's pixels run across images.

The direct kernel (``direct.py``) tiles 32 output channels x up to 14 pixels of one output
row, so a map a few pixels wide fills a tile with as many: on ResNet-18's last stage at batch 8
(2x2 maps, 512 channels) each weight it streams in feeds 2-4 multiply-adds, and the layer ran
at 150 GFLOP/s against 450 on wide maps, re-reading its 9.4 MB of packed weights once per
image and row.  Here the layer is the GEMM ``Y[m, k] = sum_r W[m, r] * cols[r, k]`` over the
whole batch's output pixels ``k = n*OH*OW + oh*OW + ow`` (``r = (c*kH + a)*kW + b``):

* the weights are packed exactly as the direct kernel packs them (``direct.pack_direct``,
  shared with it through the session's pack cache);
* the input becomes panels of ``T`` consecutive pixels ``k`` (14 with AVX-512), ``BQ_PITCH``
  floats a row (``bq[tile, r, t]``, zero where the window leaves the image: ``fill_panels``),
  in this thread's scratch;
* one work item per (block of ``WD`` channels, panel) runs the direct kernel's register tile
  over the whole reduction, then stores it into NCHW with the common epilogue (bias, residual,
  activation), one run per image the panel spans.

Items are block-major and claimed from both ends (``_schedule``): each thread streams its
blocks' weights once, and every output is one fixed sum whatever the thread count or batch size
(the same value for an image alone or in any batch this algorithm takes).

On AVX2 the tile is 1 block x 5 pixels and a panel row is 5 floats, and the algorithm also takes
batch-1 layers with 7x7 maps (``MAX_ROW``), and deep 1x1 layers on them or strided to 14x14
(``MAX_ROW_1X1``): there it is the direct kernel's input order that costs, not the batch.  A
unit-stride 1x1 layer's panels are its rows dealt out T pixels at a time (``fill_rows``).
"""

import numpy as np
from numba import prange

from ...activations import TANH
from .._jit import FAST, njit, pjit
from ._base import ConvAlgorithm, packed
from ._epilogue import _store_tile, _store_tile_m
from ._ir import VEC
from ._layout import _shared_scratch, tap_sources
from ._microkernel import HOST, TILE_ELEMS, _shapes, tile_kernel_t, tile_pitch
from ._schedule import _claim_end, _side, work_split
from .direct import pack_direct

_FM = set(FAST)
_U = np.uint64
# the microkernel shape: 2 blocks of 16 channels x 14 pixels with AVX-512's 32 registers, one
# block x 5 pixels with AVX2's 16 (the direct kernel's best shapes there)
NB_, T = (2, 14) if HOST.vbits >= 512 else (1, 5)
WD = NB_ * VEC
PITCH = tile_pitch(T)  # the register tile's rows, as the epilogue reads them
# a panel's rows: T floats (on AVX2 a step then reads 20 bytes, four steps a cache line, where
# a 7x7 map's NCHW rows put every step on a line of its own) or the tile's pitch (AVX-512)
BQ_PITCH = PITCH if HOST.vbits >= 512 else T
# Output rows up to SMALL_ROW pixels wide take this algorithm when the batch has a panel's
# worth of pixels.  AVX-512, measured per ResNet-18 layer at batch 8 against the direct kernel:
# 2x2 maps 0.46 vs 0.73 ms, 4x4 -> 2x2 (stride 2) 0.24 vs 0.43, 4x4 0.40 vs 0.40, 8x8 -> 4x4
# 0.21 vs 0.27; on 8x8 maps the direct kernel wins (0.32 vs 0.44), and on 7x7 (batch 1 and 4).
# On AVX2 (1x5 tiles, 20-byte panel rows) rows up to MAX_ROW take it too, and deep 1x1 layers:
# rows up to MAX_ROW_1X1[strided] pixels with DEEP_1X1[strided]+ channels in and out (the pixel
# kernel leaves exactly these to it: pixel.DEEP_1X1).  There the direct kernel's 5-pixel tile
# reads one cache line per step of the reduction from NCHW rows 196 bytes apart; a panel's step
# reads 20 contiguous bytes.  Batch 1, same process alternating, against the direct kernel:
# 3x3 on 7x7 0.92x (3x3 on 14x14 and 28x28 1.14-1.16x: left to direct); 1x1 on 7x7 2048->512
# 0.74 / 1.01 ms, in ResNet-50 1.45-1.70 -> 0.92; in the models, with ``fill_rows``,
# MobileNetV2's 320->1280 0.49 -> 0.40 ms and 960->320 0.36 -> 0.33, EfficientNet-B0's
# 1152->320 0.48 -> 0.42 (shallower 7x7 layers run faster on the pixel kernel); strided 1x1
# to 14x14, 512->1024, 1.91 / 2.25 (pixel 2.20).
SMALL_ROW = 4  # any layer, any CPU
if HOST.vbits >= 512:
    MAX_ROW, MAX_ROW_1X1, DEEP_1X1 = 4, {False: 4, True: 4}, {False: 0, True: 0}
else:
    MAX_ROW, MAX_ROW_1X1, DEEP_1X1 = 7, {False: 7, True: 14}, {False: 320, True: 512}


def supported(cpu=HOST) -> bool:
    """Whether ``cpu`` has the microkernel shape this algorithm is built on (2 x 16 channels by
    14 pixels with AVX-512's 32 vector registers, 1 x 5 with AVX2's 16); without it ``accepts``
    is False for every layer and forcing ``algo="small_maps"`` is a ValueError."""
    return (NB_, T) in _shapes(np.dtype(np.float32), cpu)


@pjit
def fill_panels(x, bq, ys, xs, nthr):
    """``bq[tile, c*kk + tap, t]`` = the input under ``tap`` of channel c at batch pixel
    ``k = tile*T + t`` (image ``k // P``, map pixel ``k % P``), 0 in the padding and past the
    last pixel.  Per thread a range of panels; per panel, each (tap, t)'s offset into channel
    0 is found once, then every channel's rows are gathered through them (contiguous writes)."""
    n_img, c_n, h_n, w_n = x.shape
    kk, p_n = ys.shape
    ntile = bq.shape[0]
    k_n = n_img * p_n
    hw = h_n * w_n
    xf = x.reshape(x.size)
    for th in prange(nthr):
        src = np.empty((kk, T), dtype=np.int64)
        for tl in range(ntile * th // nthr, ntile * (th + 1) // nthr):
            for t in range(T):
                k = tl * T + t
                n = k // p_n
                p = k - n * p_n
                for tap in range(kk):
                    y = ys[tap, p] if k < k_n else -1
                    src[tap, t] = n * c_n * hw + y * w_n + xs[tap, p] if y >= 0 else -1
            for c in range(c_n):
                cb = c * hw
                for tap in range(kk):
                    dst, so = bq[tl, c * kk + tap], src[tap]
                    for t in range(_U(T)):
                        o = so[t]
                        v = xf[_U(max(o, 0) + cb)]
                        dst[t] = v if o >= 0 else 0


@pjit
def fill_rows(x, bq, nthr):
    """``fill_panels`` of a 1x1 unpadded stride-1 layer, where pixel k of the batch is input
    pixel k: per thread a range of channels, each read once along its rows and dealt out T
    pixels a panel (``fill_panels`` walks every channel once per panel, through a gather table;
    on MobileNetV2's 960->320 on 7x7 it took 80 us in the model against 0.35 ms of sums)."""
    n_img, c_n, h_n, w_n = x.shape
    p_n = h_n * w_n
    ntile, rows, pitch = bq.shape
    xf = x.reshape(x.size)
    bf = bq.reshape(bq.size)
    tail = ntile * T - n_img * p_n  # zeros that end the last panel
    for th in prange(nthr):
        for c in range(c_n * th // nthr, c_n * (th + 1) // nthr):
            dst = _U(c * pitch)
            t = 0
            for n in range(n_img):
                src = _U((n * c_n + c) * p_n)
                for p in range(_U(p_n)):
                    bf[dst + _U(t)] = xf[src + p]
                    t += 1
                    if t == T:
                        t = 0
                        dst += _U(rows * pitch)
            for _ in range(tail):
                bf[dst + _U(t)] = 0
                t += 1


@njit(fastmath=_FM)
def _items(bqf, offs, wp, bp, out, res, has_res, act, prm, m_n, p_n, k_n, ntile, i0, i1):
    tile = np.empty(TILE_ELEMS, dtype=out.dtype)
    stride = offs.shape[0] * BQ_PITCH
    for it in range(i0, i1):
        blk = it // ntile
        tl = it - blk * ntile
        tile_kernel_t(bqf, _U(tl * stride), offs, wp, blk, bp, tile, NB_, T, 0)
        m0 = blk * WD
        jv = min(WD, m_n - m0)
        k = tl * T
        k1 = min(k_n, k + T)
        while k < k1:  # one run per image the panel spans
            n = k // p_n
            p = k - n * p_n
            cnt = min(p_n - p, k1 - k)
            if PITCH == 16 and act != TANH:  # activations.IN_REGISTERS, as direct's worker
                _store_tile_m(tile[k - tl * T:], cnt, out, _U((n * m_n + m0) * p_n + p),
                              _U(p_n), jv, res, has_res, act, prm)
            else:
                _store_tile(tile[k - tl * T:], cnt, PITCH, out,
                            _U((n * m_n + m0) * p_n + p), _U(p_n), jv, res, has_res, act, prm)
            k += cnt


@pjit(fastmath=_FM)
def _run(bq, offs, wp, bp, out, res, has_res, act, prm, m_n, p_n, k_n, nthr, grain):
    """Items (block, panel), block-major, claimed as ``_schedule`` describes: with two threads
    one takes blocks from the front and the other from the back, so each streams its blocks'
    weights once, and a thread another process delays leaves its part to the other."""
    ntile = bq.shape[0]
    items = wp.shape[0] * ntile
    bqf = bq.reshape(bq.size)
    ctr = np.zeros(1, dtype=np.int64)
    for th in prange(nthr):
        side = _side(th, nthr, grain)
        done = 0
        while True:
            u0, u1 = _claim_end(ctr, items, abs(grain), side, done)
            if u1 <= u0:
                break
            done += u1 - u0
            _items(bqf, offs, wp, bp, out, res, has_res, act, prm, m_n, p_n, k_n, ntile, u0, u1)


class SmallMaps(ConvAlgorithm):
    """A one-group float32 layer whose output rows are at most ``MAX_ROW`` pixels wide, on a
    CPU with the 2x14 register tile (AVX-512), batched to at least one panel of pixels.  Its
    sums are the direct kernel's, term for term in the same order: the outputs are bitwise
    equal to it (tested), so which of the two a batch size gets does not change a result."""

    name = "small_maps"
    packs_weights = True  # only through ``packed`` (see ConvAlgorithm)

    @classmethod
    def accepts(cls, layer, cpu) -> bool:
        if layer.ow_n <= SMALL_ROW:
            fits = True
        elif layer.kh == layer.kw == 1:
            strided = max(layer.strides) > 1
            fits = (layer.ow_n <= MAX_ROW_1X1[strided]
                    and min(layer.cg, layer.m_all) >= DEEP_1X1[strided])
        else:
            fits = layer.ow_n <= MAX_ROW
        return (layer.group == 1 and layer.dtype == np.float32 and fits
                and layer.n_img * layer.oh_n * layer.ow_n >= T
                and supported(cpu))

    def __init__(self, layer, w, bias):
        super().__init__(layer, w, bias)
        if not self.accepts(layer, HOST):  # forced (``algo=``): the kernels assume all of it
            raise ValueError("algo='small_maps' needs one group, float32, output rows of at "
                             f"most {MAX_ROW} pixels ({MAX_ROW_1X1[False]} for 1x1 layers with "
                             f"{DEEP_1X1[False]}+ channels in and out, {MAX_ROW_1X1[True]} "
                             f"strided with {DEEP_1X1[True]}+), {T}+ pixels in the batch and "
                             "AVX2 or AVX-512")
        rows = layer.cg * layer.kh * layer.kw
        nb = -(-layer.m_all // WD)

        def pack():
            wp = np.empty((nb, rows, WD), dtype=layer.dtype)
            bp = np.empty((nb, WD), dtype=layer.dtype)
            pack_direct(w, bias, wp, bp, 1)
            return wp, bp

        # the direct kernel's layout and block width: one packed copy serves both
        self._wp, self._bp = packed("direct", (WD,), pack)
        self._offs = np.arange(rows, dtype=np.uint64) * np.uint64(BQ_PITCH)
        self._ys, self._xs = tap_sources(layer.h_n, layer.w_n, layer.kh, layer.kw, layer.sh,
                                   layer.sw, layer.dh, layer.dw, layer.pt, layer.pl,
                                   layer.oh_n, layer.ow_n)
        self._k_n = layer.n_img * layer.oh_n * layer.ow_n
        self._rows_only = (layer.kh == layer.kw == 1 and not any(layer.pads)
                           and layer.strides == (1, 1))  # the panels are the rows: fill_rows
        self._panels = (-(-self._k_n // T), rows, BQ_PITCH)
        # the scratch's size, counted once: a np.prod per call measured 90 us in MobileNetV2
        # (numpy's Python-level path with the caches just flushed by the layer before)
        self._scratch_n = self._panels[0] * rows * BQ_PITCH

    def repack(self, w, bias):
        """New weights of the same shape into the packed arrays (``Conv2d.repack``)."""
        pack_direct(w, bias, self._wp, self._bp, 1)

    def scratch_bytes(self) -> int:
        return self._scratch_n * self.dtype.itemsize

    def __call__(self, x, out, residual=None):
        layer = self.layer
        nthr, grain = work_split(self._wp.shape[0] * self._panels[0])
        bq = _shared_scratch(self._scratch_n, self.dtype).reshape(self._panels)
        if self._rows_only:
            fill_rows(np.ascontiguousarray(x), bq, min(nthr, layer.cg))
        else:
            fill_panels(np.ascontiguousarray(x), bq, self._ys, self._xs,
                        min(nthr, self._panels[0]))
        has_res = residual is not None
        res = residual.reshape(-1) if has_res else self._dummy
        _run(bq, self._offs, self._wp, self._bp, out.reshape(-1), res, has_res, self.act,
             self._prm, layer.m_all, layer.oh_n * layer.ow_n, self._k_n, nthr, grain)
        return out
