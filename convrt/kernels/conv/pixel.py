"""Convolution vectorised along output pixels: 1x1 layers and layers with few input channels.

``select`` runs a layer here when its reduction (input channels x taps) is short.  In NCHW,
output row y of channel m is ``sum_r W[m, r] * X[r, y, :]`` with the pixels
contiguous; the direct kernel (``direct.py``) vectorises over output channels instead and has to
transpose every tile back to NCHW, which on a short reduction (MobileNetV2's expansions read
16-24 channels, a first layer 3 x 3 x 3 taps) costs as much as the multiply-adds.  Here the
microkernel ``_px_sums`` keeps MR output channels x NV vectors of 16 pixels in registers: per
tap r it loads NV vectors of pixels, broadcasts MR weights (packed at construction, MR
contiguous values per tap) and issues MR*NV multiply-adds.  Its sums are already in NCHW
order, so the epilogue (bias, residual, activation) stores straight along pixels.

The input is read through ``_layout.RowInput`` (the zero-bordered, stride-phase-split copy, or
the input itself), with the same tap offsets as the direct kernel: consecutive output pixels read
consecutive elements whatever the stride.  A 1x1 unpadded layer runs as one long row per image;
with a stride its pixels are first gathered (``_layout.gather``) so that it still does.

Work items are (image, output row, pixel tile, block of MR channels), in one of two orders
chosen by the input's size (``PIX_MAJOR_BYTES``), claimed dynamically from an atomic counter as
in the blocked kernel; each item computes the same outputs in the same order whichever thread
runs it (bitwise reproducible).  The last tile of a row is shifted left to end at the row's end
(a few pixels are computed twice, written from the same sums), so a row needs 16+ pixels.
"""

from contextlib import nullcontext

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ...activations import IN_REGISTERS, SIGMOID, SILU, TANH
from .._jit import FAST, njit, pjit
from ._base import packed
from ._epilogue import _store_tile, _zero_border
from ._ir import VEC, VecIR, arrays
from ._layout import RowInput, zero_spare
from ._microkernel import HOST
from ._schedule import _claim_end, _item, _side, work_split

_FM = set(FAST)
_U = np.uint64
# (MR channels, NV vectors of 16 pixels) -> relative speed per multiply-add.  MR*NV sums, NV
# pixel vectors and one broadcast must fit the 32 AVX-512 registers.
SHAPES = {(12, 2): 1.0, (8, 3): 1.0, (6, 4): 0.97, (16, 1): 0.85, (8, 2): 0.9, (8, 1): 0.7,
          (4, 2): 0.6, (4, 1): 0.45}
# CPUs with 16 vector registers of 256 bits (AVX2), where a vector of 16 pixels takes two:
# only NV = 1 fits, and 6 channels (12 registers of sums) beat 4 (8).
SHAPES_256 = {(6, 1): 0.6, (4, 1): 0.45}
_WIDE = HOST.vbits >= 512  # which table the dispatch below compiles (a constant to numba)
TILE_ELEMS = 24 * VEC  # largest MR * NV * 16
EXP_CODES = (SIGMOID, SILU)  # stored through a loop (``_store_looped``), the rest unrolled
# Work order.  When one image's input fits in L2 (2 MiB per core here), a worker walks one
# block of MR output channels along all the pixel tiles: it writes MR long contiguous runs and
# re-reads the input from L2 once per block.  Otherwise it keeps one input tile in L1 and walks
# the channel blocks, which writes M short runs at once.  On MobileNetV2's 112x112 expansion
# (16 -> 96 channels, 4.8 MB written) the first order took 0.48 ms in the model, the second 1.3.
# A reduction longer than the output channels (MobileNetV2's projections, 96..576 -> 24..160)
# also takes the second order: its input is the bigger stream, read once instead of once per
# block (in-process A/B, 2026-11-27: 2-20 % faster with the caches warm, 2-15 % cold).
PIX_MAJOR_BYTES = 2 << 20


