"""The direct (blocked) convolution: dense and grouped layers, the default algorithm.

Weights are packed at construction into blocks of 16*B output channels ``(block, c*kH*kW,
16*B)``; the microkernel (``_microkernel._tile_sums``) computes T output pixels x 16*B channels
in registers.  The tile is transposed in registers (16x16 shuffles) so that the store into the
NCHW output, with the epilogue applied (``_epilogue``), runs along pixels.  3x3 layers run the
reduction per input channel with the 9 taps unrolled and a software prefetch of the rows 4
channels ahead (``taps``): 8-25 % faster than one offset per step (the rows of the next
channels are 1-2 cache lines each, far apart, which the hardware prefetcher does not follow).
Big inputs with small weights take their work items row-major.  The input is read through
``_layout.RowInput``; work items are claimed as ``_schedule`` describes.

``conv_pool.ConvMaxPool`` runs this kernel's pooled worker (``_pooled_worker``): one parallel
driver (``_run_blocked``) serves both.

Index arithmetic inside the kernels is ``uint64``: numba adds a negative-index wrap-around to
every signed index, which costs instructions and blocks vectorisation.
"""

import numba
import numpy as np
from numba import prange

from ...activations import RELU, TANH
from .._jit import FAST, njit, pjit
from ._base import packed
from ._epilogue import _store_tile, _store_tile_m, _zero_border
from ._ir import VEC
from ._layout import RowInput, zero_spare
from . import _microkernel
from ._microkernel import TILE_ELEMS, tile_kernel_t
from ._schedule import _claim_end, _item, _side, work_split

_U = np.uint64
_FM = set(FAST)  # numba wants a set, not a frozenset
ROW_MAJOR_BYTES = 2 << 20  # see Direct: the blocked kernel's work order


@njit
def _block(blk, nbg, mg, wd):
    """Channel block ``blk`` of ``wd`` channels (``nbg`` blocks per group of ``mg``) as (group,
    first output channel, channels it holds: ``wd`` but for a group's last block)."""
    g = blk // nbg
    bl = blk - g * nbg
    return g, g * mg + bl * wd, min(wd, mg - bl * wd)


@pjit(fastmath=_FM)
def _run_blocked(xf, offs, wp, bp, out, res, has_res, act, prm, nb_, nt, n_img, nb, nbg, mg,
                 oh_n, ow_n, ogeo, nstride, gstride, rowstep, taps, row_major, pool, nthr,
                 grain):
    """Work items (image, block of 16*nb_ channels, output row), claimed ``grain`` at a time
    from a shared atomic counter by ``nthr`` workers (``_blocked_worker``; the body lives
    outside the prange, which keeps the parallel function's compile short).  With ``pool``
    the workers are ``_pooled_worker`` and (oh_n, ow_n) the pooled output's size: one parallel
    function for both (each costs ~4 s of compile on an empty cache)."""
    ctr = np.zeros(1, dtype=np.int64)
    g = abs(grain)
    for t in prange(nthr):
        side = _side(t, nthr, grain)
        if pool:
            _pooled_worker(ctr, g, xf, offs, wp, bp, out, res, has_res, act, prm, nb_, nt,
                           n_img, nb, nbg, mg, oh_n, ow_n, ogeo, nstride, gstride, rowstep,
                           taps, row_major, side)
        else:
            _blocked_worker(ctr, g, xf, offs, wp, bp, out, res, has_res, act, prm, nb_,
                            nt, n_img, nb, nbg, mg, oh_n, ow_n, ogeo, nstride, gstride,
                            rowstep, taps, row_major, side)


