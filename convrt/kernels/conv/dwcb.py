"""Depthwise convolution on small maps, 16 channels per vector: EfficientNet's and MobileNetV3's
late 3x3 and 5x5 layers (14x14 and 7x7 maps, hundreds of channels).

The planar kernels (``depthwise.py``, ``dw3x3.py``) vectorise along a row of one channel; a
7-pixel row fills under half a vector, and a 5x5 kernel then spends its time in loop set-up and
partial sums kept in memory (EfficientNet-B0's 5x5 layers ran 3-7x slower than onnxruntime's).
Here a task is one image x 16 channels, in three LLVM-level passes over per-thread scratch that
stays in L1/L2:

1. ``_cb_in``: the 16 input planes, 16 pixels at a time (masked loads), transposed in registers
   (``VecIR.transpose16``) so that each pixel's 16 channels are one vector, stored at the
   pixel's place in a zero-bordered ``(H + pads) x (W + pads) x 16`` block (``xoff``: one offset
   per input pixel; the border is never written, so it stays zero).  Stride and dilation then
   cost nothing: every tap of every output pixel is one aligned 16-lane load.
2. ``_cb_taps``: per output pixel, the bias plus ``kH*kW`` multiply-adds of a tap's 16 channels by
   its 16 weights, four pixels at a time (one weight load serves four), sums in registers, in tap
   order (row by row of the kernel, as the planar kernels add them); stored pixel-major.
3. ``_cb_out``: 16 pixels x 16 channels transposed back, the residual added, the activation
   applied (``VecIR.activate``: any of ``activations.IN_REGISTERS``) and one masked store per
   channel into the NCHW output.

Each output is computed by the same instructions whichever thread runs its task, so results are
bitwise reproducible at any thread count.  Offsets are int64; the plan's validation bounds every
size long before they could overflow.
"""

import threading

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ...activations import IN_REGISTERS
from .._jit import njit, pjit
from ._base import ConvAlgorithm, aligned_zeros, packed
from ._ir import VEC, VecIR, arrays
from ._microkernel import HOST
from ._schedule import serial

# output pixels per run of _cb_taps (float32): the sums, a weight and a loaded tap in
# registers; a 16-lane vector is one register with AVX-512, two with AVX2
PIX = 14 if HOST.vbits >= 512 else 6


def _masked(v):
    """(masked load, masked store, alignment, lane indices) for ``v``'s vector type."""
    mt = ir.VectorType(v.i1, VEC)
    mload = v.intrinsic("llvm.masked.load", v.vt, [v.vpt, v.i32, mt, v.vt], ".p0")
    mstore = v.intrinsic("llvm.masked.store", ir.VoidType(), [v.vt, v.vpt, v.i32, mt], ".p0")
    align = ir.Constant(v.i32, 4 if isinstance(v.ft, ir.FloatType) else 8)
    iota = ir.Constant(ir.VectorType(v.i32, VEC), list(range(VEC)))
    return mload, mstore, align, iota


def _lanes_below(v, iota, n):
    """Mask of the lanes ``k < n`` (``n`` an i64, clamped to 16)."""
    b = v.builder
    n = b.select(b.icmp_signed("<", n, v.c64(VEC)), n, v.c64(VEC))
    return b.icmp_signed("<", iota, v.splat(b.trunc(n, v.i32), iota.type))