def _shapes(dtype, cpu=HOST):
    """Shapes whose registers fit this CPU (AVX2 hosts get the narrow ones)."""
    nvec = max(1, VEC * 8 * dtype.itemsize // cpu.vbits)
    table = SHAPES if cpu.vbits >= 512 else SHAPES_256
    return {(m, v): e for (m, v), e in table.items()
            if (m * v + v) * nvec + 1 <= cpu.nregs or (m, v) == (4, 1)}


def choose_shape(m_all, npix, dtype):
    """The (MR, NV) shape with the least estimated time (padded channels, recomputed pixels)."""
    best, best_cost = None, None
    for (mr, nv), eff in _shapes(np.dtype(dtype)).items():
        px = nv * VEC
        if px > npix:
            continue
        cost = -(-m_all // mr) * mr * -(-npix // px) * px / eff
        if best_cost is None or cost < best_cost:
            best, best_cost = (mr, nv), cost
    return best


@intrinsic
def _px_sums(typingctx, xf, xb, offs, wp, blk, bp, tile, mr, nv, out, ob, ohw, res, has_res,
             act, prm, direct, jv):
    """``s[m, p] = bp[blk*MR + m] + sum_r xf[xb + offs[r] + p] * wp[blk, r, m]`` for m < MR,
    p < 16*NV; ``mr``, ``nv`` literals; ``xb``, ``ob``, ``ohw`` uint64; arrays C-contiguous.

    With ``direct`` false the sums go to ``tile[m*16*NV + p]``.  With ``direct`` true they are
    stored from the registers as ``_store_tile`` would store that tile: ``out[ob + m*ohw + p] =
    act(s + res[ob + m*ohw + p])`` for m < ``jv`` (int64, 1..MR: a partial last block of
    channels stores its real rows only) (the residual if ``has_res``), ``act`` one of
    ``activations.IN_REGISTERS`` with ``prm`` = (alpha, lo, hi, 0).  On short reductions (first
    layers, 16-24 channel expansions) the scalar store loop of ``_store_tile`` cost as much as
    the sums: the small VGG's first layer at batch 64 took 8.1 ms on one thread, 3.8 of them in
    the sums."""
    if not (isinstance(mr, types.IntegerLiteral) and isinstance(nv, types.IntegerLiteral)):
        return None
    n_m, n_v = mr.literal_value, nv.literal_value
    sig = types.void(xf, xb, offs, wp, blk, bp, tile, mr, nv, out, ob, ohw, res, has_res, act,
                     prm, direct, jv)

    def codegen(context, builder, signature, args):
        aty = signature.args
        v = VecIR(context, builder, aty[0].dtype)
        c64 = v.c64
        xa, oa, wa, ba, ta, outa, ra, pa = arrays(context, builder, aty, args,
                                                  (0, 2, 3, 5, 6, 9, 12, 15))
        xb = context.cast(builder, args[1], aty[1], types.uint64)
        blk = context.cast(builder, args[4], aty[4], types.int64)
        nc = builder.extract_value(oa.shape, 0)
        wb = builder.mul(blk, builder.mul(nc, c64(n_m)))
        bbase = builder.mul(blk, c64(n_m))
        inits = [v.splat(builder.load(builder.gep(ba.data, [builder.add(bbase, c64(m))])))
                 for m in range(n_m)]

        def body(c, accs):  # accs[m*n_v + k]
            xo = builder.add(xb, builder.load(builder.gep(oa.data, [c])))
            xvs = [v.vload(xa.data, builder.add(xo, c64(k * VEC))) for k in range(n_v)]
            wo = builder.add(wb, builder.mul(c, c64(n_m)))
            weights = [builder.load(builder.gep(wa.data, [builder.add(wo, c64(m))]))
                       for m in range(n_m)]
            return v.outer_fma(weights, xvs, accs)

        finals = v.accumulate(nc, [inits[i // n_v] for i in range(n_m * n_v)], body, "px")
        ob = context.cast(builder, args[10], aty[10], types.uint64)
        ohw = context.cast(builder, args[11], aty[11], types.uint64)
        has_res = context.cast(builder, args[13], aty[13], types.boolean)
        actv = context.cast(builder, args[14], aty[14], types.int64)
        dirv = context.cast(builder, args[16], aty[16], types.boolean)
        jv = context.cast(builder, args[17], aty[17], types.int64)
        fn = builder.function
        end = fn.append_basic_block("px.end")
        tile_bb = fn.append_basic_block("px.tile")
        direct_bb = fn.append_basic_block("px.direct")
        builder.cbranch(dirv, direct_bb, tile_bb)
        builder.position_at_end(tile_bb)
        for i, fin in enumerate(finals):
            v.vstore(fin, ta.data, c64(i * VEC))
        builder.branch(end)
        builder.position_at_end(direct_bb)
        prm_s = [v.splat(builder.load(builder.gep(pa.data, [c64(i)]))) for i in (0, 1, 2, 3)]
        sw = builder.switch(actv, end)
        for code in IN_REGISTERS:  # a block per activation, then with or without a residual
            case = fn.append_basic_block("px.act%d" % code)
            sw.add_case(ir.Constant(v.i64, code), case)
            with_res = fn.append_basic_block("px.act%d.res" % code)
            plain = fn.append_basic_block("px.act%d.plain" % code)
            builder.position_at_end(case)
            builder.cbranch(has_res, with_res, plain)
            for bb, add_res in ((with_res, True), (plain, False)):
                builder.position_at_end(bb)
                if code in EXP_CODES:
                    _store_looped(v, builder, finals, n_m, n_v, outa, ra, ob, ohw, code, prm_s,
                                  add_res, ta, jv)
                else:
                    _store_direct(v, builder, finals, n_m, n_v, outa, ra, ob, ohw, code, prm_s,
                                  add_res, jv)
                builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


def _store_direct(v, builder, finals, n_m, n_v, outa, ra, ob, ohw, code, prm_s, with_res, jv):
    """The direct stores of ``_px_sums``: row m < ``jv`` of the tile at ``ob + m*ohw`` (a
    partial last block of channels stores its first ``jv`` rows; the rest are padding)."""
    c64 = v.c64
    for m in range(n_m):  # row 0 is always real
        with builder.if_then(builder.icmp_signed("<", c64(m), jv), likely=True) if m else \
                nullcontext():
            row = builder.add(ob, builder.mul(ohw, c64(m)))
            for k in range(n_v):
                at = builder.add(row, c64(k * VEC))
                val = finals[m * n_v + k]
                if with_res:
                    val = builder.fadd(val, v.vload(ra.data, at))
                v.vstore(v.activate(val, code, prm_s), outa.data, at)


def _store_looped(v, builder, finals, n_m, n_v, outa, ra, ob, ohw, code, prm_s, with_res,
                  ta, jv):
    """``_store_direct`` for the activations built on exp (``EXP_CODES``): the sums go to the
    tile (``ta``) and one loop over its vectors stores them, so the exp polynomial is emitted
    once per shape instead of once per vector.  Unrolled, sigmoid and silu were most of the
    kernel's code: ResNet-18's ``run`` compiled in 16 s with them, 8.9 s with this loop (the
    tile's stores and loads stay in L1; the results are the same, in the same order)."""
    c64 = v.c64
    for i, fin in enumerate(finals):
        v.vstore(fin, ta.data, c64(i * VEC))
    nvu = c64(n_v)

    real = builder.mul(jv, nvu)  # the vectors of rows m < jv (m-major order)

    def body(i, _):
        with builder.if_then(builder.icmp_unsigned("<", i, real), likely=True):
            m = builder.udiv(i, nvu)
            at = builder.add(builder.add(ob, builder.mul(ohw, m)),
                             builder.mul(builder.sub(i, builder.mul(m, nvu)), c64(VEC)))
            val = v.vload(ta.data, builder.mul(i, c64(VEC)))
            if with_res:
                val = builder.fadd(val, v.vload(ra.data, at))
            v.vstore(v.activate(val, code, prm_s), outa.data, at)
        return []

    v.accumulate(c64(n_m * n_v), [], body, "px.exp")


@njit
def _px_kernel(xf, xb, offs, wp, blk, bp, tile, mr, nv, out, ob, ohw, res, has_res, act, prm,
               direct, jv):
    """``_px_sums`` for a runtime shape (mr, nv), one of the host's table (``_WIDE``: the
    other table's branches are pruned before they compile)."""
    if not _WIDE:
        if mr == 6 and nv == 1:
            _px_sums(xf, xb, offs, wp, blk, bp, tile, 6, 1, out, ob, ohw, res, has_res, act,
                     prm, direct, jv)
        else:
            _px_sums(xf, xb, offs, wp, blk, bp, tile, 4, 1, out, ob, ohw, res, has_res, act,
                     prm, direct, jv)
    elif mr == 12 and nv == 2:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 12, 2, out, ob, ohw, res, has_res, act, prm,
                 direct, jv)
    elif mr == 8 and nv == 3:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 8, 3, out, ob, ohw, res, has_res, act, prm,
                 direct, jv)
    elif mr == 6 and nv == 4:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 6, 4, out, ob, ohw, res, has_res, act, prm,
                 direct, jv)
    elif mr == 16 and nv == 1:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 16, 1, out, ob, ohw, res, has_res, act, prm,
                 direct, jv)
    elif mr == 8 and nv == 2:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 8, 2, out, ob, ohw, res, has_res, act, prm,
                 direct, jv)
    elif mr == 8 and nv == 1:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 8, 1, out, ob, ohw, res, has_res, act, prm,
                 direct, jv)
    elif mr == 4 and nv == 2:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 4, 2, out, ob, ohw, res, has_res, act, prm,
                 direct, jv)
    else:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 4, 1, out, ob, ohw, res, has_res, act, prm,
                 direct, jv)


