"""Depthwise and narrow-group 2-D convolution (fewer than 8 output channels per group).

``select`` hands these layers here (or to ``dw3x3.py``, which it tries first); the dense
kernels never see them.

One task is one (image, group): its ``cg`` input planes are copied into a small per-thread
scratch that holds each plane zero-bordered and split into ``sh*sw`` phase planes
(``phase[ry, rx][i, j] = padded[i*sh + ry, j*sw + rx]``), all ``Hq x Q``.  Tap (a, b) of the
kernel then reads phase ``((a*dh) % sh, (b*dw) % sw)`` shifted by ``((a*dh)//sh, (b*dw)//sw)``,
so output pixel (y, x) of every tap sits at the same flat index ``y*Q + x`` of a shifted view:
the whole plane is computed as one long vectorised loop of length ``(oh-1)*Q + ow`` (the
``Q - ow`` columns between rows are computed and thrown away), whatever the stride.  That keeps
vectors full on 14x14 and 28x28 maps, where a row-at-a-time loop would not.  The sums go to a
scratch row, and the store pass drops the spare columns while it adds the residual and applies
the activation.  Everything a task touches stays in L1/L2.

3x3 depthwise (one input channel per group) is one pass of nine multiply-adds per pixel; other
shapes accumulate three taps per pass.  The work is split into one block of whole tasks per
thread, each with its own scratch, so every output is computed by the same instructions in the
same order however many threads run: results are bitwise reproducible.

Index arithmetic inside the kernels is ``uint64`` (no slicing in the hot loops: a numba slice
costs tens of nanoseconds, and numba adds a negative-index wrap-around to every signed compound
index, which blocks vectorisation); the row loops have no 64-bit divisions.  Layers under
``_schedule.serial``'s size run a non-parallel twin of the kernel (a parallel launch alone costs
a few microseconds).  A 7x7 output map takes the channel-blocked variant below.
"""

import threading

import numba
import numpy as np
from numba import prange

from ...activations import CLIP, LEAKY, NONE, RELU
from .._jit import FAST, njit, pjit
from ._epilogue import act_inplace, act_other
from ._base import ConvAlgorithm
from ._schedule import serial

_FM = set(FAST)  # numba wants a set
_U = np.uint64
_ONE = _U(1)


@njit
def _fill(x, xo, h_n, w_n, xs, so, sh, sw, pt, pl, hq, q_n):
    """Copy plane ``x[xo : xo + h_n*w_n]`` into its phase planes at ``xs[so:]`` (the border
    cells are never written: they stay zero).  All arguments uint64; no division in the row
    loop (64-bit divides cost tens of cycles)."""
    psz = hq * q_n
    ry0 = pt % sh
    i0 = pt // sh
    if sw == _U(2):  # one loop per row: even and odd columns go to their two phases
        half = w_n // _U(2)
        e0 = so + (pl % _U(2)) * psz + pl // _U(2)
        e1 = so + ((pl + _ONE) % _U(2)) * psz + (pl + _ONE) // _U(2)
        ry = ry0
        i = i0
        for h in range(h_n):
            s0 = xo + h * w_n
            r = (ry * _U(2) * hq + i) * q_n
            d0 = e0 + r
            d1 = e1 + r
            for k in range(half):
                xs[d0 + k] = x[s0 + _U(2) * k]
                xs[d1 + k] = x[s0 + _U(2) * k + _ONE]
            if w_n > _U(2) * half:
                xs[d0 + half] = x[s0 + w_n - _ONE]
            ry += _ONE
            if ry == sh:
                ry = _U(0)
                i += _ONE
        return
    for rx in range(sw):
        w0 = (rx + sw - pl % sw) % sw  # first column whose padded position has phase rx
        if w0 >= w_n:
            continue
        cnt = (w_n - w0 + sw - _ONE) // sw
        dcol = so + rx * psz + (w0 + pl) // sw
        ry = ry0
        i = i0
        for h in range(h_n):
            s0 = xo + h * w_n + w0
            d0 = dcol + (ry * sw * hq + i) * q_n
            if sw == _ONE:
                for k in range(cnt):
                    xs[d0 + k] = x[s0 + k]
            else:
                for k in range(cnt):
                    xs[d0 + k] = x[s0 + k * sw]
            ry += _ONE
            if ry == sh:
                ry = _U(0)
                i += _ONE