@intrinsic
def _cb_in(typingctx, x, x0, hw, nl, xs, xoff):
    """Interleave planes ``x[x0 + c*hw : ... + hw]`` (c < nl <= 16) into ``xs``: pixel p's 16
    channels go to ``xs[xoff[p] : xoff[p] + 16]`` (channels past nl as 0).  ``xoff`` holds
    ceil(hw/16)*16 entries; those past hw point at a spare slot of ``xs``."""
    sig = types.void(x, x0, hw, nl, xs, xoff)

    def codegen(context, builder, signature, args):
        aty = signature.args
        v = VecIR(context, builder, aty[0].dtype)
        c64 = v.c64
        mload, _, align, iota = _masked(v)
        xa, sa, oa = arrays(context, builder, aty, args, (0, 4, 5))
        x0, hw, nl = (context.cast(builder, args[i], aty[i], types.int64) for i in (1, 2, 3))
        zero = ir.Constant(v.vt, None)
        nblk = builder.sdiv(builder.add(hw, c64(VEC - 1)), c64(VEC))

        def body(i, accs):
            p0 = builder.mul(i, c64(VEC))
            lanes = _lanes_below(v, iota, builder.sub(hw, p0))
            ats = [builder.add(x0, builder.add(builder.mul(c64(c), hw), p0)) for c in range(VEC)]

            def masked():
                return [builder.call(mload, [v.vptr(xa.data, at), align, builder.and_(
                    lanes, v.splat(builder.icmp_signed("<", c64(c), nl), lanes.type)), zero])
                    for c, at in enumerate(ats)]

            whole = builder.and_(builder.icmp_signed(">=", builder.sub(hw, p0), c64(VEC)),
                                 builder.icmp_signed(">=", nl, c64(VEC)))
            rows = v.either(whole, lambda: [v.vload(xa.data, at) for at in ats], masked,
                            "cbin.ld")
            for k, row in enumerate(v.transpose16(rows)):
                dst = builder.load(builder.gep(oa.data, [builder.add(p0, c64(k))]))
                v.vstore(row, sa.data, dst)
            return accs

        v.accumulate(nblk, [], body, "cbin")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _cb_taps(typingctx, xs, wv, wo, toff, ot, oh_n, ow_n, ystep, xstep, taps):
    """``ot[(y*ow_n + j)*16 + l] = wv[wo + taps*16 + l] + sum_t wv[wo + t*16 + l] *
    xs[y*ystep + j*xstep + toff[t] + l]`` (sums in tap order).

    A row is done in runs of up to ``PIX`` pixels, each run one loop over the taps with the
    run's sums in registers: per tap one weight load feeds a multiply-add per pixel, and the
    loop's own cost is shared by all of them.  The run length is a switch over the compiled
    lengths 1..PIX (the last run of a row is shorter)."""
    sig = types.void(xs, wv, wo, toff, ot, oh_n, ow_n, ystep, xstep, taps)

    def codegen(context, builder, signature, args):
        aty = signature.args
        v = VecIR(context, builder, aty[0].dtype)
        c64 = v.c64
        pix = PIX if isinstance(v.ft, ir.FloatType) else PIX // 2  # float64: 2 registers a sum
        sa, wa, ta, oa = arrays(context, builder, aty, args, (0, 1, 3, 4))
        wo, oh_n, ow_n, ystep, xstep, taps = (
            context.cast(builder, args[i], aty[i], types.int64) for i in (2, 5, 6, 7, 8, 9))
        bias = v.vload(wa.data, builder.add(wo, builder.mul(taps, c64(VEC))))
        nrun = builder.sdiv(builder.add(ow_n, c64(pix - 1)), c64(pix))
        fn = builder.function

        def pixels(y, j0, n):  # n (a Python int) pixels from column j0 of row y
            base = builder.add(builder.mul(y, ystep), builder.mul(j0, xstep))
            starts = [builder.add(base, builder.mul(c64(i), xstep)) for i in range(n)]

            def tap(t, accs):
                off = builder.load(builder.gep(ta.data, [t]))
                w = v.vload(wa.data, builder.add(wo, builder.mul(t, c64(VEC))))
                return [builder.call(v.fma, [v.vload(sa.data, builder.add(s, off)), w, a])
                        for s, a in zip(starts, accs)]

            sums = v.accumulate(taps, [bias] * n, tap, "cbtap%d" % n)
            first = builder.add(builder.mul(y, ow_n), j0)
            for i, val in enumerate(sums):
                v.vstore(val, oa.data, builder.mul(builder.add(first, c64(i)), c64(VEC)))

        def run(r, accs, y):
            j0 = builder.mul(r, c64(pix))
            left = builder.sub(ow_n, j0)
            n = builder.select(builder.icmp_signed("<", left, c64(pix)), left, c64(pix))
            merge = fn.append_basic_block("cbrun.end")
            sw = builder.switch(n, merge)
            for k in range(1, pix + 1):
                case = fn.append_basic_block("cbrun%d" % k)
                sw.add_case(ir.Constant(v.i64, k), case)
                builder.position_at_end(case)
                pixels(y, j0, k)
                builder.branch(merge)
            builder.position_at_end(merge)
            return accs

        v.accumulate(oh_n, [], lambda y, accs: v.accumulate(
            nrun, [], lambda r, a: run(r, a, y), "cbruns") or accs, "cbrow")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _cb_out(typingctx, ot, ohw, nl, out, o0, res, has_res, act, prm):
    """``out[o0 + c*ohw + p] = act(ot[p*16 + c] + res[o0 + c*ohw + p])`` for c < nl, p < ohw
    (the residual only if ``has_res``); ``ot`` holds ceil(ohw/16)*16 pixels."""
    sig = types.void(ot, ohw, nl, out, o0, res, has_res, act, prm)

    def codegen(context, builder, signature, args):
        aty = signature.args
        v = VecIR(context, builder, aty[0].dtype)
        c64 = v.c64
        mload, mstore, align, iota = _masked(v)
        ta, oa, ra, pa = arrays(context, builder, aty, args, (0, 3, 5, 8))
        ohw, nl, o0, actv = (context.cast(builder, args[i], aty[i], types.int64)
                             for i in (1, 2, 4, 7))
        has_res = context.cast(builder, args[6], aty[6], types.boolean)
        prm_s = [v.splat(builder.load(builder.gep(pa.data, [c64(i)]))) for i in (0, 1, 2, 3)]
        zero = ir.Constant(v.vt, None)
        nblk = builder.sdiv(builder.add(ohw, c64(VEC - 1)), c64(VEC))
        fn = builder.function
        end = fn.append_basic_block("cbo.end")
        sw = builder.switch(actv, end)
        for code in IN_REGISTERS:  # one loop per (activation, residual or not)
            case = fn.append_basic_block("cbo.act%d" % code)
            sw.add_case(ir.Constant(v.i64, code), case)
            builder.position_at_end(case)
            with_res = fn.append_basic_block("cbo.act%d.res" % code)
            plain = fn.append_basic_block("cbo.act%d.plain" % code)
            builder.cbranch(has_res, with_res, plain)
            for bb, add_res in ((with_res, True), (plain, False)):
                builder.position_at_end(bb)

                def body(i, accs, code=code, add_res=add_res):
                    p0 = builder.mul(i, c64(VEC))
                    lanes = _lanes_below(v, iota, builder.sub(ohw, p0))
                    rows = [v.vload(ta.data, builder.mul(builder.add(p0, c64(k)), c64(VEC)))
                            for k in range(VEC)]
                    ats = [builder.add(o0, builder.add(builder.mul(c64(c), ohw), p0))
                           for c in range(VEC)]
                    masks = [builder.and_(lanes, v.splat(builder.icmp_signed("<", c64(c), nl),
                                                         lanes.type)) for c in range(VEC)]
                    # plain loads and stores for a whole 16 x 16 block, masked ones at the
                    # map's end and in a last partial block of channels
                    whole = builder.and_(
                        builder.icmp_signed(">=", builder.sub(ohw, p0), c64(VEC)),
                        builder.icmp_signed(">=", nl, c64(VEC)))
                    vals = v.transpose16(rows)
                    if add_res:
                        rv = v.either(whole, lambda: [v.vload(ra.data, at) for at in ats],
                                      lambda: [builder.call(mload, [v.vptr(ra.data, at), align,
                                                                    m, zero])
                                               for at, m in zip(ats, masks)], "cbo.res")
                        vals = [builder.fadd(val, r) for val, r in zip(vals, rv)]
                    vals = [v.activate(val, code, prm_s) for val in vals]

                    def stores(masked):
                        for val, at, m in zip(vals, ats, masks):
                            if masked:
                                builder.call(mstore, [val, v.vptr(oa.data, at), align, m])
                            else:
                                v.vstore(val, oa.data, at)
                        return []

                    v.either(whole, lambda: stores(False), lambda: stores(True), "cbo.st")
                    return accs

                v.accumulate(nblk, [], body, "cbo%d%s" % (code, "r" if add_res else ""))
                builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@njit