@pjit
def run(xf, offs, wp, bp, out, res, has_res, prm, geo, nthr, grain):
    """Work items claimed ``grain`` at a time from a shared counter by ``nthr`` workers.

    ``geo`` (int64) = images, output rows, row length, M, MR, NV, channel blocks, activation,
    pixel-major order (0/1), input image stride, input row step, direct stores allowed (0/1:
    the tests compare both store paths), then the output geometry (``RowInput._ogeo``:
    NCHW, or the next layer's zero-bordered input with its border to write).
    """
    ctr = np.zeros(1, dtype=np.int64)
    for t in prange(nthr):
        _worker(ctr, abs(grain), xf, offs, wp, bp, out, res, has_res, prm, geo,
                _side(t, nthr, grain))


@njit
def _next_item(mb, ti, y, n, nmb, ntl, oh_n, pix_major):
    """The item after (block ``mb``, tile ``ti`` of row ``y``, image ``n``) in ``_worker``'s
    order, as ``_schedule._item`` of the next index gives it."""
    if pix_major:
        mb += 1
        if mb < nmb:
            return mb, ti, y, n
        mb = 0
    ti += 1
    if ti == ntl:
        ti = 0
        y += 1
        if y == oh_n:
            y = 0
            if pix_major:
                n += 1
            else:
                mb += 1
                if mb == nmb:
                    mb = 0
                    n += 1
    return mb, ti, y, n


