"""The epilogue every convolution algorithm applies on its store: residual add, activation,
and the zero border of a bordered output.  Activation codes come from ``convrt.activations``.

Each loop branches on the activation *outside* the loop over pixels, so that the loop body is
one comparison or multiply LLVM can vectorise; the variants differ only in how their source is
indexed (a transposed tile, a row in place).  Every comparison is written so that NaN passes
through unchanged, as numpy's maximum/clip do (``convrt.activations.reference``).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ...activations import (CLIP, HARD_SIGMOID, HARD_SWISH, IN_REGISTERS, LEAKY, NONE, RELU,
                            SIGMOID, SILU, TANH)
from .._jit import FAST, njit
from ..elementwise import any_sigmoid, any_silu, any_tanh
from ._ir import VEC, VecIR, arrays

_U = np.uint64
_FM = set(FAST)  # numba wants a set, not a frozenset


@njit(fastmath=_FM, error_model="numpy")
def act_other(v, act, prm):
    """Activation ``act`` past ``IN_REGISTERS`` (sigmoid, tanh, silu, hard_sigmoid, hard_swish)
    of one value: the epilogues call it in their loops over a row, where LLVM hoists the
    switch on the loop-invariant ``act`` and vectorizes the float32 exp (``any_sigmoid``).
    hard_*: ``prm[0]*v + prm[1]`` clamped to [0, 1] with ordered comparisons (NaN passes)."""
    if act == SIGMOID:
        return any_sigmoid(v)
    if act == TANH:
        return any_tanh(v)
    if act == SILU:
        return any_silu(v)
    zero, one = prm[3], prm[4]
    h = v * prm[0] + prm[1]
    h = zero if h < zero else h
    h = one if h > one else h
    return h if act == HARD_SIGMOID else v * h


@njit(fastmath=_FM, error_model="numpy")
def act_run(src, s0, dst, d0, n, act, prm):
    """``dst[d0 + i] = act_other(src[s0 + i], act, prm)`` for i < n (``s0``, ``d0``, ``n``
    uint64; ``src`` may be ``dst``): one loop per activation, each a straight loop that LLVM
    vectorizes (float32: ``elementwise``'s polynomial exp), same operations as ``act_other``.
    One loop around ``act_other``'s switch stayed scalar: the SiLU store cost 2-6x the sums
    of EfficientNet's 5x5 depthwise layers (issue #21)."""
    if act == SILU:
        for i in range(n):
            dst[d0 + i] = any_silu(src[s0 + i])
    elif act == SIGMOID:
        for i in range(n):
            dst[d0 + i] = any_sigmoid(src[s0 + i])
    elif act == TANH:
        for i in range(n):
            dst[d0 + i] = any_tanh(src[s0 + i])
    elif act == HARD_SWISH:
        a, b, zero, one = prm[0], prm[1], prm[3], prm[4]
        for i in range(n):
            v = src[s0 + i]
            h = v * a + b
            h = zero if h < zero else h
            dst[d0 + i] = v * (one if h > one else h)
    else:
        for i in range(n):
            dst[d0 + i] = act_other(src[s0 + i], act, prm)


@njit(fastmath=_FM, error_model="numpy")
def act_inplace(buf, s0, n, act, prm):
    """``act_run`` in place on ``buf[s0:s0+n]`` (uint64): one array, so LLVM sees that each
    element is read and written at the same index and vectorizes (``act_run(buf, s0, buf, s0,
    ...)`` stayed scalar: its two arrays may overlap)."""
    if act == SILU:
        for i in range(n):
            buf[s0 + i] = any_silu(buf[s0 + i])
    elif act == HARD_SWISH:
        a, b, zero, one = prm[0], prm[1], prm[3], prm[4]
        for i in range(n):
            v = buf[s0 + i]
            h = v * a + b
            h = zero if h < zero else h
            buf[s0 + i] = v * (one if h > one else h)
    elif act == SIGMOID:
        for i in range(n):
            buf[s0 + i] = any_sigmoid(buf[s0 + i])
    else:
        for i in range(n):
            buf[s0 + i] = act_other(buf[s0 + i], act, prm)


@njit(fastmath=_FM)
def _store_tile(tile, nt, tp, out, ob, ohw, jv, res, has_res, act, prm):
    """``out[ob + j*ohw + t] = act(tile[j*tp + t] + res[...])`` for t < nt, j < jv (ob, ohw
    uint64): the (already transposed) tile into NCHW, contiguous along pixels.

    ``prm`` = (alpha, clip_min, clip_max, 0, 1) in the array's dtype.  Every comparison is
    written so that NaN passes through unchanged (as numpy's maximum/clip do).
    """
    alpha, lo, hi, zero = prm[0], prm[1], prm[2], prm[3]
    for j in range(jv):
        base = ob + _U(j) * ohw
        tb = j * tp
        if has_res:
            for t in range(nt):
                tile[tb + t] += res[base + _U(t)]
        if act == NONE:
            for t in range(nt):
                out[base + _U(t)] = tile[tb + t]
        elif act == RELU:
            for t in range(nt):
                v = tile[tb + t]
                out[base + _U(t)] = zero if v < zero else v
        elif act == LEAKY:
            for t in range(nt):
                v = tile[tb + t]
                out[base + _U(t)] = v * alpha if v < zero else v
        elif act == CLIP:
            for t in range(nt):
                v = tile[tb + t]
                v = lo if v < lo else v
                out[base + _U(t)] = hi if v > hi else v
        else:
            act_run(tile, _U(tb), out, base, _U(nt), act, prm)


@intrinsic
def _store_tile_m(typingctx, tile, nt, out, ob, ohw, jv, res, has_res, act, prm):
    """``_store_tile`` of a tile with pitch 16 (``nt`` <= 16 pixels) and an activation of
    ``activations.IN_REGISTERS`` (all but tanh), as vector code: per channel one load from the
    tile, the residual (masked load) added, the activation applied (``VecIR.activate``) and one
    masked store of the ``nt`` pixels.  The scalar loops of ``_store_tile`` cost 5 % of small VGG's
    8x8 and 16x16 layers, whose rows of 8 pixels never fill a vector.  Same operations, same
    results; lanes past ``nt`` are neither read nor written."""
    sig = types.void(tile, nt, out, ob, ohw, jv, res, has_res, act, prm)

    def codegen(context, builder, signature, args):
        aty = signature.args
        v = VecIR(context, builder, aty[0].dtype)
        c64 = v.c64
        ta, oa, ra, pa = arrays(context, builder, aty, args, (0, 2, 6, 9))
        nt = context.cast(builder, args[1], aty[1], types.int64)
        ob = context.cast(builder, args[3], aty[3], types.uint64)
        ohw = context.cast(builder, args[4], aty[4], types.uint64)
        jv = context.cast(builder, args[5], aty[5], types.int64)
        has_res = context.cast(builder, args[7], aty[7], types.boolean)
        actv = context.cast(builder, args[8], aty[8], types.int64)
        mt = ir.VectorType(v.i1, VEC)
        mload = v.intrinsic("llvm.masked.load", v.vt, [v.vpt, v.i32, mt, v.vt], ".p0")
        mstore = v.intrinsic("llvm.masked.store", ir.VoidType(), [v.vt, v.vpt, v.i32, mt],
                             ".p0")
        align = ir.Constant(v.i32, 4 if isinstance(v.ft, ir.FloatType) else 8)
        it = ir.VectorType(v.i32, VEC)
        mask = builder.icmp_signed("<", ir.Constant(it, list(range(VEC))),
                                   v.splat(builder.trunc(nt, v.i32), it))
        prm_s = [v.splat(builder.load(builder.gep(pa.data, [c64(i)]))) for i in (0, 1, 2, 3)]
        zero = ir.Constant(v.vt, None)
        fn = builder.function
        end = fn.append_basic_block("st.end")
        sw = builder.switch(actv, end)
        for code in IN_REGISTERS:  # one loop over the channels per (activation, residual?)
            case = fn.append_basic_block("st.act%d" % code)
            sw.add_case(ir.Constant(v.i64, code), case)
            builder.position_at_end(case)
            with_res = fn.append_basic_block("st.act%d.res" % code)
            plain = fn.append_basic_block("st.act%d.plain" % code)
            builder.cbranch(has_res, with_res, plain)
            for bb, add_res in ((with_res, True), (plain, False)):
                builder.position_at_end(bb)

                def body(j, accs, code=code, add_res=add_res):
                    at = builder.add(ob, builder.mul(ohw, j))
                    val = v.vload(ta.data, builder.mul(j, c64(VEC)))
                    optr = v.vptr(oa.data, at)
                    if add_res:
                        val = builder.fadd(val, builder.call(mload, [v.vptr(ra.data, at), align,
                                                                     mask, zero]))
                    builder.call(mstore, [v.activate(val, code, prm_s), optr, align, mask])
                    return accs

                v.accumulate(jv, [], body, "st%d%s" % (code, "r" if add_res else ""))
                builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    return sig, codegen


@njit(fastmath=_FM)
def _row_epilogue(out, ob, cnt, res, has_res, act, prm):
    """In place on ``out[ob:ob+cnt]``: add the residual, then the activation (NaN passes)."""
    alpha, lo, hi, zero = prm[0], prm[1], prm[2], prm[3]
    if has_res:
        for i in range(cnt):
            out[ob + i] += res[ob + i]
    if act == RELU:
        for i in range(cnt):
            v = out[ob + i]
            out[ob + i] = zero if v < zero else v
    elif act == LEAKY:
        for i in range(cnt):
            v = out[ob + i]
            out[ob + i] = v * alpha if v < zero else v
    elif act == CLIP:
        for i in range(cnt):
            v = out[ob + i]
            v = lo if v < lo else v
            out[ob + i] = hi if v > hi else v
    elif act != NONE:
        act_inplace(out, _U(ob), _U(cnt), act, prm)


@njit
def _zero_border(out, ns, cs, rs, pt, pl, n, m0, jv, row, h_n, w_n):
    """The zeros around output row ``row`` of channels m0..m0+jv of image n in a bordered
    layout (strides ns, cs, rs; border pt rows, pl columns): the row's left and right margins,
    and with the first row the rows above, with the last the rows below and the plane's gap.
    The plan shares the buffer with other values, so the writer rewrites these zeros on every
    run, beside the data it writes anyway."""
    for j in range(jv):
        plane = n * ns + (m0 + j) * cs
        rb = plane + (pt + row) * rs
        for i in range(_U(rb), _U(rb + pl)):
            out[i] = 0
        for i in range(_U(rb + pl + w_n), _U(rb + rs)):
            out[i] = 0
        if row == 0:
            for i in range(_U(plane), _U(plane + pt * rs)):
                out[i] = 0
        if row == h_n - 1:
            for i in range(_U(plane + (pt + h_n) * rs), _U(plane + cs)):
                out[i] = 0