def _tasks(lo, hi, x, out, res, has_res, act, prm, wv, toff, xoff, xs, ot, geo):
    """Tasks (image, block of 16 channels) ``lo..hi-1``.  ``geo`` = C, channel blocks, H*W,
    oh, ow, row step, pixel step, taps (int64; the steps in elements of ``xs``)."""
    c_n, nchb, hw, oh_n, ow_n = geo[0], geo[1], geo[2], geo[3], geo[4]
    ystep, xstep, taps = geo[5], geo[6], geo[7]
    ohw = oh_n * ow_n
    for t in range(lo, hi):
        m = t // nchb  # image
        cb = t - m * nchb
        c0 = cb * VEC
        nl = min(VEC, c_n - c0)
        _cb_in(x, (m * c_n + c0) * hw, hw, nl, xs, xoff)
        _cb_taps(xs, wv, cb * (taps + 1) * VEC, toff, ot, oh_n, ow_n, ystep, xstep, taps)
        _cb_out(ot, ohw, nl, out, (m * c_n + c0) * ohw, res, has_res, act, prm)


@pjit
def _run_par(x, out, res, has_res, act, prm, wv, toff, xoff, scratch, geo, nblk, ntask, xs_len):
    for blk in prange(nblk):
        _tasks(blk * ntask // nblk, (blk + 1) * ntask // nblk, x, out, res, has_res, act, prm,
               wv, toff, xoff, scratch[blk, :xs_len], scratch[blk, xs_len:], geo)


@njit
def _run_seq(x, out, res, has_res, act, prm, wv, toff, xoff, scratch, geo, nblk, ntask, xs_len):
    _tasks(0, ntask, x, out, res, has_res, act, prm, wv, toff, xoff, scratch[0, :xs_len],
           scratch[0, xs_len:], geo)