@njit(fastmath=_FM)
def _worker(ctr, grain, xf, offs, wp, bp, out, res, has_res, prm, geo, side):
    """One worker of ``run``: claims items until none is left."""
    n_img, oh_n, ow_n, m_all, mr, nv, nmb, act, pix_major, nstride, rowstep = (
        geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo[10])
    allow_direct = geo[11] != 0
    px = nv * 16
    ntl = (ow_n + px - 1) // px
    rt = oh_n * ntl  # (row, tile) pairs per image
    total = n_img * rt * nmb
    ons, ohw, ors, ooff = geo[12], _U(geo[13]), geo[14], geo[15]
    tile = np.empty(TILE_ELEMS, dtype=wp.dtype)
    done = 0
    while True:
        u0, u1 = _claim_end(ctr, total, grain, side, done)
        if u1 <= u0:
            break
        done += u1 - u0
        # pixel-major: consecutive items are one pixel tile, every channel block; else one
        # channel block along the image's pixel tiles.  The first item's coordinates are
        # divided out once, the rest counted on: three 64-bit divisions an item weighed on the
        # short reductions (1x1 16->96 on 112x112 0.93x, 32->16 0.90x without them)
        mb, q, n = _item(u0, nmb, rt, pix_major)
        y = q // ntl
        ti = q - y * ntl
        for _u in range(u0, u1):
            p0 = min(ti * px, ow_n - px)
            m0 = mb * mr
            jv = min(mr, m_all - m0)
            ob = _U(n * ons + m0 * geo[13] + y * ors + ooff + p0)
            # with an activation the microkernel applies, the sums are stored straight from its
            # registers (a partial last block: its first jv rows); tanh goes through the tile
            direct = allow_direct and act != TANH
            _px_kernel(xf, _U(n * nstride + y * rowstep + p0), offs, wp, mb, bp, tile, mr, nv,
                       out, ob, ohw, res, has_res, act, prm, direct, jv)
            if not direct:
                _store_tile(tile, px, px, out, ob, ohw, jv, res, has_res, act, prm)
            if geo[18] and p0 == 0:  # a bordered output: the row's zeros, once per row
                _zero_border(out, ons, geo[13], ors, geo[16], geo[17], n, m0, jv, y, oh_n, ow_n)
            mb, ti, y, n = _next_item(mb, ti, y, n, nmb, ntl, oh_n, pix_major)


