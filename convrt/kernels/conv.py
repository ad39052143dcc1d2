"""2-D convolution (ONNX ``Conv``) with a fused epilogue: bias, residual add, activation.

Two kernels, both direct (no im2col) and both reading the input through one layout:

* **blocked** (dense and grouped convolutions with at least 8 output channels per group): weights
  are packed at construction into blocks of 16 output channels ``(block, c*kH*kW, 16)``; the
  code-generated microkernels in ``_gen/conv_mk.py`` compute T output pixels x 16 channels in
  registers (see ``_gen_conv.py``).
* **rowwise** (depthwise and other narrow groups): one output row of one channel at a time,
  vectorised along the row.

The input is read from a zero-bordered copy, laid out per row as ``stride_w`` phases
(``row[p*Q + q] = padded[q*stride_w + p]``), so that consecutive output pixels always read
consecutive elements whatever the stride.  The copy is skipped when there is no padding and unit
stride; a 1x1 unit-stride unpadded convolution is run as one long row per image.  The copy buffer
is per thread (``threading.local``): one ``Conv2d`` may be called from several threads at once.
"""

import threading

import numba
import numpy as np
from numba import prange

from ._gen.conv_mk import ACT_CLIP, ACT_LEAKY, ACT_NONE, ACT_RELU, ACT_SIGMOID, ACT_TANH
from ._gen.conv_mk import MICROKERNELS
from ._jit import FAST, njit, pjit

