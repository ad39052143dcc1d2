"""The input layout the direct and pixel kernels read, and the output geometry they write.

Both kernels read the input from a zero-bordered copy, laid out per row as ``stride_w`` phases
(``row[p*Q + q] = padded[q*stride_w + p]``), so that consecutive output pixels always read
consecutive elements whatever the stride.  The copy is skipped when there is no padding and unit
stride; a 1x1 unit-stride unpadded convolution is run as one long row per image, and a strided
unpadded 1x1 layer gathers the pixels it reads (``pixel.gather``).  The copy lives in one buffer
per calling thread shared by every layer (``_shared_scratch``): it stays warm from layer to
layer, and one layer may still be called from several threads at once.  Since it holds another
layer's data, the copy writes every element it covers, borders included.

``RowInput`` computes that layout for a layer and carries the zero-bordered handoff contract of
``runtime/plan.py`` (``padded_input``, ``read_padded``, ``can_write_padded``, ``write_padded``):
where one convolution's output is read by the next alone, the first writes straight into the
second's bordered layout and the second skips its copy.
"""

import threading

import numpy as np
from numba import prange

from .._alloc import mapped_empty
from .._jit import njit, pjit
from ._base import ConvAlgorithm

_U = np.uint64
PAD_SERIAL_ELEMS = 1 << 14  # input copies up to this size run on the calling thread
SMALL_ROW = 32  # _pad_plane: rows up to this long zero the whole plane, then copy the rows in


@pjit
def _pad_copy(x, xs, n_img, c_n, h_n, w_n, hp, q_n, sw, pt, pl, cstride):
    """Copy NCHW ``x`` (flat) into the zero-bordered, phase-split scratch ``xs`` (flat).

    Element (n, c, h, w) goes to row ``h + pt`` of plane (n, c), phase ``(w+pl) % sw``, position
    ``(w+pl) // sw``; everything else of each plane's ``cstride`` elements, and one spare plane
    after the last, is written with zeros: the scratch is shared by every convolution a thread
    runs (``_shared_scratch``), so it holds another layer's data.  A static prange over planes:
    a short memory-bound step, and the dynamic scheme's compile costs ~1 s more.
    """
    for u in prange(n_img * c_n + 1):
        _pad_plane(x, xs, np.int64(u), n_img * c_n, h_n, w_n, q_n, sw, pt, pl, cstride)


@njit
def _pad_copy_serial(x, xs, n_img, c_n, h_n, w_n, hp, q_n, sw, pt, pl, cstride):
    """``_pad_copy`` on the calling thread, for copies too small to be worth waking the pool
    (``PAD_SERIAL_ELEMS``): a parallel region costs 4-5 us, a 16x10x10 plane copy 0.5."""
    for u in range(n_img * c_n + 1):
        _pad_plane(x, xs, np.int64(u), n_img * c_n, h_n, w_n, q_n, sw, pt, pl, cstride)


