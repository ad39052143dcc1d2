"""Winograd F(2x2, 3x3) convolution for 3x3, stride-1, undilated, ungrouped layers.

Each 2x2 block of output pixels ("tile") is computed from the 4x4 input patch under it as
``Y = A^T [sum_c (G g_c G^T) * (B^T d_c B)] A``: 16 products per input channel instead of 36.

* weights: ``U = G g G^T`` computed once in float64, packed per block of 16*B output channels
  and per transform position xi as ``up[blk*16 + xi, c, k]`` (so one block's weights are one
  contiguous run);
* input transform (``_wino_input``): ``V[xi, c, tile] = (B^T d B)[xi]``, tiles numbered
  row-major over (image, tile row, tile column); borders read as zeros;
* per (block of output channels, run of T consecutive tiles): 16 small GEMMs with the direct
  kernel's register-tiled microkernel (``_microkernel``: T tiles x 16*B channels, over c) into a
  stack buffer, then the output transform, bias, residual and activation, stored into NCHW.
  The last run is shifted back to end at the last tile: it recomputes a few tiles bit for bit.

With many tiles (batched small maps, VGG-16's 56x56 layers) the three steps run fused instead,
one group of tiles at a time per thread (``plan_groups``, ``_wino_fused``): the group's
transformed input and products stay in L2 and the layer is one parallel region, not three.

Every output is computed by exactly one work item with a fixed summation order, so results do
not depend on the number of threads or on scheduling.
"""

import threading

import numba
import numpy as np
from numba import prange

from ...activations import NONE
from .._alloc import mapped_empty, mapped_zeros
from .._jit import FAST, njit, pjit
from ._base import ConvAlgorithm, packed
from ._epilogue import _row_epilogue
from ._ir import VEC
from ._microkernel import PRODUCT_SHAPES, _choose_shape, tile_kernel
from ._schedule import _claim_end, _side, work_split

_FM = set(FAST)
_U = np.uint64
NXI = 16  # transform positions of F(2x2, 3x3)
# Bytes of transformed input + products per chunk of images; larger batches go in chunks.  A
# chunk near L2 matters: at batch 64 on 16x16x128 maps, 32 MiB chunks ran 1.5-1.9x slower than
# 4-8 MiB ones (single thread, CPU time).  Each chunk costs 3 parallel regions, so not smaller.
# One image above the budget still makes a chunk of one (VGG-16's 56x56 and 28x28 at batch 1).
V_BUDGET = 8 << 20

# The microkernel shapes the products use: a few, not the direct kernel's fourteen, since every
# shape is compiled into each caller (unfused and fused) and compile time is cold-start time.
# Tiles run over all of a layer's (or a group's) tiles, so long runs almost always fit.
WINO_SHAPES = PRODUCT_SHAPES