@njit(fastmath=_FM)
def _taps9(xs, offs, wm, acc, n, bias):
    """``acc[:n] = bias + sum_r wm[r] * xs[offs[r] + i]`` for nine taps, in one pass (n and
    offs uint64)."""
    o0, o1, o2, o3, o4, o5, o6, o7, o8 = (offs[0], offs[1], offs[2], offs[3], offs[4], offs[5],
                                          offs[6], offs[7], offs[8])
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (wm[0], wm[1], wm[2], wm[3], wm[4], wm[5], wm[6],
                                          wm[7], wm[8])
    for i in range(n):
        acc[i] = (bias + w0 * xs[o0 + i] + w1 * xs[o1 + i] + w2 * xs[o2 + i]
                  + w3 * xs[o3 + i] + w4 * xs[o4 + i] + w5 * xs[o5 + i] + w6 * xs[o6 + i]
                  + w7 * xs[o7 + i] + w8 * xs[o8 + i])


@njit(fastmath=_FM)
def _taps(xs, offs, wm, acc, n, bias):
    """``acc[:n] = bias + sum_r wm[r] * xs[offs[r] + i]`` for any number of taps, up to three
    per pass over ``acc`` (n and offs uint64)."""
    nt = offs.shape[0]
    for i in range(n):
        acc[i] = bias
    r = 0
    while r + 3 <= nt:
        o0, o1, o2 = offs[r], offs[r + 1], offs[r + 2]
        w0, w1, w2 = wm[r], wm[r + 1], wm[r + 2]
        for i in range(n):
            acc[i] = acc[i] + w0 * xs[o0 + i] + w1 * xs[o1 + i] + w2 * xs[o2 + i]
        r += 3
    if r + 2 == nt:
        o0, o1 = offs[r], offs[r + 1]
        w0, w1 = wm[r], wm[r + 1]
        for i in range(n):
            acc[i] = acc[i] + w0 * xs[o0 + i] + w1 * xs[o1 + i]
    elif r + 1 == nt:
        o0 = offs[r]
        w0 = wm[r]
        for i in range(n):
            acc[i] = acc[i] + w0 * xs[o0 + i]


@njit(fastmath=_FM)
def _store(acc, q_n, out, ob, oh_n, ow_n, res, has_res, act, prm):
    """``out[ob + y*ow + x] = act(acc[y*Q + x] + res[...])``: drops the spare columns (indices
    uint64).  Every comparison lets NaN through unchanged (as numpy's maximum/clip do).

    sigmoid, tanh, silu and the hard forms run over the whole span of ``acc`` in place (spare
    columns included: on 7x7 maps a row of 7 never fills a vector, EfficientNet-B0's 7x7 5x5
    SiLU layers spent more time in the scalar store than in the taps), then the rows are
    copied out."""
    alpha, lo, hi, zero = prm[0], prm[1], prm[2], prm[3]
    if act > CLIP:
        if has_res:
            for y in range(oh_n):
                a = y * q_n
                o = ob + y * ow_n
                for i in range(ow_n):
                    acc[a + i] += res[o + i]
        act_inplace(acc, _U(0), (oh_n - _ONE) * q_n + ow_n, act, prm)
        for y in range(oh_n):
            a = y * q_n
            o = ob + y * ow_n
            for i in range(ow_n):
                out[o + i] = acc[a + i]
        return
    for y in range(oh_n):
        a = y * q_n
        o = ob + y * ow_n
        if has_res:
            for i in range(ow_n):
                acc[a + i] += res[o + i]
        if act == NONE:
            for i in range(ow_n):
                out[o + i] = acc[a + i]
        elif act == CLIP:
            for i in range(ow_n):
                v = acc[a + i]
                v = lo if v < lo else v
                out[o + i] = hi if v > hi else v
        elif act == RELU:
            for i in range(ow_n):
                v = acc[a + i]
                out[o + i] = zero if v < zero else v
        elif act == LEAKY:
            for i in range(ow_n):
                v = acc[a + i]
                out[o + i] = v * alpha if v < zero else v