@njit(fastmath=_FM)
def _blocked_worker(ctr, grain, xf, offs, wp, bp, out, res, has_res, act, prm, nb_, nt, n_img,
                    nb, nbg, mg, oh_n, ow_n, ogeo, nstride, gstride, rowstep, taps, row_major,
                    side):
    """One worker of ``_run_blocked``: claims items until none is left; tiles of nt pixels.

    The last tile of a row is shifted left to end at the row's end: it recomputes a few pixels
    (writing the same values again) instead of reading or writing past the row.  ``ogeo``
    (int64) = the output's image, channel and row strides and its first pixel's offset: NCHW,
    or the next layer's zero-bordered input (``Conv2d.write_padded``).
    """
    ntiles = (ow_n + nt - 1) // nt
    ohw = _U(ogeo[1])
    total = n_img * nb * oh_n
    wd = nb_ * VEC
    tp = (nt + VEC - 1) // VEC * VEC  # tile_pitch(nt)
    tile = np.empty(TILE_ELEMS, dtype=bp.dtype)  # the sums' type (wp: bf16 pairs)
    done = 0
    while True:
        u0, u1 = _claim_end(ctr, total, grain, side, done)
        if u1 <= u0:
            break
        done += u1 - u0
        for u in range(u0, u1):
            # row-major: (image, row, block), a row's input serves every block from L2;
            # else (image, block, row), a block's weights serve every row
            blk, oh, n = _item(u, nb, oh_n, row_major)
            g, m0, jv = _block(blk, nbg, mg, wd)
            xrow = n * nstride + g * gstride + oh * rowstep
            orow = n * ogeo[0] + m0 * ogeo[1] + oh * ogeo[2] + ogeo[3]
            for ti in range(ntiles):
                ow0 = min(ti * nt, ow_n - nt)
                tile_kernel_t(xf, _U(xrow + ow0), offs, wp, blk, bp, tile, nb_, nt, taps)
                if tp == 16 and act != TANH:  # activations.IN_REGISTERS
                    _store_tile_m(tile, nt, out, _U(orow + ow0), ohw, jv, res, has_res, act,
                                  prm)
                else:
                    _store_tile(tile, nt, tp, out, _U(orow + ow0), ohw, jv, res, has_res, act,
                                prm)
            if ogeo[6]:
                _zero_border(out, ogeo[0], ogeo[1], ogeo[2], ogeo[4], ogeo[5], n, m0, jv, oh,
                             oh_n, ow_n)


@njit(fastmath=_FM)
def _store_pool(t0, t1, npool, tp, out, ob, phw, jv, act, prm):
    """``out[ob + j*phw + q] = act(max of t0/t1[j*tp + 2q], [j*tp + 2q + 1])`` for q < npool,
    j < jv: the 2x2 windows of two transposed tiles (rows 2p and 2p+1), NaN-sticky, in
    ``pool._max2x2_plane``'s order.  ``prm`` as ``_epilogue._store_tile`` (its [3] is 0)."""
    zero = prm[3]
    for j in range(jv):
        base = ob + _U(j) * phw
        a = t0[j * tp:j * tp + 2 * npool]
        b = t1[j * tp:j * tp + 2 * npool]
        for q in range(npool):
            m = a[2 * q]
            v = a[2 * q + 1]
            m = v if ((v > m) | (v != v)) else m
            v = b[2 * q]
            m = v if ((v > m) | (v != v)) else m
            v = b[2 * q + 1]
            m = v if ((v > m) | (v != v)) else m
            if act == RELU:
                m = zero if m < zero else m
            out[base + _U(q)] = m