_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def pack_weights(w, bias, wd, dtype):
    """``(up, zero_bias, bias)``: ``up[blk*16 + xi, c, k] = (G w[blk*wd+k, c] G^T)[xi]``."""
    m_all, c_n = w.shape[:2]
    u = np.einsum("ai,mcij,bj->abmc", _G, np.asarray(w, np.float64), _G).reshape(NXI, m_all, c_n)
    nb = -(-m_all // wd)
    up = np.zeros((nb, NXI, c_n, wd), dtype=dtype)
    for bl in range(nb):
        j = min(wd, m_all - bl * wd)
        up[bl, :, :, :j] = u[:, bl * wd: bl * wd + j, :].transpose(0, 2, 1)
    return up.reshape(nb * NXI, c_n, wd), np.zeros((nb * NXI, wd), dtype=dtype), nb


# The input transform as single-stream steps ``dst[d + k] = src[a + k] + s * src[b + k]``
# (s = +-1: exact, a fused multiply-add of +-1 rounds once, like the plain sum).  Offsets are in
# units of the row length rl (``+1`` = one element), as (d, a, b, s) with a, b, d = (rows, elems).
# Rows: e_a = (B^T d)_a, kept split by column parity (even at 2*a*rl, odd at (2*a+1)*rl).
_ROW_STEPS = np.array([(2 * a + p, 2 * i + p, 2 * j + p, s) for p in range(2)
                       for a, i, j, s in ((0, 0, 2, -1), (1, 1, 2, 1), (2, 2, 1, -1),
                                          (3, 1, 3, -1))], dtype=np.int64)
# Columns: (B^T d) B; column j of tile k is E[k], O[k], E[k+1], O[k+1]:
# xi = 4a+0: E[k] - E[k+1]; 4a+1: O[k] + E[k+1]; 4a+2: E[k+1] - O[k]; 4a+3: O[k] - O[k+1].
# As (xi, row a, elem a, row b, elem b, s) with rows 2a (E) / 2a+1 (O).
_COL_STEPS = np.array([r for a in range(4) for r in (
    (4 * a, 2 * a, 0, 2 * a, 1, -1), (4 * a + 1, 2 * a + 1, 0, 2 * a, 1, 1),
    (4 * a + 2, 2 * a, 1, 2 * a + 1, 0, -1), (4 * a + 3, 2 * a + 1, 0, 2 * a + 1, 1, -1))],
    dtype=np.int64)


@njit(fastmath=_FM)
def _transform_seg(rows, rl, ev, v, o, cs, cnt, rsteps, csteps):
    """Input transform of ``cnt`` consecutive tiles of one tile row.

    ``rows`` holds the 4 input rows under them, zero-padded and split by column parity: row i's
    even columns at ``2*i*rl``, odd columns at ``(2*i+1)*rl`` (rl >= cnt+1).  The results go to
    ``v[o + xi*cs + k]``.  Table-driven single-stream loops: they vectorise, and compile once.
    """
    h = _U(rl)
    for e in range(rsteps.shape[0]):
        d = _U(rsteps[e, 0]) * h
        a = _U(rsteps[e, 1]) * h
        b = _U(rsteps[e, 2]) * h
        sg = ev.dtype.type(rsteps[e, 3])
        for k in range(cnt + 1):
            ev[d + _U(k)] = rows[a + _U(k)] + sg * rows[b + _U(k)]
    for e in range(csteps.shape[0]):
        d = o + _U(csteps[e, 0]) * cs
        a = _U(csteps[e, 1]) * h + _U(csteps[e, 2])
        b = _U(csteps[e, 3]) * h + _U(csteps[e, 4])
        sg = ev.dtype.type(csteps[e, 5])
        for k in range(cnt):
            v[d + _U(k)] = ev[a + _U(k)] + sg * ev[b + _U(k)]


@pjit(fastmath=_FM)
def _wino_input(x, v, n_img, c_n, h_n, w_n, pt, pl, th_n, tw_n, vst, cs, rsteps, csteps, nthr,
                grain):
    """``v[xi*cs + c*vst + (n*th_n + th)*tw_n + tw] = (B^T d B)[xi]`` for the 4x4 patch d at
    padded (2*th, 2*tw) of plane (n, c) of flat NCHW ``x`` (outside the image reads 0).
    Work items are planes, claimed dynamically (see ``_wino_gemm``); each tile row is
    transformed as a whole (long vector loops)."""
    rl = tw_n + 1
    total = n_img * c_n
    ctr = np.zeros(1, dtype=np.int64)
    g = abs(grain)
    for t in prange(nthr):
        rows = np.zeros(8 * rl, dtype=v.dtype)  # every element is rewritten per tile row
        ev = np.empty(8 * rl, dtype=v.dtype)
        side = _side(t, nthr, grain)
        done = 0
        while True:
            u0, u1 = _claim_end(ctr, total, g, side, done)
            if u1 <= u0:
                break
            done += u1 - u0
            for u in range(u0, u1):
                _wino_plane(x, v, u, c_n, h_n, w_n, pt, pl, th_n, tw_n, vst, cs, rsteps,
                            csteps, rows, ev)


@njit(fastmath=_FM)
def _wino_plane(x, v, u, c_n, h_n, w_n, pt, pl, th_n, tw_n, vst, cs, rsteps, csteps, rows, ev):
    """``_wino_input`` for plane u = n*c_n + c."""
    rl = tw_n + 1
    n = u // c_n
    c = u - n * c_n
    for th in range(th_n):
        for i in range(4):
            h = 2 * th + i - pt
            re = _U(2 * i * rl)
            ro = re + _U(rl)
            if 0 <= h < h_n:
                src = (u * h_n + h) * w_n - pl
                for q in range(rl):  # even padded columns 2q, odd 2q+1
                    w = 2 * q - pl
                    rows[re + _U(q)] = x[src + 2 * q] if 0 <= w < w_n else 0
                    rows[ro + _U(q)] = x[src + 2 * q + 1] if 0 <= w + 1 < w_n else 0
            else:
                for q in range(2 * rl):
                    rows[re + _U(q)] = 0
        _transform_seg(rows, rl, ev, v, _U(c * vst + (n * th_n + th) * tw_n), _U(cs), tw_n,
                       rsteps, csteps)


@njit(fastmath=_FM)
def _wino_store(buf, b0, xs, nt, wd, t0, skip, jv, m0, bias, out, res, has_res, act, prm, tpi,
                tw_n, m_all, oh_n, ow_n, yb):
    """Output transform of ``buf[b0 + xi*xs + t*wd + k]`` (tile t0+t, channel m0+k), then bias,
    residual, activation, stored into flat NCHW ``out``; pixels past the image are dropped.

    The first ``skip`` tiles (the shifted-back last run's overlap with the run before it) are
    not stored: the other task owns them, and the store is a read-modify-write (bias, then
    residual and activation in place), so two tasks writing one pixel would race.

    The transform is vectorised over channels into ``yb[k*4*nt + i*2*nt + 2*t + j]`` (output
    pixel (i, j) of tile t); the stores then run along output rows."""
    n2 = 2 * nt
    for t in range(nt):
        tb = b0 + _U(t * wd)
        yo = _U(2 * t)
        for k in range(wd):  # vectorised over the channels of the tile
            i = tb + _U(k)
            s00 = buf[i] + buf[4 * xs + i] + buf[8 * xs + i]
            s01 = buf[xs + i] + buf[5 * xs + i] + buf[9 * xs + i]
            s02 = buf[2 * xs + i] + buf[6 * xs + i] + buf[10 * xs + i]
            s03 = buf[3 * xs + i] + buf[7 * xs + i] + buf[11 * xs + i]
            s10 = buf[4 * xs + i] - buf[8 * xs + i] - buf[12 * xs + i]
            s11 = buf[5 * xs + i] - buf[9 * xs + i] - buf[13 * xs + i]
            s12 = buf[6 * xs + i] - buf[10 * xs + i] - buf[14 * xs + i]
            s13 = buf[7 * xs + i] - buf[11 * xs + i] - buf[15 * xs + i]
            y = _U(k * 2 * n2) + yo
            yb[y] = s00 + s01 + s02
            yb[y + 1] = s01 - s02 - s03
            yb[y + _U(n2)] = s10 + s11 + s12
            yb[y + _U(n2 + 1)] = s11 - s12 - s13
    t = skip
    while t < nt:  # segments of the run lying in one tile row
        tile = t0 + t
        n = tile // tpi
        r = tile - n * tpi
        th = r // tw_n
        tw = r - th * tw_n
        cnt = min(nt - t, tw_n - tw)
        oh = 2 * th
        ow = 2 * tw
        wl = min(2 * cnt, ow_n - ow)
        nrow = min(2, oh_n - oh)
        for k in range(jv):
            m = m0 + k
            bv = bias[m]
            for i in range(nrow):
                o = _U(((n * m_all + m) * oh_n + oh + i) * ow_n + ow)
                y = _U(k * 2 * n2 + i * n2 + 2 * t)
                for q in range(wl):
                    out[o + _U(q)] = yb[y + _U(q)] + bv
                if has_res or act != NONE:
                    _row_epilogue(out, o, _U(wl), res, has_res, act, prm)
        t += cnt


@pjit(fastmath=_FM)
def _wino_gemm(v, offs, up, zb, mb, nb_, nt, nb, nrun, ntiles, cs, nthr, grain):
    """The 16 products, one per transform position xi: work items (xi, block of 16*nb_
    output channels, run of nt tiles), xi outermost so one xi's transformed input and weights
    stay in cache, claimed ``grain`` at a time by ``nthr`` workers (``_schedule``, as the
    direct kernel's): ``mb[((xi*nb + blk)*nrun + run)*nt*wd + t*wd + k]``.  The last run is
    shifted back to end at the last tile."""
    wd = nb_ * VEC
    sz = nt * wd
    per = nb * nrun
    total = NXI * per
    ctr = np.zeros(1, dtype=np.int64)
    for t in prange(nthr):
        _gemm_worker(ctr, abs(grain), total, v, offs, up, zb, mb, nb_, nt, nrun, ntiles, cs,
                     per, sz, _side(t, nthr, grain))


@njit(fastmath=_FM)
def _gemm_worker(ctr, grain, total, v, offs, up, zb, mb, nb_, nt, nrun, ntiles, cs, per, sz,
                 side):
    """One worker of ``_wino_gemm`` (outside the prange: shorter compile)."""
    done = 0
    while True:
        u0, u1 = _claim_end(ctr, total, grain, side, done)
        if u1 <= u0:
            break
        done += u1 - u0
        for u in range(u0, u1):
            xi = u // per
            r = u - xi * per
            blk = r // nrun
            ri = r - blk * nrun
            t0 = min(ri * nt, ntiles - nt)
            tile_kernel(v, _U(xi * cs + t0), offs, up, blk * NXI + xi, zb, mb[_U(u * sz):],
                         nb_, nt)


@pjit(fastmath=_FM)
def _wino_out(mb, bias, out, res, has_res, act, prm, nb_, nt, nb, nrun, m_all, ntiles, tpi,
              tw_n, oh_n, ow_n, nthr, grain):
    """Output transform and epilogue; work items (block of output channels, run of tiles),
    claimed dynamically (see ``_wino_gemm``)."""
    wd = nb_ * VEC
    sz = nt * wd
    xs = _U(nb * nrun * sz)
    total = nb * nrun
    ctr = np.zeros(1, dtype=np.int64)
    g = abs(grain)
    for t in prange(nthr):
        yb = np.empty(4 * nt * wd, dtype=mb.dtype)
        side = _side(t, nthr, grain)
        done = 0
        while True:
            u0, u1 = _claim_end(ctr, total, g, side, done)
            if u1 <= u0:
                break
            done += u1 - u0
            for u in range(u0, u1):
                blk = u // nrun
                ri = u - blk * nrun
                m0 = blk * wd
                t0 = min(ri * nt, ntiles - nt)
                _wino_store(mb, _U(u * sz), xs, nt, wd, t0, ri * nt - t0, min(wd, m_all - m0),
                            m0, bias, out, res, has_res, act, prm, tpi, tw_n, m_all, oh_n, ow_n,
                            yb)


# ---- fused: one pass per group of tiles -----------------------------------------------------
# With many tiles (batched small maps), a work item is a group of G consecutive tiles: its input
# transform, its 16 products for every block of output channels and its output transform run
# back to back on one thread, in per-thread buffers that stay in L2 (``G_BYTES`` of transformed
# input), and the layer is one parallel region instead of three.  The unfused path above writes
# the whole transformed input and all products to memory first.
G_BYTES = 1 << 20
FUSED_MIN_GROUPS = 8  # groups per layer below which the unfused path (finer split) is kept
# Every group reads all transformed weights (16*C*M values).  Per tile of the group, up to this
# many bytes: VGG-16's 56x56x256 (75 KB per tile) ran 18-22 % faster fused than unfused, its
# 28x28x512 (600 KB per tile) 7-20 % slower.
FUSED_MAX_U_PER_TILE = 128 << 10


def plan_groups(n_img, c_n, m_all, tpi, tw_n, nt, itemsize):
    """``(group size G, fused?)`` for a layer: G is whole tile rows (possibly across images),
    at least one run of nt tiles, with at most ``G_BYTES`` of transformed input if possible."""
    ntiles = n_img * tpi
    rows = max(1, G_BYTES // (NXI * c_n * itemsize)) // tw_n
    rows = max(rows, -(-nt // tw_n))
    gsz = min(rows, ntiles // tw_n) * tw_n
    fused = (gsz >= nt and -(-ntiles // gsz) >= FUSED_MIN_GROUPS
             and NXI * c_n * m_all * itemsize <= FUSED_MAX_U_PER_TILE * gsz)
    return gsz, fused


@njit(fastmath=_FM)
def _input_rows(x, vl, tr0, ntr, gsz, c_n, h_n, w_n, pt, pl, th_n, tw_n, pe, po, eb):
    """Input transform of the tile rows tr0 .. tr0+ntr-1 (numbered over (image, tile row)):
    ``vl[xi*c_n*gsz + c*gsz + (tr - tr0)*tw_n + tw] = (B^T d B)[xi]``.  Per tile row, its 4
    zero-padded input rows are split by column parity into ``pe``/``po`` (4 x (tw_n+1); the
    border columns are never written, so they stay zero), then B^T d over rows into ``eb`` and
    d B over columns into ``vl``: unit-stride loops with no per-element tests."""
    rl = tw_n + 1
    cs = c_n * gsz
    qe0 = (pl + 1) // 2  # first q with 0 <= 2q - pl (even padded column 2q)
    qe1 = min(rl, (w_n + pl + 1) // 2)  # 2q - pl < w_n
    qo0 = pl // 2  # 0 <= 2q + 1 - pl
    qo1 = min(rl, (w_n + pl) // 2)  # 2q + 1 - pl < w_n
    for c in range(c_n):
        for tr in range(tr0, tr0 + ntr):
            n = tr // th_n
            th = tr - n * th_n
            plane = (n * c_n + c) * h_n * w_n
            for i in range(4):
                h = 2 * th + i - pt
                d = i * rl
                if 0 <= h < h_n:
                    src = plane + h * w_n - pl
                    for q in range(qe0, qe1):
                        pe[d + q] = x[src + 2 * q]
                    for q in range(qo0, qo1):
                        po[d + q] = x[src + 2 * q + 1]
                else:
                    for q in range(rl):
                        pe[d + q] = 0
                        po[d + q] = 0
            for q in range(rl):  # B^T d: rows; eb = (a, parity, q)
                eb[q] = pe[q] - pe[2 * rl + q]
                eb[rl + q] = po[q] - po[2 * rl + q]
                eb[2 * rl + q] = pe[rl + q] + pe[2 * rl + q]
                eb[3 * rl + q] = po[rl + q] + po[2 * rl + q]
                eb[4 * rl + q] = pe[2 * rl + q] - pe[rl + q]
                eb[5 * rl + q] = po[2 * rl + q] - po[rl + q]
                eb[6 * rl + q] = pe[rl + q] - pe[3 * rl + q]
                eb[7 * rl + q] = po[rl + q] - po[3 * rl + q]
            o = c * gsz + (tr - tr0) * tw_n
            for a in range(4):  # (B^T d) B: columns, one tile per k
                e = 2 * a * rl
                f = e + rl
                d0 = 4 * a * cs + o
                for k in range(tw_n):
                    vl[d0 + k] = eb[e + k] - eb[e + k + 1]
                    vl[d0 + cs + k] = eb[f + k] + eb[e + k + 1]
                    vl[d0 + 2 * cs + k] = eb[e + k + 1] - eb[f + k]
                    vl[d0 + 3 * cs + k] = eb[f + k] - eb[f + k + 1]


@pjit(fastmath=_FM)
def _wino_fused(x, out, res, has_res, act, prm, up, zb, bias, offs, scr, geo, nthr, grain):
    """Groups of tiles claimed one at a time by ``nthr`` workers; ``scr[worker]`` holds the
    worker's buffers.  ``geo`` (int64) = C, H, W, pt, pl, tiles per image, tile columns, all
    tiles, group size G, M, channel blocks, nb_, nt, oh, ow.  Only the sign of ``grain``
    counts (``_schedule.work_split``)."""
    ctr = np.zeros(1, dtype=np.int64)
    for wk in prange(nthr):
        _fused_worker(ctr, x, out, res, has_res, act, prm, up, zb, bias, offs, scr[wk], geo,
                      _side(wk, nthr, grain))


@njit(fastmath=_FM)
def _fused_worker(ctr, x, out, res, has_res, act, prm, up, zb, bias, offs, buf, geo, side):
    """One worker of ``_wino_fused``: per group (whole tile rows), the input transform, the 16
    products and the output transform of each block of output channels."""
    c_n, h_n, w_n, pt, pl, tpi, tw_n, ntiles, gsz, m_all, nb, nb_, nt, oh_n, ow_n = (
        geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo[10],
        geo[11], geo[12], geo[13], geo[14])
    wd = nb_ * VEC
    nv = NXI * c_n * gsz
    nm = NXI * gsz * wd
    vl = buf[:nv]
    ml = buf[nv:nv + nm]
    yb = buf[nv + nm:nv + nm + 4 * gsz * wd]
    rl = tw_n + 1
    e0 = nv + nm + 4 * gsz * wd
    pe = buf[e0:e0 + 4 * rl]
    po = buf[e0 + 4 * rl:e0 + 8 * rl]
    eb = buf[e0 + 8 * rl:e0 + 16 * rl]
    ngroups = (ntiles + gsz - 1) // gsz
    nrun = (gsz + nt - 1) // nt
    done = 0
    while True:
        gi, g1 = _claim_end(ctr, ngroups, 1, side, done)
        if g1 <= gi:
            break
        done += 1
        g0 = gi * gsz
        cnt = min(gsz, ntiles - g0)  # a short last group leaves stale columns: never stored
        _input_rows(x, vl, g0 // tw_n, cnt // tw_n, gsz, c_n, h_n, w_n, pt, pl, tpi // tw_n,
                    tw_n, pe, po, eb)
        for blk in range(nb):
            for xi in range(NXI):
                for ri in range(nrun):
                    t0 = min(ri * nt, gsz - nt)
                    tile_kernel(vl, _U(xi * c_n * gsz + t0), offs, up, blk * NXI + xi, zb,
                                 ml[_U((xi * gsz + t0) * wd):], nb_, nt)
            m0 = blk * wd
            _wino_store(ml, _U(0), _U(gsz * wd), cnt, wd, g0, np.int64(0), min(wd, m_all - m0), m0,
                        bias, out, res, has_res, act, prm, tpi, tw_n, m_all, oh_n, ow_n, yb)


class Winograd:
    """The F(2x2, 3x3) engine of ``WinogradConv`` (3x3, stride 1, dilation 1, group 1)."""

    def __init__(self, w, bias, in_shape, pads, shape, dtype):
        n_img, c_n, h_n, w_n = in_shape
        pt, pl, pb, pr = pads
        self.oh = h_n + pt + pb - 2
        self.ow = w_n + pl + pr - 2
        self.th = -(-self.oh // 2)
        self.tw = -(-self.ow // 2)
        self.tpi = self.th * self.tw
        self.in_shape, self.pads, self.dtype = in_shape, pads, dtype
        self.m_all = w.shape[0]
        self.nb_, self.nt = shape
        self.up, self.zb, self.nb = packed("winograd", (self.nb_ * VEC,),
                                           lambda: pack_weights(w, bias, self.nb_ * VEC, dtype))
        self.bias = np.asarray(bias, dtype=dtype)
        wd = self.nb_ * VEC
        per_img = NXI * (c_n + self.nb * wd) * self.tpi * dtype.itemsize
        self.chunk = max(1, min(n_img, V_BUDGET // per_img))
        self.nrun = -(-self.chunk * self.tpi // self.nt)
        vst = self.chunk * self.tpi
        if (vst * dtype.itemsize) % 1024 == 0:  # avoid cache-set aliasing across channels
            vst += 64 // dtype.itemsize
        self.vst = vst
        self.cs = c_n * vst
        self.vsize = NXI * self.cs
        self.msize = self.nrun * NXI * self.nb * self.nt * wd
        self.offs = np.arange(c_n, dtype=np.uint64) * np.uint64(vst)
        # fused path: groups of G tiles whose transformed input fits G_BYTES
        ntiles = n_img * self.tpi
        self.gsz, self.fused = plan_groups(n_img, c_n, self.m_all, self.tpi, self.tw, self.nt,
                                           dtype.itemsize)
        self.buf_len = (NXI * c_n * self.gsz + NXI * self.gsz * wd + 4 * self.gsz * wd
                        + 16 * (self.tw + 1))
        self.offs_g = np.arange(c_n, dtype=np.uint64) * np.uint64(self.gsz)
        self.geo = np.array([c_n, h_n, w_n, pt, pl, self.tpi, self.tw, ntiles, self.gsz,
                             self.m_all, self.nb, self.nb_, self.nt, self.oh, self.ow],
                            dtype=np.int64)

    def scratch_bytes(self):
        if self.fused:
            return numba.config.NUMBA_NUM_THREADS * self.buf_len * self.dtype.itemsize
        return (self.vsize + self.msize) * self.dtype.itemsize

    def __call__(self, x, out, residual, act, prm, tls):
        n_img, c_n, h_n, w_n = self.in_shape
        if self.fused:
            scr = getattr(tls, "wf", None)
            if scr is None:  # zeros: a short last group leaves columns it never transforms
                scr = tls.wf = mapped_zeros(numba.config.NUMBA_NUM_THREADS * self.buf_len,
                                            self.dtype).reshape(-1, self.buf_len)
            has_res = residual is not None
            res = residual.reshape(-1) if has_res else out.reshape(-1)[:1]
            ngroups = -(-self.geo[7] // self.gsz)
            nthr, grain = work_split(ngroups)
            _wino_fused(x.reshape(-1), out.reshape(-1), res, has_res, act, prm, self.up,
                        self.zb, self.bias, self.offs_g, scr, self.geo, min(nthr, ngroups),
                        grain)
            return
        v = _shared(0, self.vsize, self.dtype)
        mb = _shared(1, self.msize, self.dtype)
        pt, pl = self.pads[0], self.pads[1]
        has_res = residual is not None
        for n0 in range(0, n_img, self.chunk):
            k = min(self.chunk, n_img - n0)
            ntiles = k * self.tpi
            nrun = -(-ntiles // self.nt)
            xf = x[n0:n0 + k].reshape(-1)
            of = out[n0:n0 + k].reshape(-1)
            res = residual[n0:n0 + k].reshape(-1) if has_res else of[:1]
            nthr, grain = work_split(k * c_n)
            _wino_input(xf, v, k, c_n, h_n, w_n, pt, pl, self.th, self.tw, self.vst, self.cs,
                        _ROW_STEPS, _COL_STEPS, nthr, grain)
            nthr, grain = work_split(NXI * self.nb * nrun)
            _wino_gemm(v, self.offs, self.up, self.zb, mb, self.nb_, self.nt, self.nb, nrun,
                       ntiles, self.cs, nthr, grain)
            nthr, grain = work_split(self.nb * nrun)
            _wino_out(mb, self.bias, of, res, has_res, act, prm, self.nb_, self.nt, self.nb, nrun,
                      self.m_all, ntiles, self.tpi, self.tw, self.oh, self.ow, nthr, grain)


_SHARED = threading.local()


def _shared(which, n, dtype):
    """``n`` elements of this thread's transform buffer ``which`` (0: V, 1: M), shared by every
    unfused Winograd layer of every plan: they were per layer (tens of MB per batch size on
    VGG-16), and each call rewrites what it reads, as the ``np.empty`` they were already was."""
    key = f"{which}{np.dtype(dtype).char}"
    buf = getattr(_SHARED, key, None)
    if buf is None or buf.shape[0] < n:
        buf = None  # the old one goes first
        setattr(_SHARED, key, None)
        buf = mapped_empty(n, dtype)
        setattr(_SHARED, key, buf)
    return buf[:n]


def use_winograd(in_shape, w_shape, strides, dilations, group):
    """Whether a layer runs as Winograd F(2x2, 3x3): a function of the shapes only, so the
    choice (and hence the result, bit for bit) is the same on every run."""
    _, c_n, h_n, w_n = in_shape
    m_all, _, kh, kw = w_shape
    return (kh == kw == 3 and tuple(strides) == (1, 1) and tuple(dilations) == (1, 1)
            and group == 1 and c_n >= WINO_MIN_C and m_all >= WINO_MIN_M
            and min(h_n, w_n) >= 4 and h_n * w_n <= WINO_MAX_HW
            and 4 * -(-h_n // 2) * -(-w_n // 2) <= WINO_MAX_WASTE * h_n * w_n
            and c_n * -(-w_n // 2) >= WINO_MIN_C_TW)


# Measured on VGG-16 layers (benchmarks/conv_layers.py --algo direct|winograd): Winograd wins
# from 128 input channels on 56x56 and smaller maps; on the 112x112 / 224x224 maps its
# transforms (memory-bound) cost more than the multiplies it saves.
WINO_MIN_C, WINO_MIN_M, WINO_MAX_HW = 128, 32, 56 * 56
# Odd small maps compute whole 2x2 tiles past the edge: 7x7 computes 8x8 (1.31x the outputs),
# which measured 10-20 % slower than direct on ResNet-18's 7x7 512-channel layers (1 thread,
# CPU time); 13x13 (1.16x) and even sizes stay Winograd.
WINO_MAX_WASTE = 1.2
# Input channels x tiles per row.  With 2 threads, interleaved in one process (2026-11-27),
# direct was 9-16 % faster than Winograd on ResNet-18's 28x28x128 (1792) and tied on 14x14x256
# (1792); VGG-16's layers (3584 and up) gain 5-37 % from Winograd.  At batch 64 the direct
# kernel with unrolled taps beat even the fused Winograd path on small VGG's 16x16x128 (17.4 vs
# 20.3 ms) and 8x8x128->256 (8.7 vs 9.3 ms) layers and came within 4 % on 8x8x256 (1024).
WINO_MIN_C_TW = 2048


class WinogradConv(ConvAlgorithm):
    """The Winograd engine bound to a layer (``_wino``), with its per-thread buffers."""

    name = "winograd"
    packs_weights = True  # only through ``packed`` (see ConvAlgorithm)

    @classmethod
    def accepts(cls, layer, cpu) -> bool:
        return use_winograd(layer.in_shape, (layer.m_all, layer.cg, layer.kh, layer.kw),
                            layer.strides, layer.dilations, layer.group)

    def __init__(self, layer, w, bias):
        super().__init__(layer, w, bias)
        assert (layer.kh == layer.kw == 3 and layer.sh == layer.sw == layer.dh == layer.dw == 1
                and layer.group == 1)
        tpi = -(-layer.oh_n // 2) * -(-layer.ow_n // 2)
        self._wino = Winograd(w, bias, self.in_shape, layer.pads,
                              _choose_shape(layer.m_all, tpi, self.dtype, WINO_SHAPES),
                              self.dtype)
        self._tls = threading.local()

    def scratch_bytes(self) -> int:
        return self._wino.scratch_bytes()

    def __call__(self, x, out, residual=None):
        self._wino(x, out, residual, self.act, self._prm, self._tls)
        return out