ACTIVATIONS = {"none": ACT_NONE, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY, "clip": ACT_CLIP,
               "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH}
VEC = 16
# Relative speed of the microkernel per tile width T (pixels per call); the T*16 sums must fit
# the 32 vector registers: T=14 needs 512-bit vectors for float32, T=7 256-bit ones.
_TILE_EFFICIENCY = {14: 1.0, 7: 0.9, 4: 0.7, 1: 0.25}


def _vector_bits():
    """The vector width numba's LLVM will use for the SLP-vectorised microkernels (a guess from
    the target: LLVM prefers 256-bit vectors on Intel CPUs unless told ``-prefer-256-bit``)."""
    import llvmlite.binding as llvm

    feats = numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    if "+avx512f" in feats and ("-prefer-256-bit" in feats or name.startswith("znver")):
        return 512
    return 256 if "+avx" in feats else 128


_VECTOR_BITS = _vector_bits()


def _tiles(dtype):
    """Tile widths allowed for ``dtype``: those whose T*16 sums fit the vector registers."""
    nvec = max(1, VEC * 8 * dtype.itemsize // _VECTOR_BITS)  # vectors per pixel's 16 sums
    # one vector per pixel: weights come from memory, broadcasts fold into the FMA (T <= 28);
    # several: each broadcast takes a register too, and spills start at about 24 sums
    max_t = 28 if nvec == 1 else 16 // nvec
    return [t for t in MICROKERNELS if t <= max_t]
_U = np.uint64
_FM = set(FAST)  # numba wants a set, not a frozenset


@pjit
def _pad_copy(x, xs, n_img, c_n, h_n, w_n, hp, q_n, sw, pt, pl, cstride):
    """Copy NCHW ``x`` (flat) into the zero-bordered, phase-split scratch ``xs`` (flat).

    Element (n, c, h, w) goes to row ``h + pt`` of plane (n, c), phase ``(w+pl) % sw``, position
    ``(w+pl) // sw``.  Border elements are never written (they stay zero).
    """
    rl = sw * q_n
    for u in prange(n_img * c_n):
        for h in range(h_n):
            src = (u * h_n + h) * w_n
            dst = u * cstride + (h + pt) * rl
            for p in range(sw):
                w0 = (p - pl) % sw  # first w whose padded column has phase p
                if w0 >= w_n:
                    continue
                d = dst + p * q_n + (w0 + pl) // sw
                cnt = (w_n - w0 + sw - 1) // sw
                for i in range(cnt):
                    xs[d + i] = x[src + w0 + i * sw]


@njit(fastmath=_FM)
def _row(xf, xb, offs, w2, m, b1, out, ob, ow_n):
    """One output row of channel m: ``out[ob:ob+ow_n] = b + sum_r w2[m, r] * xf[xb+offs[r]+i]``."""
    bias = b1[m]
    for i in range(ow_n):
        out[ob + i] = bias
    for r in range(offs.shape[0]):
        wv = w2[m, r]
        xo = xb + offs[r]
        for i in range(ow_n):
            out[ob + i] += wv * xf[xo + i]


@njit(fastmath=_FM)
def _row_epilogue(out, ob, cnt, res, has_res, act, prm):
    """In place on ``out[ob:ob+cnt]``: add the residual, then the activation (NaN passes)."""
    alpha, lo, hi, zero, one = prm[0], prm[1], prm[2], prm[3], prm[4]
    if has_res:
        for i in range(cnt):
            out[ob + i] += res[ob + i]
    if act == ACT_RELU:
        for i in range(cnt):
            v = out[ob + i]
            out[ob + i] = zero if v < zero else v
    elif act == ACT_LEAKY:
        for i in range(cnt):
            v = out[ob + i]
            out[ob + i] = v * alpha if v < zero else v
    elif act == ACT_CLIP:
        for i in range(cnt):
            v = out[ob + i]
            v = lo if v < lo else v
            out[ob + i] = hi if v > hi else v
    elif act == ACT_SIGMOID:
        for i in range(cnt):
            out[ob + i] = one / (one + np.exp(-out[ob + i]))
    elif act == ACT_TANH:
        for i in range(cnt):
            out[ob + i] = np.tanh(out[ob + i])


@pjit(fastmath=_FM)
def _run_rowwise(xf, offs, w2, b1, out, res, has_res, act, prm, n_img, m_all, mg, oh_n, ow_n,
                 nstride, gstride, rowstep):
    ohw = _U(oh_n * ow_n)
    for u in prange(n_img * m_all * oh_n):
        oh = u % oh_n
        r = u // oh_n
        m = r % m_all
        n = r // m_all
        g = m // mg
        ob = _U(u * ow_n)
        _row(xf, _U(n * nstride + g * gstride + oh * rowstep), offs, w2, m, b1, out, ob,
             _U(ow_n))
        if has_res or act != ACT_NONE:
            _row_epilogue(out, ob, _U(ow_n), res, has_res, act, prm)


def _choose_tile(ow_n, dtype):
    """The tile width with the least estimated time for an output row of ``ow_n`` pixels."""
    best, best_cost = 1, None
    allowed = _tiles(dtype)
    for t, eff in _TILE_EFFICIENCY.items():
        if t in allowed and t <= ow_n:
            cost = -(-ow_n // t) * t / eff
            if best_cost is None or cost < best_cost:
                best, best_cost = t, cost
    return best


class Conv2d:
    """A 2-D convolution bound once: validated shapes, weights packed at construction.

    Args:
        w: weights ``(M, C//group, kH, kW)``.
        b: bias ``(M,)`` or None.
        in_shape: the concrete input shape ``(N, C, H, W)``.
        strides, pads, dilations, group: as ONNX ``Conv`` (pads are top, left, bottom, right).
        activation: one of ``ACTIVATIONS``, applied after the bias and the optional residual.
        alpha: LeakyRelu slope. clip_min, clip_max: Clip bounds.
        dtype: float32 (the fast path) or float64.

    Calling ``conv(x, out, residual=None)`` writes ``act(conv(x) + b + residual)`` into ``out``.
    """

    def __init__(self, w, b, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                 group=1, activation="none", alpha=0.01, clip_min=-np.inf, clip_max=np.inf,
                 dtype=np.float32):
        dtype = np.dtype(dtype)
        w = np.asarray(w, dtype=dtype)
        n_img, c_n, h_n, w_n = (int(v) for v in in_shape)
        m_all, cg, kh, kw = w.shape
        sh, sw = (int(v) for v in strides)
        dh, dw = (int(v) for v in dilations)
        pt, pl, pb, pr = (int(v) for v in pads)
        group = int(group)
        assert c_n % group == 0 and m_all % group == 0 and cg == c_n // group
        oh_n = (h_n + pt + pb - (kh - 1) * dh - 1) // sh + 1
        ow_n = (w_n + pl + pr - (kw - 1) * dw - 1) // sw + 1
        assert oh_n >= 1 and ow_n >= 1 and min(sh, sw, dh, dw) >= 1 and min(pads) >= 0
        self.in_shape = (n_img, c_n, h_n, w_n)
        self.out_shape = (n_img, m_all, oh_n, ow_n)
        self.dtype = dtype
        self.act = ACTIVATIONS[activation]
        self._prm = np.array([alpha, clip_min, clip_max, 0.0, 1.0], dtype=dtype)
        self._dummy = np.zeros(1, dtype=dtype)
        mg = m_all // group
        kk = kh * kw

        # ---- input layout -------------------------------------------------------------------
        self._copy = not (sw == 1 and pt == pl == pb == pr == 0)
        if self._copy:
            hp = h_n + pt + pb
            q_n = -(-(w_n + pl + pr) // sw)
            rl = sw * q_n
            cstride = hp * rl
            if (cstride * dtype.itemsize) % 1024 == 0:  # avoid cache-set aliasing across planes
                cstride += 64 // dtype.itemsize
            self._geom = (hp, q_n, sw, pt, pl, cstride)
        elif kh == kw == 1 and sh == 1:  # 1x1, unit stride, no padding: one long row per image
            rl = cstride = h_n * w_n
            q_n = rl
        else:
            rl = q_n = w_n
            cstride = h_n * w_n
        flat = not self._copy and kh == kw == 1 and sh == 1
        self._oh, self._ow = (1, oh_n * ow_n) if flat else (oh_n, ow_n)
        self._nstride = c_n * cstride
        self._gstride = cg * cstride
        self._rowstep = sh * rl
        koff = [i * dh * rl + ((j * dw) % sw) * q_n + (j * dw) // sw
                for i in range(kh) for j in range(kw)]
        self._offs = np.array([c * cstride + o for c in range(cg) for o in koff], dtype=np.uint64)
        self._tls = threading.local()

        bias = np.zeros(m_all, dtype=dtype) if b is None else np.asarray(b, dtype=dtype)
        assert bias.shape == (m_all,)
        # ---- weights ------------------------------------------------------------------------
        self._blocked = mg >= 8
        if self._blocked:
            nbg = -(-mg // VEC)
            nb = group * nbg
            wp = np.zeros((nb, cg * kk, VEC), dtype=dtype)
            bp = np.zeros((nb, VEC), dtype=dtype)
            w3 = w.reshape(group, mg, cg * kk)
            b2 = bias.reshape(group, mg)
            for g in range(group):
                for bl in range(nbg):
                    j = min(VEC, mg - bl * VEC)
                    wp[g * nbg + bl, :, :j] = w3[g, bl * VEC: bl * VEC + j].T
                    bp[g * nbg + bl, :j] = b2[g, bl * VEC: bl * VEC + j]
            self._wp, self._bp, self._nb, self._nbg, self._mg = wp, bp, nb, nbg, mg
            self._tile = _choose_tile(self._ow, dtype)
            self._run = MICROKERNELS[self._tile]
        else:
            self._w2 = np.ascontiguousarray(w.reshape(m_all, cg * kk))
            self._b1 = bias
            self._mg = mg

    def _scratch(self):
        xs = getattr(self._tls, "xs", None)
        if xs is None:
            hp, q_n, sw, pt, pl, cstride = self._geom
            # one spare plane-stride at the end keeps every read in bounds
            xs = np.zeros(self._nstride * self.in_shape[0] + cstride, dtype=self.dtype)
            self._tls.xs = xs
        return xs

    def __call__(self, x, out, residual=None):
        n_img, c_n, h_n, w_n = self.in_shape
        if self._copy:
            xf = self._scratch()
            hp, q_n, sw, pt, pl, cstride = self._geom
            _pad_copy(x.reshape(-1), xf, n_img, c_n, h_n, w_n, hp, q_n, sw, pt, pl, cstride)
        else:
            xf = x.reshape(-1)
        of = out.reshape(-1)
        has_res = residual is not None
        res = residual.reshape(-1) if has_res else self._dummy
        if self._blocked:
            self._run(xf, self._offs, self._wp, self._bp, of, res, has_res, self.act, self._prm,
                      n_img, self._nb, self._nbg, self._mg, self.out_shape[1], self._oh,
                      self._ow, self._nstride, self._gstride, self._rowstep)
        else:
            _run_rowwise(xf, self._offs, self._w2, self._b1, of, res, has_res, self.act,
                         self._prm, n_img, self.out_shape[1], self._mg, self._oh, self._ow,
                         self._nstride, self._gstride, self._rowstep)
        return out
