"""The input gradient of a small-map convolution straight from the weights as they are.

Elsewhere dX of a unit-stride layer is the forward convolution of dY with the flipped,
transposed weights, which the blocked kernel packs again every step.  On ResNet-18's last two
stages at 64x64 (2x2 and 4x4 maps at batch 8) those layers hold 90 % of the weights and do
little arithmetic per weight, so that packing (a read and a write of every weight) cost as
much as the products.  Here, with ``r = (c*kH + a)*kW + b`` and ``k`` = image and output pixel:

* ``dcols[k, r] = sum_m dY[m, k] * W[m, r]``: the inference microkernel's register tile with
  ``T`` = 14 consecutive ``r`` as its pixels, read from ``W`` in its own (M, C*kH*kW) layout
  (the tile's broadcasts take a run of 14 values of row m: no packing), and dY as its
  "weights", 32 values of ``k`` a vector (``pack_dy_pixels``, a small array); the last tile
  of ``r`` is shifted back to end at the last row, its overlap written twice with equal sums;
* ``dX[n, c, y, x] = sum over taps of dcols[(n, p), (c, tap)]`` for the output pixels p whose
  window puts that tap on (y, x): a gather per input cell in tap order (``col2im_gather``), so
  no two tasks write one cell.

Any stride, padding and dilation; float32, one group (``applies``).  Work is split statically
and each value is one fixed sum, so the result does not depend on the thread count.
"""

import numba
import numpy as np
from numba import prange, types
from numba.extending import intrinsic

from ...kernels._jit import FAST, njit, pjit
from ...kernels.conv._ir import VEC, VecIR
from ...kernels.conv._microkernel import TILE_ELEMS, tile_kernel_t, tile_pitch

_U = np.uint64
_FM = set(FAST)
NB_, T = 2, 14  # the microkernel shape (2 vectors of 16 values of k) x 14 values of r
WD = NB_ * VEC
PITCH = tile_pitch(T)
# Output rows up to this many pixels take this path (those whose forward convolution
# ``kernels/conv/small_maps.py`` runs); wider maps keep the flipped-weights convolution.
MAX_ROW = 4


def applies(x4, dy, w, group) -> bool:
    """Whether dX of this layer runs here: float32, one group, 2-D output rows of at most
    ``MAX_ROW`` pixels, and at least one tile of reduction rows (C*kH*kW >= T)."""
    return (x4.dtype == np.float32 and group == 1 and dy.ndim == 4
            and dy.shape[3] <= MAX_ROW and w[0].size >= T)


@pjit
def pack_dy_pixels(dy3, ap):
    """``ap[kb, m, j] = dY[n, m, p]`` for ``k = kb*WD + j = n*P + p``, zeros past the last."""
    n_img, m_n, p_n = dy3.shape
    k_n = n_img * p_n
    for kb in prange(ap.shape[0]):
        for m in range(m_n):
            row = ap[kb, m]
            for j in range(WD):
                k = kb * WD + j
                n = k // p_n
                row[j] = dy3[n, m, k - n * p_n] if k < k_n else 0


@intrinsic
def _prefetch(typingctx, arr, index):
    """Hint the line holding ``arr[index]`` (a 1-D float array) into the cache; never faults."""
    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        VecIR(context, builder, signature.args[0].dtype).prefetch(a.data, args[1])
        return context.get_dummy_value()
    return types.void(arr, index), codegen


# Items ahead whose strips of W are prefetched: W is read 14 values a row down all M rows,
# M lines at once that the hardware prefetchers do not follow (ResNet-18's 512x4608 weights
# from memory: 0.97 ms a layer without, 0.86 / 0.72 / 0.81 with 2 / 4 / 8 items ahead, 0.36
# from cache).
PF_ITEMS = 4


@njit(fastmath=_FM)
def _dx_items(wf, offs, ap, zb, dcols, r_n, i0, i1, nrt):
    tile = np.empty(TILE_ELEMS, dtype=dcols.dtype)
    k_n = dcols.shape[0]
    for it in range(i0, i1):
        kb = it // nrt
        r0 = min((it - kb * nrt) * T, r_n - T)  # the last tile shifted back
        if it + PF_ITEMS < i1:
            nk = (it + PF_ITEMS) // nrt
            rp = _U(min((it + PF_ITEMS - nk * nrt) * T, r_n - T))
            for m in range(offs.shape[0]):
                _prefetch(wf, offs[m] + rp)
                _prefetch(wf, offs[m] + rp + _U(T - 1))
        tile_kernel_t(wf, _U(r0), offs, ap, kb, zb, tile, NB_, T, 0)
        for j in range(min(WD, k_n - kb * WD)):
            row = dcols[kb * WD + j]
            src = tile[j * PITCH:j * PITCH + T]
            for t in range(_U(T)):
                row[_U(r0) + t] = src[t]