@njit(fastmath=_FM)
def _block(blk, x, out, res, has_res, prm, wb, offs, scratch, geo):
    """Tasks ``[blk*ntask//nblk, (blk+1)*ntask//nblk)`` with scratch row ``blk``.

    ``geo`` (int64) = nblk, n_img, group, cg, mg, h, w, oh, ow, sh, sw, pt, pl, Hq, Q, act,
    length of the phase planes; ``wb[m]`` = channel m's taps, then its bias.
    """
    nblk, n_img, group, cg, mg = geo[0], geo[1], geo[2], geo[3], geo[4]
    h_n, w_n, oh_n, ow_n = _U(geo[5]), _U(geo[6]), _U(geo[7]), _U(geo[8])
    sh, sw, pt, pl, hq, q_n = (_U(geo[9]), _U(geo[10]), _U(geo[11]), _U(geo[12]), _U(geo[13]),
                               _U(geo[14]))
    act, xs_len = geo[15], geo[16]
    ntask = n_img * group
    psz = sh * sw * hq * q_n  # one input channel's phase planes
    span = (oh_n - _ONE) * q_n + ow_n
    kk = offs.shape[0]
    hw = h_n * w_n
    ohw = oh_n * ow_n
    xs = scratch[blk, :xs_len]
    acc = scratch[blk, xs_len:]
    for t in range(blk * ntask // nblk, (blk + 1) * ntask // nblk):
        for c in range(cg):
            _fill(x, _U(t * cg + c) * hw, h_n, w_n, xs, _U(c) * psz, sh, sw, pt, pl, hq, q_n)
        n = t // group
        g = t - n * group
        for j in range(mg):
            m = g * mg + j
            wm = wb[m]
            if kk == 9:
                _taps9(xs, offs, wm, acc, span, wm[9])
            else:
                _taps(xs, offs, wm, acc, span, wm[kk])
            _store(acc, q_n, out, _U(n * group * mg + m) * ohw, oh_n, ow_n, res, has_res, act,
                   prm)


@pjit
def _run_par(x, out, res, has_res, prm, wb, offs, scratch, geo):
    """The blocks in a ``prange``: one per thread."""
    for blk in prange(geo[0]):
        _block(blk, x, out, res, has_res, prm, wb, offs, scratch, geo)


@njit
def _run_seq(x, out, res, has_res, prm, wb, offs, scratch, geo):
    """The blocks in turn on the calling thread: for layers too small to wake the pool (and a
    parallel kernel's launch alone costs a few microseconds)."""
    for blk in range(geo[0]):
        _block(blk, x, out, res, has_res, prm, wb, offs, scratch, geo)


# ---- channel-blocked 3x3 depthwise, for small maps ------------------------------------------
# On 7x7 maps a plane is too short for the loops above to pay for their setup; there 16
# channels are interleaved instead: ``xs[((row*sw + col % sw)*Q + col // sw)*16 + lane]``
# (zero-bordered, columns phase-split as above), so the taps of one output row read ow*16
# consecutive floats, multiplied by the block's weights repeated once per pixel: three long
# vectorised passes per output row.
LANES = 16


@njit
def _cb_fill(x, xo, hw, nl, h_n, w_n, xs, sw, pt, pl, q_n):
    """Interleave ``nl`` planes ``x[xo + l*hw : ...]`` into the lanes of ``xs``: padded
    (row, col) goes to ``((row*sw + col % sw)*Q + col // sw)*16 + lane`` (uint64)."""
    v = _U(LANES)
    for l in range(nl):
        src = xo + l * hw
        for h in range(h_n):
            rb = (h + pt) * sw
            s0 = src + h * w_n
            ph = pl % sw
            pos = pl // sw
            for k in range(w_n):
                xs[((rb + ph) * q_n + pos) * v + l] = x[s0 + k]
                ph += _ONE
                if ph == sw:
                    ph = _U(0)
                    pos += _ONE


@njit(fastmath=_FM)
def _cb_taps9(xs, toff, ww, ob, oh_n, n, ystep):
    """Per output row y: ``ob[y*n + i] = bias + sum_r ww[r, i] * xs[y*ystep + toff[r] + i]``
    over the row's n = ow*16 lanes (the weights repeated per pixel), three taps per pass, in
    the planar kernel's order."""
    bw = ww[9]
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (ww[0], ww[1], ww[2], ww[3], ww[4], ww[5], ww[6],
                                          ww[7], ww[8])
    for y in range(oh_n):
        o = y * n
        xb = y * ystep
        t0, t1, t2 = xb + toff[0], xb + toff[1], xb + toff[2]
        for i in range(n):
            ob[o + i] = bw[i] + w0[i] * xs[t0 + i] + w1[i] * xs[t1 + i] + w2[i] * xs[t2 + i]
        t0, t1, t2 = xb + toff[3], xb + toff[4], xb + toff[5]
        for i in range(n):
            ob[o + i] = ob[o + i] + w3[i] * xs[t0 + i] + w4[i] * xs[t1 + i] + w5[i] * xs[t2 + i]
        t0, t1, t2 = xb + toff[6], xb + toff[7], xb + toff[8]
        for i in range(n):
            ob[o + i] = ob[o + i] + w6[i] * xs[t0 + i] + w7[i] * xs[t1 + i] + w8[i] * xs[t2 + i]


@njit(fastmath=_FM)
def _cb_store(ob, nl, ohw, out, o0, res, has_res, act, prm):
    """``out[o0 + l*ohw + p] = act(ob[p*16 + l] + res[...])`` for lanes l < nl (uint64)."""
    alpha, lo, hi, zero = prm[0], prm[1], prm[2], prm[3]
    v = _U(LANES)
    for l in range(nl):
        o = o0 + l * ohw
        if has_res:
            for p in range(ohw):
                ob[p * v + l] += res[o + p]
        if act == NONE:
            for p in range(ohw):
                out[o + p] = ob[p * v + l]
        elif act == CLIP:
            for p in range(ohw):
                a = ob[p * v + l]
                a = lo if a < lo else a
                out[o + p] = hi if a > hi else a
        elif act == RELU:
            for p in range(ohw):
                a = ob[p * v + l]
                out[o + p] = zero if a < zero else a
        elif act == LEAKY:
            for p in range(ohw):
                a = ob[p * v + l]
                out[o + p] = a * alpha if a < zero else a
        else:  # sigmoid, tanh, silu, hard_sigmoid, hard_swish
            for p in range(ohw):
                out[o + p] = act_other(ob[p * v + l], act, prm)


@njit(fastmath=_FM)
def _cb_block(blk, x, out, res, has_res, prm, wp, toff, scratch, geo):
    """Tasks (image, block of 16 channels) ``[blk*ntask//nblk, ...)`` with scratch row blk.

    ``geo`` = nblk, n_img, C, channel blocks, h, w, oh, ow, sh, sw, pt, pl, Q, act, len(xs).
    """
    nblk, n_img, c_n, nchb = geo[0], geo[1], geo[2], geo[3]
    h_n, w_n, oh_n, ow_n = _U(geo[4]), _U(geo[5]), _U(geo[6]), _U(geo[7])
    sh, sw, pt, pl, q_n = _U(geo[8]), _U(geo[9]), _U(geo[10]), _U(geo[11]), _U(geo[12])
    act, xs_len = geo[13], geo[14]
    n = ow_n * _U(LANES)
    ystep = sh * sw * q_n * _U(LANES)
    ntask = n_img * nchb
    hw = h_n * w_n
    ohw = oh_n * ow_n
    xs = scratch[blk, :xs_len]
    ob = scratch[blk, xs_len:]
    for t in range(blk * ntask // nblk, (blk + 1) * ntask // nblk):
        m = t // nchb  # image
        cb = t - m * nchb
        c0 = cb * LANES
        nl = _U(min(LANES, c_n - c0))
        _cb_fill(x, _U(m * c_n + c0) * hw, hw, nl, h_n, w_n, xs, sw, pt, pl, q_n)
        _cb_taps9(xs, toff, wp[cb], ob, oh_n, n, ystep)
        _cb_store(ob, nl, ohw, out, _U(m * c_n + c0) * ohw, res, has_res, act, prm)


@pjit
def _cb_run_par(x, out, res, has_res, prm, wp, toff, scratch, geo):
    for blk in prange(geo[0]):
        _cb_block(blk, x, out, res, has_res, prm, wp, toff, scratch, geo)


@njit
def _cb_run_seq(x, out, res, has_res, prm, wp, toff, scratch, geo):
    for blk in range(geo[0]):
        _cb_block(blk, x, out, res, has_res, prm, wp, toff, scratch, geo)


# Output maps up to this many pixels take the channel-blocked kernel (3x3 depthwise): measured
# (1 thread) ~25 % faster than planar on MobileNetV2's 7x7 maps, slower from 14x14 on.
CB_MAX_PIXELS = 8 * 8


class Depthwise(ConvAlgorithm):
    """A depthwise / narrow-group convolution bound once.

    Calling ``dw(x, out, residual=None)`` writes ``act(conv(x) + b + residual)``
    into ``out``.  The scratch is per calling thread (``threading.local``), one row per block.
    The geometry travels packed in one int64 array: numba's per-call dispatch cost grows with
    the argument count (and ``np.uint64`` scalars cost ~0.1 us each to unbox).
    """

    name = "depthwise"

    @classmethod
    def accepts(cls, layer, cpu) -> bool:
        """Fewer than 8 output channels per group: the dense kernels' blocks of 16 channels
        would be mostly padding."""
        return layer.mg < 8

    def __init__(self, layer, w, bias):
        super().__init__(layer, w, bias)
        dtype, act, group = layer.dtype, layer.act, layer.group
        n_img, c_n, h_n, w_n = layer.in_shape
        m_all, cg, kh, kw = w.shape
        sh, sw, dh, dw = layer.sh, layer.sw, layer.dh, layer.dw
        pt, pl, pb, pr = layer.pads
        oh_n, ow_n = layer.oh_n, layer.ow_n
        hq = -(-(h_n + pt + pb) // sh)
        q_n = -(-(w_n + pl + pr) // sw)
        psz = hq * q_n
        offs = [c * sh * sw * psz + (((a * dh) % sh) * sw + (b * dw) % sw) * psz
                + ((a * dh) // sh) * q_n + (b * dw) // sw
                for c in range(cg) for a in range(kh) for b in range(kw)]
        taps = cg * kh * kw
        self._wb = np.empty((m_all, taps + 1), dtype=dtype)
        self._wb[:, :taps] = w.reshape(m_all, taps)
        self._wb[:, taps] = bias
        ntask = n_img * group
        nblk = max(1, min(ntask, numba.config.NUMBA_NUM_THREADS))
        xs_len = cg * sh * sw * psz
        self._row = xs_len + (oh_n - 1) * q_n + ow_n  # phase planes, then the sums
        geo = [nblk, n_img, group, cg, m_all // group, h_n, w_n, oh_n, ow_n, sh, sw, pt, pl, hq,
               q_n, act, xs_len, self._row * nblk]
        if max(geo + offs) >= 2**62:
            # Absurd sizes (a model that asks for 2**64 activations): binding must still
            # succeed, so that the plan's memory-budget check reports it; running is refused.
            self._geo = self._offs = None
        else:
            self._geo = np.array(geo[:-1], dtype=np.int64)
            self._offs = np.array(offs, dtype=np.uint64)
        self._nblk = nblk
        macs = n_img * m_all * oh_n * ow_n * taps
        self._kernel = _run_seq if serial(macs, layer.moved) else _run_par
        if (cg == 1 and m_all == group and kh == kw == 3 and oh_n * ow_n <= CB_MAX_PIXELS
                and m_all >= LANES and self._geo is not None):
            self._channel_blocked(w, bias, n_img, m_all, h_n, w_n, oh_n, ow_n, sh, sw, dh, dw,
                                  pt, pl, pb, pr, act, macs)
        self._tls = threading.local()

    def _channel_blocked(self, w, bias, n_img, c_n, h_n, w_n, oh_n, ow_n, sh, sw, dh, dw, pt,
                         pl, pb, pr, act, macs):
        """Switch this layer to the channel-blocked kernel (small maps)."""
        nchb = -(-c_n // LANES)
        w10 = np.zeros((nchb * LANES, 10), dtype=self.dtype)
        w10[:c_n, :9] = w.reshape(c_n, 9)
        w10[:c_n, 9] = bias
        wv = w10.reshape(nchb, LANES, 10).transpose(0, 2, 1)  # (block, tap, lane)
        self._wb = np.ascontiguousarray(np.tile(wv, (1, 1, ow_n)))  # repeated per pixel
        hp = h_n + pt + pb
        q_n = -(-(w_n + pl + pr) // sw)
        xs_len = hp * sw * q_n * LANES
        nblk = max(1, min(n_img * nchb, numba.config.NUMBA_NUM_THREADS))
        self._offs = np.array([((a * dh * sw + (b * dw) % sw) * q_n + (b * dw) // sw) * LANES
                               for a in range(3) for b in range(3)], dtype=np.uint64)
        self._geo = np.array([nblk, n_img, c_n, nchb, h_n, w_n, oh_n, ow_n, sh, sw, pt, pl,
                              q_n, act, xs_len], dtype=np.int64)
        self._nblk = nblk
        self._row = xs_len + oh_n * ow_n * LANES
        self._kernel = _cb_run_seq if serial(macs, self.layer.moved) else _cb_run_par

    def scratch_bytes(self) -> int:
        """Bytes of one calling thread's scratch."""
        return self._nblk * self._row * self.dtype.itemsize

    def __call__(self, x, out, residual=None):
        scratch = getattr(self._tls, "s", None)
        if scratch is None:  # zeros: the phase planes' border cells are never written
            if self._geo is None:
                raise MemoryError("convolution sizes beyond 2**62 elements")
            scratch = self._tls.s = np.zeros((self._nblk, self._row), self.dtype)
        if residual is None:
            self._kernel(x.reshape(-1), out.reshape(-1), self._dummy, False, self._prm,
                         self._wb, self._offs, scratch, self._geo)
        else:
            self._kernel(x.reshape(-1), out.reshape(-1), residual.reshape(-1), True, self._prm,
                         self._wb, self._offs, scratch, self._geo)
        return out
