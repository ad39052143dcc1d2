"""Resize kernels: per-axis tap tables built once in Python, numba loops that gather and blend.

Resize is separable: every output element is a product-weighted sum over one small window per
axis.  :func:`axis_table` turns one axis' geometry (ONNX coordinate transformation, mode, scale)
into an index table ``idx[out, taps]`` (already clamped into ``[0, in)``), a weight table (None
for nearest) and an optional extrapolation mask (``tf_crop_and_resize``).  The numba kernels
trust those tables and do no bounds checks.  The table arithmetic mirrors onnx's reference
implementation (``onnx/reference/ops/op_resize.py``) step for step, float64 throughout, so
convrt's taps are the reference's taps.

:class:`Resizer` runs the tables: axes before the last two are resized one pass each (rare:
batch/channel or depth resizes), the last two in one fused 2-D kernel (the common NCHW case),
work shared over (plane, output row) items so a single plane still uses every thread.  Nearest
gathers run on unsigned views of the data (a bit-exact copy, one compile per element size).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import pjit

ROW_ITEMS = 64  # aim for at least this many parallel work items (plane x row block)
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


# -- tables (Python, at bind time) -------------------------------------------------------------
def source_coords(ctm: str, in_w: int, out_w: int, scale: float, roi=(0.0, 1.0)):
    """x_original per output index, and the tf_crop_and_resize extrapolation mask (or None).

    Like the reference, the fractional ``output_width = scale * in_w`` (not the integer output
    length) enters align_corners, pytorch_half_pixel and tf_crop_and_resize: ONNX's own test
    data (e.g. ``test_resize_downsample_scales_linear_align_corners``) is built that way.
    """
    y = np.arange(out_w, dtype=np.float64)
    ow = scale * in_w
    ext = None
    if ctm == "align_corners":
        x = np.zeros(out_w) if ow == 1 else y * (in_w - 1) / (ow - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        start, end = roi  # numpy scalars of the roi's dtype: the reference's rounding
        if ow == 1:
            x = np.full(out_w, (end - start) * (in_w - 1) / 2)
        else:
            x = y * (end - start) * (in_w - 1) / (ow - 1)
        x = x + start * (in_w - 1)
        ext = (x < 0) | (x > in_w - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full(out_w, -0.5) if ow == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        offset = in_w / 2 * (1 - out_w / ow)
        x = offset + (y + 0.5) / scale - 0.5
    elif ctm == "tf_half_pixel_for_nn":  # Resize-11 only; as onnxruntime computes it
        x = (y + 0.5) / scale
    else:
        raise ValueError(f"coordinate_transformation_mode {ctm!r}")
    # Only tf_crop_and_resize's roi puts x far outside [0, in), where ext already decides the
    # value: clip beyond the widest window (antialias: ~4 in) so floor() stays in int64 range
    # whatever the roi; NaN (a degenerate roi) reads index 0.
    far = 8.0 * in_w + 16.0
    x = np.nan_to_num(np.clip(x, -far, far), nan=0.0)
    return x, (None if ext is None or not ext.any() else ext)


def _nearest_pick(ratio, nearest_mode: str, scale: float):
    """Which of the two window taps (0: left, 1: right) nearest takes, as the reference's
    ``_nearest_coeffs``: ratio 1 (an exact input position) takes the right tap of the window."""
    if nearest_mode == "legacy":  # Resize-10 / Upsample: onnxruntime's "simple" rounding
        up = np.full(ratio.shape, scale < 1)
    elif nearest_mode == "round_prefer_floor":
        up = ratio > 0.5
    elif nearest_mode == "round_prefer_ceil":
        up = ratio >= 0.5
    elif nearest_mode == "floor":
        up = np.zeros(ratio.shape, bool)
    elif nearest_mode == "ceil":
        up = np.ones(ratio.shape, bool)
    else:
        raise ValueError(f"nearest_mode {nearest_mode!r}")
    return (up | (ratio == 1.0)).astype(np.int64)


def _window(x, n: int):
    """The reference's n nearest taps of each x over an edge-padded copy, in closed form.

    The window is placed from ``x + pad`` (rounded), as the reference does, not from x itself:
    where the two disagree by an ulp the reference's choice is kept.
    """
    pad = (n + 1) // 2
    xp = x + pad
    pp = np.floor(xp)
    frac = xp - pp
    if n % 2 == 0:
        off = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        off = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    return (pp.astype(np.int64) + off)[:, None] + np.arange(n)[None, :] - pad


def _cubic(ratio, a):
    r = ratio[:, None]
    s = np.concatenate([r + 1, r, 1 - r, 2 - r], axis=1)  # distances to the 4 taps
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return np.where(np.arange(4) % 3 == 0, far, near)


def _coeffs(mode: str, ratio, scale: float, cubic_a: float, antialias: bool):
    """(out, taps) weights for ratio in (0, 1] (1 at an exact input position), as the reference."""
    if not antialias:
        if mode == "linear":
            return np.stack([1 - ratio, ratio], axis=1)
        return _cubic(ratio, cubic_a)
    s = min(scale, 1.0)
    if mode == "linear":
        start = int(math.floor(-1 / s) + 1)
        args = (np.arange(start, 2 - start)[None, :] - ratio[:, None]) * s
        c = np.clip(1 - np.abs(args), 0, 1)
    else:
        start = int(math.floor(-2 / s) + 1)
        t = np.abs(s * (np.arange(start, 2 - start)[None, :] - ratio[:, None]))
        a = cubic_a
        c = np.where(t <= 1, (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1,
                     np.where(t < 2, a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a, 0.0))
    return c / c.sum(axis=1, keepdims=True)


def antialias_taps(mode: str, scale: float) -> int:
    """Taps per output of the antialiasing filter (2 or 4 when not downscaling)."""
    s = min(scale, 1.0)
    start = int(math.floor((-1 if mode == "linear" else -2) / s) + 1)
    return 2 - 2 * start


class AxisTable:
    """One axis' taps: ``idx`` (out, K) int64 in [0, in), ``w`` (out, K) float64 or None
    (nearest: K = 1), ``ext`` (out,) bool or None (positions that take the extrapolation value).
    """

    def __init__(self, idx, w, ext, in_w: int):
        self.idx, self.w, self.ext, self.in_w = idx, w, ext, in_w

    @property
    def identity(self) -> bool:
        """Whether the table copies its axis unchanged (so the pass can be skipped)."""
        n = self.idx.shape[0]
        if self.ext is not None or n != self.in_w:
            return False
        rows = np.arange(n)
        if self.w is None:
            return bool((self.idx[:, 0] == rows).all())
        hit = (self.idx == rows[:, None]) & (self.w == 1.0)
        return bool(((self.w == 0.0) | hit).all() and hit.any(axis=1).all())


def axis_table(mode: str, ctm: str, in_w: int, out_w: int, scale: float, *,
               nearest_mode: str = "round_prefer_floor", cubic_a: float = -0.75,
               exclude_outside: bool = False, antialias: bool = False,
               roi=(0.0, 1.0)) -> AxisTable:
    """Taps of one axis resized from ``in_w`` (>= 1) to ``out_w`` (>= 1) at ``scale`` > 0."""
    x, ext = source_coords(ctm, in_w, out_w, scale, roi)
    xi = np.floor(x)
    ratio = np.where(x == xi, 1.0, x - xi)  # the reference prefers the left tap: ratio in (0, 1]
    if mode == "nearest":
        idx = _window(x, 2)[np.arange(out_w), _nearest_pick(ratio, nearest_mode, scale)]
        return AxisTable(np.ascontiguousarray(np.clip(idx, 0, in_w - 1)[:, None]), None, ext,
                         in_w)
    w = _coeffs(mode, ratio, scale, cubic_a, antialias)
    idx = _window(x, w.shape[1])
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_w), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    idx = np.ascontiguousarray(np.clip(idx, 0, in_w - 1))
    return AxisTable(idx, np.ascontiguousarray(w), ext, in_w)


# -- kernels -----------------------------------------------------------------------------------
@pjit
def _nearest2d(x, out, hsrc, hstart, wi, wext, fill, double):
    """x (P, H, W) -> out (P, OH, OW).  Output rows hstart[g] .. hstart[g+1]-1 all show input
    row hsrc[g] (-1: the fill value): the first is gathered, the rest copied from it.
    ``double``: wi[j] == j // 2 and OW == 2 W (any 2x upscale), stored pairwise: 2x faster
    than the gather (vectorised interleaved stores)."""
    ow = out.shape[2]
    w_in = x.shape[2]
    g_n = hsrc.shape[0]
    for it in prange(x.shape[0] * g_n):
        p = it // g_n
        g = it - p * g_n
        r0 = hstart[g]
        dst = out[p, r0]
        s = hsrc[g]
        if s < 0:
            dst[:] = fill
        else:
            src = x[p, s]
            if double:
                for w in range(w_in):
                    v = src[w]
                    dst[2 * w] = v
                    dst[2 * w + 1] = v
            else:
                for j in range(ow):
                    dst[j] = src[wi[j]]
            for k in range(wext.shape[0]):
                dst[wext[k]] = fill
        for r in range(r0 + 1, hstart[g + 1]):
            out[p, r, :] = dst


@pjit
def _blend2d(x, out, hidx, hw, hext, widx, ww, wext, w_identity, fill, rows):
    """x (P, H, W) -> out (P, OH, OW): per output row, blend its input rows into a W-long row,
    then blend that row's taps per output column.  Work items: (plane, block of ``rows``)."""
    h_n = hidx.shape[1]
    w_n = widx.shape[1]
    w_in = x.shape[2]
    oh = out.shape[1]
    ow = out.shape[2]
    blocks = (oh + rows - 1) // rows
    for it in prange(x.shape[0] * blocks):
        p = it // blocks
        b = it - p * blocks
        tmp = np.empty(w_in, out.dtype)
        for i in range(b * rows, min(oh, (b + 1) * rows)):
            dst = out[p, i]
            if hext[i]:
                dst[:] = fill
                continue
            row = dst if w_identity else tmp
            s0 = x[p, hidx[i, 0]]
            c0 = hw[i, 0]
            if h_n == 2:
                s1 = x[p, hidx[i, 1]]
                c1 = hw[i, 1]
                for w in range(w_in):
                    row[w] = c0 * s0[w] + c1 * s1[w]
            else:
                for w in range(w_in):
                    row[w] = c0 * s0[w]
                for k in range(1, h_n):
                    sk = x[p, hidx[i, k]]
                    ck = hw[i, k]
                    for w in range(w_in):
                        row[w] += ck * sk[w]
            if w_identity:
                continue
            if w_n == 2:
                for j in range(ow):
                    dst[j] = ww[j, 0] * tmp[widx[j, 0]] + ww[j, 1] * tmp[widx[j, 1]]
            else:
                for j in range(ow):
                    acc = ww[j, 0] * tmp[widx[j, 0]]
                    for k in range(1, w_n):
                        acc += ww[j, k] * tmp[widx[j, k]]
                    dst[j] = acc
            for k in range(wext.shape[0]):
                dst[wext[k]] = fill