@pjit(fastmath=_FM)
def dx_products(w2, ap, offs, zb, dcols, nthr):
    """``dcols[k, r] = sum_m ap[k // WD, m, k % WD] * w2[m, r]`` (C*kH*kW >= T)."""
    r_n = w2.shape[1]
    nrt = (r_n + T - 1) // T
    items = ap.shape[0] * nrt
    wf = w2.reshape(w2.size)
    for th in prange(nthr):
        _dx_items(wf, offs, ap, zb, dcols, r_n, items * th // nthr, items * (th + 1) // nthr,
                  nrt)


def cell_sources(h_n, w_n, kernel, strides, dilations, pads, out_hw):
    """``src[y*W + x, tap]``: the output pixel whose window puts ``tap`` on input cell (y, x),
    -1 where none does."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh_n, ow_n) = kernel, strides, dilations, pads, \
        out_hw
    src = np.full((h_n * w_n, kh * kw), -1, dtype=np.int64)
    for a in range(kh):
        for b in range(kw):
            for oh in range(oh_n):
                y = oh * sh - pt + a * dh
                if not 0 <= y < h_n:
                    continue
                for ow in range(ow_n):
                    x = ow * sw - pl + b * dw
                    if 0 <= x < w_n:
                        src[y * w_n + x, a * kw + b] = oh * ow_n + ow
    return src


@pjit
def col2im_gather(dcols, src, gx):
    """``gx[n, c, q] = sum_tap dcols[n*P + src[q, tap], c*kk + tap]`` over the taps with a
    source (in tap order); one task per (image, channel) plane."""
    n_img, c_n, q_n = gx.shape
    kk = src.shape[1]
    p_n = dcols.shape[0] // n_img
    for t in prange(n_img * c_n):
        n = t // c_n
        c = t - n * c_n
        plane = gx[n, c]
        for q in range(q_n):
            s = gx.dtype.type(0)
            for tap in range(kk):
                p = src[q, tap]
                if p >= 0:
                    s += dcols[n * p_n + p, c * kk + tap]
            plane[q] = s


class DxBuffers:
    """One layer's buffers for these shapes (kept in the node's cache)."""

    def __init__(self, x_shape, dy_shape, w_shape, kernel, strides, dilations, pads, dtype):
        n, m, oh, ow = dy_shape
        r_n = w_shape[1] * w_shape[2] * w_shape[3]
        k_n = n * oh * ow
        self.ap = np.empty((-(-k_n // WD), m, WD), dtype=dtype)
        self.zb = np.zeros((self.ap.shape[0], WD), dtype=dtype)
        self.offs = np.arange(m, dtype=np.uint64) * np.uint64(r_n)
        self.dcols = np.empty((k_n, r_n), dtype=dtype)
        self.src = cell_sources(x_shape[2], x_shape[3], kernel, strides, dilations, pads,
                                (oh, ow))


def input_grad(cache, dy, w, gx, kernel, strides, dilations, pads):
    """``gx`` (N, C, H, W) = dX of the convolution whose output gradient is ``dy`` (N, M, OH,
    OW) and weights ``w`` (M, C, kH, kW), ``applies``; ``pads`` the top and left ones."""
    bufs = cache.get("dx_bufs")
    if bufs is None:
        bufs = cache["dx_bufs"] = DxBuffers(gx.shape, dy.shape, w.shape, kernel, strides,
                                            dilations, pads, gx.dtype)
    n, m, oh, ow = dy.shape
    pack_dy_pixels(np.ascontiguousarray(dy).reshape(n, m, oh * ow), bufs.ap)
    w2 = np.ascontiguousarray(w).reshape(m, -1)
    items = bufs.ap.shape[0] * -(-w2.shape[1] // T)
    dx_products(w2, bufs.ap, bufs.offs, bufs.zb, bufs.dcols,
                min(numba.get_num_threads(), items))
    col2im_gather(bufs.dcols, bufs.src, gx.reshape(gx.shape[0], gx.shape[1], -1))