def pack_weights(w, bias, mr, dtype):
    """``(wp, bp)``: weights ``(blocks, C*kH*kW, MR)`` (the MR weights of one tap contiguous)
    and the bias ``(blocks*MR,)``, zero-padded to whole blocks."""
    m_all = w.shape[0]
    nmb = -(-m_all // mr)
    wf = np.zeros((nmb * mr, w[0].size), dtype=dtype)
    wf[:m_all] = w.reshape(m_all, -1)
    bp = np.zeros(nmb * mr, dtype=dtype)
    bp[:m_all] = bias
    return np.ascontiguousarray(wf.reshape(nmb, mr, -1).transpose(0, 2, 1)), bp


PIXEL_MAX_TAPS = 32


# 1x1 layers this kernel leaves to the blocked ones (see use_pixel): (channels, pixels) = both
# channel counts at least that many on at most that many output pixels, for unit-stride and for
# strided layers; and the fewest output pixels it takes (MIN_PIX_1X1, or whole vectors of 16).
# On AVX2 (the 6 x 16 tile) this kernel was the fastest on every unit-stride 14x14 1x1 layer
# measured, and on 7x7 ones with fewer than 320 channels on one side (forced, same process
# alternating, ms, against the blocked kernel: 256->1024 on 14x14 0.86 / 1.07, 1024->256 0.80 /
# 0.97, 112->672 0.23 / 0.32; 160->960 on 7x7 0.16 / 0.22, 192->1152 0.22 / 0.27, 672->192 0.13
# / 0.15).  small_maps takes the deeper 7x7 layers (320->1280 0.38 against 0.41 here, 2048->512
# 0.74 / 1.01) and the deep strided ones, whose gather is its panel fill (512->1024 stride 2 to
# 14x14: 1.91 against 2.20 here).
if _WIDE:
    DEEP_1X1 = {False: (256, 14 * 14), True: (256, 14 * 14)}
    MIN_PIX_1X1 = 64
else:
    DEEP_1X1 = {False: (320, 7 * 7), True: (512, 14 * 14)}
    MIN_PIX_1X1 = 49


def use_pixel(kernel, pads, strides, group, cg, m_all, oh_n, ow_n, dtype):
    """Whether a layer runs on this kernel.

    * 1x1 unpadded layers: from ``MIN_PIX_1X1`` output pixels per image (run as one long row),
      or whole vectors of 16.  With AVX-512, on 7x7 maps (49 pixels, computed as 64) the
      blocked kernel measured as fast or faster; on MobileNetV2's 112x112..14x14 maps the pixel
      kernel is 1.6-3.8x faster.  Deep 1x1 layers on small maps (``DEEP_1X1``; with AVX-512
      256+ channels on at most 14x14 pixels: ResNet-50's layer3) go to the blocked kernels,
      15-20 % faster there (a 196-pixel row is 13 vectors, while 256+ output channels fill
      the blocked kernel's 32-channel tiles).
    * other kernels: a short reduction (``cg*kH*kW <= PIXEL_MAX_TAPS``, first layers) and
      output rows of 16+ pixels.
    """
    if group != 1:
        return False
    kh, kw = kernel
    if kh == kw == 1 and not any(pads):
        npix = oh_n * ow_n
        deep, max_pix = DEEP_1X1[max(strides) > 1]
        if npix <= max_pix and min(cg, m_all) >= deep:
            return False
        return ((npix >= MIN_PIX_1X1 or npix % VEC == 0)
                and choose_shape(m_all, npix, dtype) is not None)
    return cg * kh * kw <= PIXEL_MAX_TAPS and choose_shape(m_all, ow_n, dtype) is not None


class Pixel(RowInput):
    """This kernel bound to a layer (group 1, output rows of 16+ pixels)."""

    name = "pixel"
    packs_weights = True  # only through ``packed`` (see ConvAlgorithm)

    @classmethod
    def accepts(cls, layer, cpu) -> bool:
        l_ = layer
        sane = max(l_.n_img * l_.c_n * (l_.h_n + l_.pt + l_.pb) * (l_.w_n + l_.pl + l_.pr),
                   l_.n_img * l_.m_all * l_.oh_n * l_.ow_n)  # index arithmetic far from 2**63
        return sane < 2**61 and use_pixel((l_.kh, l_.kw), l_.pads, l_.strides, l_.group, l_.cg,
                                          l_.m_all, l_.oh_n, l_.ow_n, l_.dtype)

    def __init__(self, layer, w, bias):
        super().__init__(layer, w, bias)
        dtype, m_all = layer.dtype, layer.m_all
        n_img, c_n, h_n, w_n = layer.in_shape
        self._shape = choose_shape(m_all, self._ow, dtype)
        if layer.group != 1 or self._shape is None:
            raise ValueError("algo='pixel' needs group 1 and output rows of 16+ pixels")
        mr, nv = self._shape
        self._wp, self._bp = packed("pixel", (mr,), lambda: pack_weights(w, bias, mr, dtype))
        nmb = self._bp.shape[0] // mr
        pix_major = int(c_n * h_n * w_n * dtype.itemsize > PIX_MAJOR_BYTES
                        or layer.cg * layer.kh * layer.kw > m_all)
        self._items = n_img * self._oh * -(-self._ow // (nv * VEC)) * nmb
        # run's geometry: [11] = direct stores allowed (the tests compare both store paths),
        # [12:] = the output geometry (write_padded keeps it in step with _ogeo)
        self._pgeo = np.array([n_img, self._oh, self._ow, m_all, mr, nv, nmb, self.act,
                               pix_major, self._nstride, self._rowstep, 1, *self._ogeo],
                              dtype=np.int64)

    def write_padded(self, geometry):
        super().write_padded(geometry)
        self._pgeo[12:] = self._ogeo

    def __call__(self, x, out, residual=None):
        xf = self.prepare(x)
        of = out.reshape(-1)
        if self._padded_out:
            zero_spare(of, self._ogeo, self.in_shape[0])
        has_res = residual is not None
        res = residual.reshape(-1) if has_res else self._dummy
        nthr, grain = work_split(self._items)
        args = (xf, self._offs, self._wp, self._bp, of, res, has_res, self._prm, self._pgeo)
        if nthr == 1:
            _worker(np.zeros(1, dtype=np.int64), abs(grain), *args, -1)
        else:
            run(*args, nthr, grain)
        return out