@pjit
def _nearest_axis(x, out, idx, ext, fill):
    """x (O, N, I) -> out (O, M, I) gathering along the middle axis."""
    m_n = out.shape[1]
    for it in prange(x.shape[0] * m_n):
        o = it // m_n
        m = it - o * m_n
        if ext[m]:
            out[o, m, :] = fill
        else:
            out[o, m, :] = x[o, idx[m, 0]]


@pjit
def _blend_axis(x, out, idx, wt, ext, fill):
    """x (O, N, I) -> out (O, M, I) blending ``idx.shape[1]`` taps along the middle axis."""
    m_n = out.shape[1]
    inner = x.shape[2]
    for it in prange(x.shape[0] * m_n):
        o = it // m_n
        m = it - o * m_n
        dst = out[o, m]
        if ext[m]:
            dst[:] = fill
            continue
        src = x[o, idx[m, 0]]
        c = wt[m, 0]
        for i in range(inner):
            dst[i] = c * src[i]
        for k in range(1, idx.shape[1]):
            src = x[o, idx[m, k]]
            c = wt[m, k]
            for i in range(inner):
                dst[i] += c * src[i]


# -- the bound resize --------------------------------------------------------------------------
def _identity_table(n: int, nearest: bool) -> AxisTable:
    return AxisTable(np.arange(n, dtype=np.int64)[:, None], None if nearest else np.ones((n, 1)),
                     None, n)