@njit
def _pad_plane(x, xs, u, n_planes, h_n, w_n, q_n, sw, pt, pl, cstride):
    """``_pad_copy`` of plane u (u == n_planes: the spare plane, all zeros), with ``uint64``
    indices so that LLVM turns the loops into vector moves.  Long unit-stride rows (most of
    VGG's layers) are written once each, as zeros, data, zeros; short rows and strided layers
    zero the whole plane in one loop and then write the data in (per-row loops of a few
    elements cost more than writing the plane twice: 512 planes of 7x7 took 33 us, now 12)."""
    base = _U(u * cstride)
    rl = sw * q_n
    if u < n_planes and sw == 1 and w_n > SMALL_ROW:
        for i in range(_U(pt * rl)):  # top border rows
            xs[base + i] = 0
        for i in range(_U((pt + h_n) * rl), _U(cstride)):  # bottom rows and the plane gap
            xs[base + i] = 0
        wn = _U(w_n)
        tail = _U(rl - pl - w_n)
        for h in range(h_n):
            src = _U((u * h_n + h) * w_n)
            row = base + _U((h + pt) * rl)
            for i in range(_U(pl)):
                xs[row + i] = 0
            for i in range(wn):
                xs[row + _U(pl) + i] = x[src + i]
            for i in range(tail):
                xs[row + _U(pl) + wn + i] = 0
        return
    for i in range(_U(cstride)):
        xs[base + i] = 0
    if u == n_planes:
        return
    if sw == 1:
        for h in range(h_n):
            src = _U((u * h_n + h) * w_n)
            row = base + _U((h + pt) * rl + pl)
            for i in range(_U(w_n)):
                xs[row + i] = x[src + i]
        return
    for h in range(h_n):
        src = (u * h_n + h) * w_n
        dst = u * cstride + (h + pt) * rl
        for p in range(sw):
            w0 = (p - pl) % sw  # first w whose padded column has phase p
            if w0 >= w_n:
                continue
            d = _U(dst + p * q_n + (w0 + pl) // sw)
            s0 = _U(src + w0)
            cnt = _U((w_n - w0 + sw - 1) // sw)
            if sw == 2:  # a constant stride: LLVM vectorises it as loads and shuffles
                for i in range(cnt):
                    xs[d + i] = x[s0 + i * _U(2)]
            else:
                for i in range(cnt):
                    xs[d + i] = x[s0 + i * _U(sw)]


@njit
def tap_sources(h_n, w_n, kh, kw, sh, sw, dh, dw, pt, pl, oh_n, ow_n):
    """(rows, cols): each tap's input row and column per output pixel of a map, ``[tap,
    oh*OW + ow]`` (row -1 where the tap falls in the padding): the gathers of small maps read
    through it (``small_maps.fill_panels``, training's im2col)."""
    kk, p_n = kh * kw, oh_n * ow_n
    ys = np.empty((kk, p_n), dtype=np.int64)
    xs = np.empty((kk, p_n), dtype=np.int64)
    for t in range(kk):
        for p in range(p_n):
            y = (p // ow_n) * sh - pt + (t // kw) * dh
            x = (p % ow_n) * sw - pl + (t % kw) * dw
            inside = 0 <= y < h_n and 0 <= x < w_n
            ys[t, p] = y if inside else -1
            xs[t, p] = x if inside else 0
    return ys, xs


_SCRATCH = threading.local()


def _shared_scratch(n, dtype):
    """``n`` elements of this thread's scratch, shared by every Conv2d the thread calls (one
    layer runs at a time per thread): the padded input copy stays warm in L2 from layer to
    layer, and the process holds one such buffer per thread instead of one per layer.  Kernels
    that use it rewrite every element they read (``_pad_copy``, ``pixel.gather``)."""
    key = np.dtype(dtype).char
    buf = getattr(_SCRATCH, key, None)
    if buf is None or buf.shape[0] < n:
        buf = None  # the old one goes first
        setattr(_SCRATCH, key, None)
        buf = mapped_empty(n, dtype)  # exactly: 13 MB an image on VGG-16
        setattr(_SCRATCH, key, buf)
    return buf[:n]


def nchw_strides(shape, row=None):
    """A kernel's output geometry ``ogeo`` for plain NCHW ``shape``: image, channel and row
    strides, first pixel, then top and left border and a flag (0: no border to write)."""
    n_img, c_n, h_n, w_n = shape
    return np.array([c_n * h_n * w_n, h_n * w_n, w_n if row is None else row, 0, 0, 0, 0],
                    dtype=np.int64)


def padded_strides(shape, geometry):
    """``ogeo`` of NCHW ``shape`` stored in the interior of the zero-bordered layout
    ``geometry`` (``Conv2d.padded_input``); the kernel writes the border's zeros too."""
    hp, q_n, pt, pl, cstride = geometry
    n_img, c_n, h_n, w_n = shape
    assert pt + h_n <= hp and pl + w_n <= q_n
    return np.array([c_n * cstride, cstride, q_n, pt * q_n + pl, pt, pl, 1], dtype=np.int64)


def zero_spare(out, ogeo, n_img):
    """Zero the spare plane after the last image of a bordered output (the reader's layout
    keeps one, see ``Conv2d``)."""
    out[n_img * ogeo[0]:n_img * ogeo[0] + ogeo[1]] = 0


@pjit
def gather(x, xs, n_c, h_n, w_n, oh_n, ow_n, sh, sw):
    """``xs[(u*oh + i)*ow + j] = x[(u*h + i*sh)*w + j*sw]``: the strided pixels, per plane u.

    uint64 indices (no negative-index wrap-around per element) and a literal 2 for ResNet's
    stride let LLVM vectorise the row as wide loads and shuffles: 2.2x faster on ResNet-50's
    56x56x256 downsample input (171 -> 80 us)."""
    for u in prange(n_c):
        uu = _U(u)
        for i in range(oh_n):
            src = (uu * _U(h_n) + _U(i) * _U(sh)) * _U(w_n)
            dst = (uu * _U(oh_n) + _U(i)) * _U(ow_n)
            if sw == 2:
                for j in range(ow_n):
                    xs[dst + _U(j)] = x[src + _U(2) * _U(j)]
            else:
                for j in range(ow_n):
                    xs[dst + _U(j)] = x[src + _U(j) * _U(sw)]


class RowInput(ConvAlgorithm):
    """The input side the direct and pixel kernels share: the layout above for ``layer``
    (``_copy``: a bordered copy, ``_gather``: gathered strided pixels, else read in place), the
    per-tap offsets into it, the output's geometry ``_ogeo`` and the handoff contract."""

    def __init__(self, layer, w, bias):
        super().__init__(layer, w, bias)
        n_img, c_n, h_n, w_n = layer.in_shape
        kh, kw, sh, sw, dh, dw = layer.kh, layer.kw, layer.sh, layer.sw, layer.dh, layer.dw
        pt, pl, pb, pr = layer.pads
        oh_n, ow_n = layer.oh_n, layer.ow_n
        dtype = layer.dtype
        self._strides = (sh, sw)
        self._copy = not (sw == 1 and pt == pl == pb == pr == 0)
        # a strided unpadded 1x1 layer (ResNet's downsamples) gathers the pixels it reads into
        # one long row per plane instead: a quarter of the input, where the phase-split copy
        # writes all of it (14x14x256 -> 7x7: 9 us against 66)
        self._gather = kh == kw == 1 and not any(layer.pads) and (sh, sw) != (1, 1)
        if self._gather:
            self._copy = False
            rl = cstride = q_n = oh_n * ow_n
            self._xs_len = n_img * c_n * cstride
        elif self._copy:
            hp = h_n + pt + pb
            q_n = -(-(w_n + pl + pr) // sw)
            rl = sw * q_n
            cstride = hp * rl
            if (cstride * dtype.itemsize) % 1024 == 0:  # avoid cache-set aliasing across planes
                cstride += 64 // dtype.itemsize
            self._geom = (hp, q_n, sw, pt, pl, cstride)
            # one spare plane-stride at the end keeps every read in bounds
            self._xs_len = n_img * c_n * cstride + cstride
        elif kh == kw == 1 and sh == 1:  # 1x1, unit stride, no padding: one long row per image
            rl = cstride = h_n * w_n
            q_n = rl
        else:
            rl = q_n = w_n
            cstride = h_n * w_n
        flat = self._gather or (not self._copy and kh == kw == 1 and sh == 1)
        self._oh, self._ow = (1, oh_n * ow_n) if flat else (oh_n, ow_n)
        # the output's image, channel and row strides and first pixel: NCHW unless the plan
        # has this layer write the next one's zero-bordered input (write_padded)
        self._ogeo = nchw_strides(self.out_shape, self._ow)
        self._nstride = c_n * cstride
        self._gstride = layer.cg * cstride
        self._rowstep = sh * rl
        koff = [i * dh * rl + ((j * dw) % sw) * q_n + (j * dw) // sw
                for i in range(kh) for j in range(kw)]
        self._offs = (np.arange(layer.cg, dtype=np.uint64)[:, None] * np.uint64(cstride)
                      + np.array(koff, dtype=np.uint64)[None, :]).reshape(-1)

    # -- zero-bordered handoff between layers (runtime/plan.py) ---------------------------------
    # When one convolution's output is read by the next alone, the plan can have the first
    # write straight into the zero-bordered layout the second would otherwise copy its input
    # into (``_pad_copy``: 4-9 % of a 3x3 layer's time, more where the copy's planes were
    # written by the other core).  The writer stores the border's zeros with its rows
    # (``_epilogue._zero_border``), so the plan shares the buffer with other values like any
    # other.
    x_shape = property(lambda self: (-1,) if self._padded_in else self.in_shape)
    y_shape = property(lambda self: (-1,) if self._padded_out else self.out_shape)
    _padded_in = _padded_out = False

    def padded_input(self):
        """``(elements, geometry)`` of the zero-bordered input this layer copies its input
        into, when another layer could write it instead (unit stride along W); else None.
        ``geometry`` = (padded rows, row length, top, left, plane stride)."""
        if not self._copy or self._strides[1] != 1:
            return None
        hp, q_n, _, pt, pl, cstride = self._geom
        return self._xs_len, (hp, q_n, pt, pl, cstride)

    def read_padded(self):
        """From now on the input arrives flat, already in the ``padded_input`` layout."""
        assert self.padded_input() is not None
        self._padded_in = True
        self._copy = False

    def can_write_padded(self) -> bool:
        """Whether this layer can store its output into another layer's padded input: on 2-D
        rows, without a residual (read at the output's own offsets)."""
        return self._oh == self.out_shape[2]

    def write_padded(self, geometry):
        """From now on write the output flat, into the ``padded_input`` layout ``geometry``
        of the layer that reads it (whose input shape is this layer's output shape)."""
        assert self.can_write_padded()
        self._ogeo[:] = padded_strides(self.out_shape, geometry)
        self._padded_out = True

    def scratch_bytes(self) -> int:
        """Bytes of one calling thread's input copy (0 when the input is read in place)."""
        return self._xs_len * self.dtype.itemsize if self._copy or self._gather else 0

    def prepare(self, x):
        """The flat input the kernel reads: the zero-bordered copy, the gathered pixels (both
        in this thread's scratch) or ``x`` itself."""
        n_img, c_n, h_n, w_n = self.in_shape
        if self._padded_in:
            return x
        if self._copy:
            xf = _shared_scratch(self._xs_len, self.dtype)
            copy = _pad_copy_serial if self._xs_len <= PAD_SERIAL_ELEMS else _pad_copy
            copy(x.reshape(-1), xf, n_img, c_n, h_n, w_n, *self._geom)
            return xf
        if self._gather:
            xf = _shared_scratch(self._xs_len, self.dtype)
            (sh, sw), (oh_n, ow_n) = self._strides, self.out_shape[2:]
            gather(x.reshape(-1), xf, n_img * c_n, h_n, w_n, oh_n, ow_n, sh, sw)
            return xf
        return x.reshape(-1)