# Layers whose zero-bordered input block has at most this many pixels (64 KiB a task in
# float32, beside a pixel-major output block of up to 49 KiB) take this kernel; larger ones the
# planar kernels, whose rows then fill their vectors.  Measured per layer against the planar
# kernels, one thread: 3x3 on 14x14 and 28x28 maps 15-25 % faster, 5x5 on 7x7..28x28 1.2-6x;
# a 56x56 input (stride 2 to 28x28) 20 % slower, 56x56 at stride 1 2.7x slower.
MAX_PIXELS = 32 * 32


class DepthwiseBlocked(ConvAlgorithm):
    """A depthwise convolution (one input channel per group, one output channel per group, at
    least 16 channels) on a small map (``MAX_PIXELS``), with an activation the store applies in
    registers.

    Calling ``dw(x, out, residual=None)`` writes ``act(conv(x) + b + residual)`` into ``out``.
    The scratch is per calling thread (``threading.local``): one row per block of tasks, the
    zero-bordered input block then the pixel-major sums.
    """

    name = "depthwise"  # the family's name, as dw3x3 reports (``Conv2d._dw`` is the object)
    packs_weights = True  # only through ``packed`` (see ConvAlgorithm)

    @classmethod
    def accepts(cls, layer, cpu) -> bool:
        padded = (layer.h_n + layer.pt + layer.pb) * (layer.w_n + layer.pl + layer.pr)
        return (layer.cg == 1 and layer.mg == 1 and layer.m_all >= VEC and padded <= MAX_PIXELS
                and layer.act in IN_REGISTERS and layer.kh * layer.kw > 1)

    def __init__(self, layer, w, bias):
        super().__init__(layer, w, bias)
        n_img, c_n, h_n, w_n = layer.in_shape
        kh, kw, dh, dw, sh, sw = layer.kh, layer.kw, layer.dh, layer.dw, layer.sh, layer.sw
        pt, pl, pb, pr = layer.pads
        oh_n, ow_n = layer.oh_n, layer.ow_n
        nchb = -(-c_n // VEC)
        taps = kh * kw

        def pack():  # (block, tap or bias, lane); channels past C have zero weights
            wb = np.zeros((nchb * VEC, taps + 1), dtype=self.dtype)
            wb[:c_n, :taps] = w.reshape(c_n, taps)
            wb[:c_n, taps] = bias
            wv = aligned_zeros((nchb, taps + 1, VEC), self.dtype)
            wv[...] = wb.reshape(nchb, VEC, taps + 1).transpose(0, 2, 1)
            return wv

        self._wv = packed("depthwise_blocked", (), pack).reshape(-1)
        wp = w_n + pl + pr  # padded row, in pixels
        rows, cols = np.divmod(np.arange(-(-h_n * w_n // VEC) * VEC), w_n)
        xoff = ((rows + pt) * wp + cols + pl) * VEC
        xs_pixels = (h_n + pt + pb) * wp
        xoff[h_n * w_n:] = xs_pixels * VEC  # past the plane: the spare slot
        self._xoff = xoff.astype(np.int64)
        self._toff = np.array([(a * dh * wp + b * dw) * VEC for a in range(kh)
                               for b in range(kw)], dtype=np.int64)
        self._xs_len = (xs_pixels + 1) * VEC
        ot_len = -(-oh_n * ow_n // VEC) * VEC * VEC
        ntask = n_img * nchb
        self._nblk = max(1, min(ntask, numba.config.NUMBA_NUM_THREADS))
        self._ntask = ntask
        self._row = -(-(self._xs_len + ot_len) // VEC) * VEC  # rows stay 64-byte aligned
        self._geo = np.array([c_n, nchb, h_n * w_n, oh_n, ow_n, sh * wp * VEC, sw * VEC, taps],
                             dtype=np.int64)
        macs = n_img * c_n * oh_n * ow_n * taps
        self._kernel = _run_seq if serial(macs, layer.moved) else _run_par
        if self._kernel is _run_seq:
            self._nblk = 1
        self._tls = threading.local()

    def scratch_bytes(self) -> int:
        return self._nblk * self._row * self.dtype.itemsize

    def __call__(self, x, out, residual=None):
        scratch = getattr(self._tls, "s", None)
        if scratch is None:  # zeros: the input block's border is never written
            scratch = self._tls.s = aligned_zeros((self._nblk, self._row), self.dtype)
        res, has_res = (self._dummy, False) if residual is None else (residual.reshape(-1), True)
        self._kernel(x.reshape(-1), out.reshape(-1), res, has_res, self.act, self._prm, self._wv,
                     self._toff, self._xoff, scratch, self._geo, self._nblk, self._ntask,
                     self._xs_len)
        return out