def _mask(ext, idx):
    """The extrapolation mask as the kernels take it (uint8, one per output position)."""
    return np.zeros(idx.shape[0], np.uint8) if ext is None else ext.astype(np.uint8)


def _row_groups(idx, ext):
    """Runs of equal consecutive source rows: (src per run, -1 = fill; run starts + end)."""
    src = idx[:, 0].copy()
    if ext is not None:
        src[ext] = -1
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    return src[starts].astype(np.int64), np.r_[starts, len(src)].astype(np.int64)


class Resizer:
    """A Resize bound to one input shape: tables per axis, ``resizer(x, out)`` runs it.

    Args:
        in_shape, out_shape: concrete shapes (every resized axis has in >= 1 and out >= 1, or
            the output is empty).
        tables: one :class:`AxisTable` per axis (None: unchanged axis).
        nearest: gather-only tables (any dtype); else blend in ``dtype`` (float32/float64;
            float16 data is blended in float32).
        fill: the extrapolation value.
    """

    def __init__(self, in_shape, out_shape, tables, nearest: bool, dtype, fill: float = 0.0):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.nearest = nearest
        self.dtype = np.dtype(dtype)
        self.work = np.dtype(np.float32) if self.dtype == np.float16 else self.dtype
        r = len(self.in_shape)
        self.empty = 0 in self.out_shape or 0 in self.in_shape  # nothing to compute
        if self.empty:
            return
        tables = [None if t is None or t.identity else t for t in tables]
        self.lead = [(a, t.idx, None if nearest else t.w.astype(self.work), _mask(t.ext, t.idx))
                     for a, t in enumerate(tables[:max(r - 2, 0)]) if t is not None]
        self.last = tables[max(r - 2, 0):] if r >= 2 else [None] + tables
        if nearest:
            self.bits = np.dtype(_UINT[self.dtype.itemsize])
            if self.dtype.kind in "iu":  # saturate, as onnx's reference casts its float result
                info = np.iinfo(self.dtype)
                fill = min(max(float(np.nan_to_num(fill)), info.min), info.max)
            self.fill = np.array(fill).astype(self.dtype).view(self.bits)[()]
        else:
            self.fill = self.work.type(fill)
        self._bind_last()

    def _bind_last(self):
        th, tw = self.last
        self.has_last = th is not None or tw is not None
        if not self.has_last:
            return
        h_out = self.out_shape[-2] if len(self.out_shape) >= 2 else 1
        h_in = self.in_shape[-2] if len(self.in_shape) >= 2 else 1
        if th is None:
            th = _identity_table(h_in, self.nearest)
        self.w_identity = tw is None
        if tw is None:
            tw = _identity_table(self.in_shape[-1], self.nearest)
        self.wi = np.ascontiguousarray(tw.idx[:, 0]) if self.nearest else tw.idx
        self.wext = np.flatnonzero(tw.ext) if tw.ext is not None else np.zeros(0, np.int64)
        self.wext = self.wext.astype(np.int64)
        if self.nearest:
            self.hsrc, self.hstart = _row_groups(th.idx, th.ext)
            w_in = self.in_shape[-1]
            self.double = bool(len(self.wi) == 2 * w_in and
                               (self.wi == np.arange(2 * w_in) // 2).all())
            return
        self.hidx, self.widx = th.idx, tw.idx
        self.hw, self.ww = th.w.astype(self.work), tw.w.astype(self.work)
        self.hext = _mask(th.ext, th.idx)
        planes = math.prod(self.out_shape[:-2])
        self.rows = max(1, min(h_out, -(-h_out * planes // ROW_ITEMS)))

    def _pass(self, a, idx, w, ext, x, out):
        o, n, i = math.prod(x.shape[:a]), x.shape[a], math.prod(x.shape[a + 1:])
        x3, o3 = x.reshape(o, n, i), out.reshape(o, out.shape[a], i)
        if self.nearest:
            _nearest_axis(x3, o3, idx, ext, self.fill)
        else:
            _blend_axis(x3, o3, idx, w, ext, self.fill)

    def _last2(self, x, out):
        h, w = x.shape[-2] if x.ndim >= 2 else 1, x.shape[-1]
        oh, ow = out.shape[-2] if out.ndim >= 2 else 1, out.shape[-1]
        x3, o3 = x.reshape(-1, h, w), out.reshape(-1, oh, ow)
        if self.nearest:
            _nearest2d(x3, o3, self.hsrc, self.hstart, self.wi, self.wext, self.fill,
                       self.double)
        else:
            _blend2d(x3, o3, self.hidx, self.hw, self.hext, self.widx, self.ww, self.wext,
                     self.w_identity, self.fill, self.rows)

    def __call__(self, x, out):
        """Resize ``x`` (C-contiguous, ``in_shape``) into ``out`` (``out_shape``)."""
        if self.empty:
            return
        if self.nearest:
            x, dst = x.view(self.bits), out.view(self.bits)
        elif self.work != self.dtype:
            x, dst = x.astype(self.work), np.empty(out.shape, self.work)
        else:
            dst = out
        if not self.lead and not self.has_last:
            np.copyto(dst, x)
        shape = list(x.shape)
        for k, (a, idx, w, ext) in enumerate(self.lead):
            shape[a] = self.out_shape[a]
            last = k == len(self.lead) - 1 and not self.has_last
            nxt = dst if last else np.empty(shape, x.dtype)
            self._pass(a, idx, w, ext, x, nxt)
            x = nxt
        if self.has_last:
            self._last2(x, dst)
        if dst is not out and not self.nearest:
            out[...] = dst