@njit(fastmath=_FM)
def _pooled_worker(ctr, grain, xf, offs, wp, bp, out, res, has_res, act, prm, nb_, nt, n_img,
                   nb, nbg, mg, ph_n, pw_n, ogeo, nstride, gstride, rowstep, taps, row_major,
                   side):
    """``_blocked_worker`` followed by a 2x2/2 max pool (``kernels/conv_pool.py``): work items
    (image, block, pooled row); per item the two convolution rows of a pooled row, in tiles of
    ``nt`` (even) pixels at even columns, pooled as they come.  No residual (``res`` and
    ``has_res`` keep the blocked worker's signature)."""
    ow_e = 2 * pw_n  # the convolution columns the pool reads (floor mode drops an odd last)
    ntiles = (ow_e + nt - 1) // nt
    total = n_img * nb * ph_n
    wd = nb_ * VEC
    tp = (nt + VEC - 1) // VEC * VEC  # tile_pitch(nt)
    phw = _U(ogeo[1])
    t0 = np.empty(TILE_ELEMS, dtype=bp.dtype)
    t1 = np.empty(TILE_ELEMS, dtype=bp.dtype)
    done = 0
    while True:
        u0, u1 = _claim_end(ctr, total, grain, side, done)
        if u1 <= u0:
            break
        done += u1 - u0
        for u in range(u0, u1):
            blk, ph, n = _item(u, nb, ph_n, row_major)
            g, m0, jv = _block(blk, nbg, mg, wd)
            xrow = n * nstride + g * gstride + 2 * ph * rowstep
            orow = n * ogeo[0] + m0 * ogeo[1] + ph * ogeo[2] + ogeo[3]
            for ti in range(ntiles):
                ow0 = min(ti * nt, ow_e - nt)
                tile_kernel_t(xf, _U(xrow + ow0), offs, wp, blk, bp, t0, nb_, nt, taps)
                tile_kernel_t(xf, _U(xrow + rowstep + ow0), offs, wp, blk, bp, t1, nb_, nt,
                               taps)
                _store_pool(t0, t1, nt // 2, tp, out, _U(orow + ow0 // 2), phw, jv, act, prm)
            if ogeo[6]:
                _zero_border(out, ogeo[0], ogeo[1], ogeo[2], ogeo[4], ogeo[5], n, m0, jv, ph,
                             ph_n, pw_n)


PACK_ROWS = 128  # reduction rows per pass of the transpose (64 output channels x 512 B in L1)


@njit
def _transpose_block(buf, wp, bp, bias, blk, c0, j_n):
    """``wp[blk, r, j] = buf[j, r]`` (zeros for j >= j_n) in passes of ``PACK_ROWS`` rows, and
    the block's bias."""
    rows, wd = wp.shape[1], wp.shape[2]
    for r0 in range(0, rows, PACK_ROWS):
        r1 = min(rows, r0 + PACK_ROWS)
        for j in range(j_n):
            src, dst = buf[j, r0:r1], wp[blk, r0:r1, j]
            for r in range(r1 - r0):
                dst[r] = src[r]
        for j in range(j_n, wd):
            for r in range(r0, r1):
                wp[blk, r, j] = 0
    for j in range(j_n):
        bp[blk, j] = bias[c0 + j]
    for j in range(j_n, wd):
        bp[blk, j] = 0


@pjit
def _pack_rows(w2, bias, wp, bp, group, nthr):
    """``_pack_blocks`` for C-contiguous weights viewed as (M, C*kH*kW).  Per block, its
    output channels' rows (one contiguous run of memory) are first copied into an L2-resident
    buffer and transposed from there: read straight from memory, as training's every-step
    packing does, 2x faster (16-18 -> 36 GB/s on a 512x512x3x3 layer) than transposing from
    memory, whose 16..64 concurrent row streams the prefetcher does not follow."""
    m_n, rows = w2.shape
    mg = m_n // group
    nb, wd = wp.shape[0], wp.shape[2]
    nbg = nb // group
    for th in prange(nthr):
        buf = np.empty((wd, rows), dtype=wp.dtype)
        for blk in range(nb * th // nthr, nb * (th + 1) // nthr):
            _, c0, j_n = _block(blk, nbg, mg, wd)
            src = w2[c0:c0 + j_n].reshape(j_n * rows)
            bf = buf.reshape(wd * rows)
            for i in range(_U(j_n * rows)):
                bf[i] = src[i]
            _transpose_block(buf, wp, bp, bias, blk, c0, j_n)


@pjit
def _pack_blocks(w, bias, wp, bp, group, nthr):
    """``wp[g*nbg + bl, r, j] = w[g*mg + bl*wd + j, c, a, b]`` with ``r = (c*kH + a)*kW + b``,
    and ``bp`` the same for the bias, zeros past a group's last channel.  For any strided
    view ``w``: dX's flipped, transposed weights in training are packed straight from the
    forward ones, staged per block as ``_pack_rows`` does, channel-major so that the reads run
    along the forward weights' memory; contiguous weights take ``_pack_rows``."""
    m_n, cg, kh, kw = w.shape
    mg = m_n // group
    nb, rows, wd = wp.shape
    nbg = nb // group
    for th in prange(nthr):
        buf = np.empty((wd, rows), dtype=wp.dtype)
        for blk in range(nb * th // nthr, nb * (th + 1) // nthr):
            _, c0, j_n = _block(blk, nbg, mg, wd)
            for c in range(cg):
                for j in range(j_n):
                    r = c * kh * kw
                    for a in range(kh):
                        for b in range(kw):
                            buf[j, r] = w[c0 + j, c, a, b]
                            r += 1
            _transpose_block(buf, wp, bp, bias, blk, c0, j_n)


@pjit
def _pack_flipped(u, bias, wp, bp, nthr):
    """``_pack_blocks`` of ``u.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]`` (dX's weights in
    training) from the C-contiguous ``u`` itself: each thread reads a range of ``u``'s rows
    straight through and writes their taps, flipped, as whole 16*B-float rows of every block:
    1.7x faster (cold) than walking the 4-D view with its negative strides block by block."""
    cv, mv, kh, kw = u.shape  # the view is (mv, cv, kh, kw)
    kk = kh * kw
    nb, rows, wd = wp.shape
    for th in prange(nthr):
        for c in range(cv * th // nthr, cv * (th + 1) // nthr):
            src = u[c].reshape(mv * kk)
            for blk in range(nb):
                _, c0, j_n = _block(blk, nb, mv, wd)
                for t in range(kk):
                    row = wp[blk, c * kk + t]
                    for j in range(j_n):
                        row[j] = src[(c0 + j) * kk + kk - 1 - t]
                    for j in range(j_n, wd):
                        row[j] = 0
    for blk in range(nb):
        _, c0, j_n = _block(blk, nb, mv, wd)
        for j in range(j_n):
            bp[blk, j] = bias[c0 + j]
        for j in range(j_n, wd):
            bp[blk, j] = 0


def pack_direct(w, bias, wp, bp, group):
    """Fill ``wp``/``bp`` from weights ``w`` (M, C/group, kH, kW), any strides."""
    bias = np.ascontiguousarray(bias)
    nthr = numba.get_num_threads()
    if w.flags.c_contiguous:
        _pack_rows(w.reshape(w.shape[0], -1), bias, wp, bp, group, min(nthr, wp.shape[0]))
        return
    u = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # dX's view of contiguous weights?
    if group == 1 and u.flags.c_contiguous:
        _pack_flipped(u, bias, wp, bp, min(nthr, u.shape[0]))
    else:
        _pack_blocks(w, bias, wp, bp, group, min(nthr, wp.shape[0]))


class Direct(RowInput):
    """The blocked kernel bound to a layer: packed weights, microkernel shape, work order."""

    name = "direct"
    packs_weights = True  # only through ``packed`` (see ConvAlgorithm)

    @classmethod
    def accepts(cls, layer, cpu) -> bool:
        """Any layer: the last resort of ``select.ALGORITHMS`` (best on long reductions)."""
        return True

    def __init__(self, layer, w, bias):
        super().__init__(layer, w, bias)
        dtype, group, mg = layer.dtype, layer.group, layer.mg
        kk = layer.kh * layer.kw
        self._shape = _microkernel._choose_shape(mg, self._ow, dtype)
        wd = self._shape[0] * VEC
        nbg = -(-mg // wd)
        nb = group * nbg

        def pack():
            wp = np.empty((nb, layer.cg * kk, wd), dtype=dtype)
            bp = np.empty((nb, wd), dtype=dtype)
            pack_direct(w, bias, wp, bp, group)
            return wp, bp

        wp, bp = packed("direct", (wd,), pack)
        self._wp, self._bp, self._nb, self._nbg, self._mg = wp, bp, nb, nbg, mg
        # 3x3 taps unrolled per channel: constant tap offsets need unit stride and dilation
        # along W (see _tile_sums)
        self._taps = 0 if (layer.kh, layer.kw) != (3, 3) else (
            1 if layer.sw == layer.dw == 1 else 2)
        # Work order: (image, row, block) when an image's input would not stay in L2 through
        # every block's rows but all the weights do; measured 5 % faster on VGG-16's 224x224x64
        # and 112x112x128 layers, 3-7 % slower on 56x56x256 (2.4 MB of weights).
        self._row_major = (self._nstride * dtype.itemsize > ROW_MAJOR_BYTES
                           and wp.nbytes <= ROW_MAJOR_BYTES // 2)

    def repack(self, w, bias):
        """New weights of the same shape into this layer's packed arrays (``Conv2d.repack``)."""
        pack_direct(w, bias, self._wp, self._bp, self.layer.group)

    def run(self, xf, out, res, has_res, shape, oh_n, ow_n, ogeo, pool):
        """The blocked (or, with ``pool``, the pooled) workers over flat ``xf`` into ``out``;
        (oh_n, ow_n) the rows and columns they write."""
        n_img = self.in_shape[0]
        nthr, grain = work_split(n_img * self._nb * oh_n)
        args = (xf, self._offs, self._wp, self._bp, out, res, has_res, self.act, self._prm,
                shape[0], shape[1], n_img, self._nb, self._nbg, self._mg, oh_n, ow_n, ogeo,
                self._nstride, self._gstride, self._rowstep, self._taps, self._row_major)
        if nthr > 1:
            _run_blocked(*args, pool, nthr, grain)
        elif pool:  # a serial step (runtime/plan.py): no parallel region to launch
            _pooled_worker(np.zeros(1, dtype=np.int64), abs(grain), *args, -1)
        else:
            _blocked_worker(np.zeros(1, dtype=np.int64), abs(grain), *args, -1)

    def __call__(self, x, out, residual=None):
        xf = self.prepare(x)
        of = out.reshape(-1)
        if self._padded_out:
            zero_spare(of, self._ogeo, self.in_shape[0])
        has_res = residual is not None
        res = residual.reshape(-1) if has_res else self._dummy
        self.run(xf, of, res, has_res, self._shape, self._oh, self._ow, self._ogeo, False)
        return out
