"""The register-tiled microkernel the direct kernel and Winograd's products share.

``_tile_sums`` computes T output pixels x 16*B channels in T*B vector registers: the inner loop
is B 16-wide weight loads and T broadcasts feeding T*B multiply-adds (B=2, T=14 on the big
layers).  It is written as LLVM IR with explicit 16-lane vectors (a numba ``@intrinsic``), so it
neither depends on the SLP vectoriser nor inherits LLVM's preference for 256-bit vectors on
Intel CPUs.  Its shape (B, T) and loop form must be compile-time constants of the generated
code, while a layer picks them at run time; one table per use (``TRANSPOSED_CASES`` for the
direct kernel, ``PRODUCT_CASES`` for Winograd) lists the instances compiled, and the intrinsic
emits the dispatch over that table itself, so there is no hand-written ladder of literal calls.
"""

from typing import NamedTuple

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._jit import njit
from ._ir import VEC, VecIR, arrays

# Microkernel shapes (B vectors of 16 output channels, T pixels) -> relative speed, measured on
# VGG-16 layers (benchmarks/conv_layers.py): per inner step B weight loads, T broadcasts and T*B
# multiply-adds.  B=4 (T=7) needs fewer loads still but streams 4x the weights per tile from L2
# and measured slower than B=2 on every VGG layer, so it is not offered.
SHAPES = {(2, 14): 1.0, (2, 8): 0.93, (2, 7): 0.92, (2, 4): 0.8, (2, 2): 0.6, (2, 1): 0.4,
          (1, 28): 0.88, (1, 16): 0.87, (1, 14): 0.86, (1, 8): 0.8, (1, 7): 0.78, (1, 4): 0.62,
          (1, 2): 0.45, (1, 1): 0.3}
# The same for CPUs with 16 vector registers of 256 bits (AVX2: a vector of 16 sums takes two),
# measured on ResNet-18's 3x3 layers (batch 1, two threads, taps unrolled; ms for 64x56x56,
# 128x28x28, 256x14x14, 512x7x7): (1, 5) 1.78 / 1.66 / 1.68 / 2.38, (1, 4) 1.89 / 1.70 / 2.14 /
# 2.36, (1, 6) 2.17 / 2.06 / 2.35 / 2.78 (12 sums and the reused pixels spill), (2, 2) 2.37 /
# 2.57 / 2.97 / 2.89.  Without the unrolled taps (1, 4) took 2.48 / 1.83 / 2.28 / 2.46.
SHAPES_256 = {(1, 5): 0.7, (1, 4): 0.62, (2, 2): 0.5, (1, 2): 0.45, (2, 1): 0.4, (1, 1): 0.3}
PF_DIST = 4
TILE_ELEMS = 32 * 2 * VEC  # size of the per-row tile buffer (max 16*B * tile_pitch(T))


class Cpu(NamedTuple):
    """What an algorithm needs to know about the host: vector width and register count, as
    LLVM will use them for the intrinsics (they bound the microkernel shapes)."""
    vbits: int
    nregs: int
    bf16: bool = False  # AVX512_BF16's dot product (direct_bf16.py)


def tile_pitch(nt):
    """Pixels per channel in a transposed tile: ``nt`` rounded up to whole vectors."""
    return -(-nt // VEC) * VEC


def _register_budget():
    """(vector bits, vector registers) of the host, as LLVM will use them for the intrinsic."""
    feats = llvm.get_host_cpu_features()
    if feats.get("avx512f"):
        return 512, 32
    if feats.get("avx"):
        return 256, 16
    return 128, 16



HOST = Cpu(*_register_budget(), bool(llvm.get_host_cpu_features().get("avx512bf16")))
_VBITS, _NREGS = HOST[:2]


def _table(cpu=HOST) -> dict:
    """The shapes measured for ``cpu``'s vector registers (``SHAPES`` or ``SHAPES_256``)."""
    return SHAPES if cpu.vbits >= 512 else SHAPES_256


def _shapes(dtype, cpu=HOST):
    """Microkernel shapes whose T*B vectors of sums fit the registers (with weights, broadcast)."""
    nvec = max(1, VEC * 8 * dtype.itemsize // cpu.vbits)  # registers per vector of 16 sums
    return {(b, t): e for (b, t), e in _table(cpu).items()
            if (t * b + b) * nvec + 1 <= cpu.nregs or (b, t) == (1, 1)}


# The instances of ``_tile_sums`` compiled for each use, as (B, T, taps it serves, loop form),
# tried in order (the first match runs; anything else runs (1, 1) per step).  Each instance
# costs ~0.6 s of compile on an empty cache, so the unrolled 3x3 loop (form 1 or 2, see
# ``_tile_sums``) exists only for the shapes 3x3 layers use most, and Winograd's products, run
# over long runs of tiles, get a few shapes rather than all fourteen.  Only the host's shapes
# that fit the registers in the kernel's dtype are compiled (``_cases``): no layer is given
# another (``_choose_shape``), so the rest would be compile time and machine code for nothing
# (float64 fits fewer; an AVX2 CPU has its own table).
_UNROLLED = {(2, 14): ((1, 2), (2, 2)), (2, 8): ((1, 1),), (2, 7): ((1, 1), (2, 2))}
_UNROLLED_256 = {(1, 5): ((1, 1), (2, 2)), (1, 4): ((1, 1), (2, 2))}
# The training kernels (convrt/train/kernels/conv_dw.py, conv_dx.py) lay their panels out for
# this one shape, on every CPU: it is compiled wherever a table lacks it (it spills on AVX2).
TRAINING = (2, 14)
_WIDE = _table() is SHAPES  # this CPU's tables: AVX-512's, or AVX2's
TRANSPOSED_CASES = tuple(
    case for (b, t) in _table() if (b, t) != (1, 1)
    for case in [(b, t, (tp,), form) for tp, form in (
        _UNROLLED if _WIDE else _UNROLLED_256).get((b, t), ())]
    + [(b, t, None, 0)]) + (() if TRAINING in _table() else (TRAINING + (None, 0),))
PRODUCT_SHAPES = ((2, 14), (2, 8), (2, 7), (2, 4), (2, 1)) if _WIDE else ((1, 5), (1, 4), (2, 1))
PRODUCT_CASES = tuple((b, t, None, 0) for b, t in PRODUCT_SHAPES + (
    () if TRAINING in PRODUCT_SHAPES else (TRAINING,)))


def _cases(table, dtype):
    """The instances of ``table`` whose shape fits the registers in ``dtype``, and the training
    kernels' shape (``TRAINING``)."""
    fits = _shapes(dtype)
    return tuple(case for case in table if case[:2] in fits or case[:2] == TRAINING)


@intrinsic
def _tile_sums(typingctx, xf, xb, offs, wp, blk, bp, tile, nblk, ntile, trans, taps):
    """``tile[t*W + k] = bp[blk, k] + sum_r xf[xb + offs[r] + t] * wp[blk, r, k]``, t < ntile,
    k < W = 16*nblk; with ``trans`` true the tile is stored transposed instead, one run of
    ``tile_pitch(ntile)`` pixels per channel: ``tile[k*P + t]`` (lanes t >= ntile hold garbage).

    ``trans`` must be a literal: it picks the table of instances (``TRANSPOSED_CASES`` or
    ``PRODUCT_CASES``) that (``nblk``, ``ntile``, ``taps``), run-time ints, are dispatched over
    (a shape outside it computes a (1, 1) tile only: callers pass ``_choose_shape``'s shapes or
    ``TRAINING``);
    arrays C-contiguous; ``xb`` uint64.
    bf16 (``direct_bf16.py``): with ``xf`` and ``wp`` uint32 (a bf16 pair per word, channels
    2c and 2c+1) each step is a broadcast pair and ``llvm.x86.avx512bf16.dpbf16ps.512`` per
    vector (two products into each float32 sum); ``bp`` and ``tile`` stay float32.
    Emits one loop over r carrying ``nblk*ntile`` vectors of 16 sums (``llvm.fmuladd``: NaN and
    Inf propagate as in a plain multiply-add).  The transpose is done in registers, 16x16 at a
    time (4 rounds of two-input shuffles), so that the store into NCHW runs along pixels.

    ``taps`` (a literal) > 0 says the reduction is 3x3 taps per channel: the loop runs over
    channels with the 9 taps unrolled and prefetches the rows ``PF_DIST`` channels ahead
    (``offs[9] - offs[0]`` apart).  With ``taps == 1`` (unit stride and dilation along W, at
    most 8 pixels) the tap offsets are ``offs[9c] + i*(offs[3]-offs[0]) + j``: every input load
    is a base register plus a constant, and LLVM reuses a loaded pixel across the three taps of
    a row.  With ``taps == 2`` (wider tiles, where that reuse would spill registers, or strided
    layers) each tap's offset is read from ``offs``.  The sums are the same, in the same order.
    """
    if not (isinstance(trans, types.BooleanLiteral)
            and all(isinstance(a, types.Integer) for a in (nblk, ntile, taps))):
        return None
    do_t = trans.literal_value
    # the sums' dtype (the bias's: bf16 pairs sum into float32)
    cases = _cases(TRANSPOSED_CASES if do_t else PRODUCT_CASES, np.dtype(bp.dtype.name))
    sig = types.void(xf, xb, offs, wp, blk, bp, tile, nblk, ntile, trans, taps)

    def codegen(context, builder, signature, args):
        aty = signature.args
        nbv, ntv, tpv = (context.cast(builder, args[i], aty[i], types.int64) for i in (7, 8, 10))
        i64 = ir.IntType(64)
        fn = builder.function
        end = fn.append_basic_block("tile.end")
        for n_b, n_t, taps_in, unroll in cases:  # the table as a chain of tests
            ok = builder.and_(builder.icmp_signed("==", nbv, ir.Constant(i64, n_b)),
                              builder.icmp_signed("==", ntv, ir.Constant(i64, n_t)))
            if taps_in is not None:
                ok = builder.and_(ok, builder.icmp_signed("==", tpv, ir.Constant(i64, taps_in[0])))
            hit = fn.append_basic_block("tile.%d_%d_%d" % (n_b, n_t, unroll))
            miss = fn.append_basic_block("tile.next")
            builder.cbranch(ok, hit, miss)
            builder.position_at_end(hit)
            emit(context, builder, signature, args, n_b, n_t, unroll)
            builder.branch(end)
            builder.position_at_end(miss)
        emit(context, builder, signature, args, 1, 1, 0)
        builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    def emit(context, builder, signature, args, n_b, n_t, unroll):
        """One instance: shape (n_b, n_t), loop form ``unroll``, into the current block."""
        assert unroll in (0, 1, 2) and (unroll != 1 or n_t <= 8)
        width = n_b * VEC
        aty = signature.args
        v = VecIR(context, builder, aty[5].dtype)  # the sums' type: the bias's
        c64, vt = v.c64, v.vt
        bf16 = aty[0].dtype == types.uint32  # bf16 pairs in, float32 sums (see below)
        if bf16:
            w32 = ir.VectorType(v.i32, VEC)
            p16 = ir.VectorType(ir.IntType(16), 2 * VEC)
            dot = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, p16, p16]),
                "llvm.x86.avx512bf16.dpbf16ps.512")
        xa, oa, wa, ba, ta = arrays(context, builder, aty, args, (0, 2, 3, 5, 6))
        nr = builder.extract_value(oa.shape, 0)
        blk = context.cast(builder, args[4], aty[4], types.int64)
        xb = context.cast(builder, args[1], aty[1], types.uint64)
        wrow = builder.gep(wa.data, [builder.mul(blk, builder.mul(nr, c64(width)))])
        bptr = builder.gep(ba.data, [builder.mul(blk, c64(width))])
        bvecs = [v.vload(bptr, c64(b * VEC)) for b in range(n_b)]
        undef = ir.Constant(vt, ir.Undefined)

        def step(xo, wr, accs):  # one reduction step; accs[t*n_b + b]
            if bf16:
                return step_bf16(xo, wr, accs)
            wvs = [v.vload(wr, c64(b * VEC)) for b in range(n_b)]
            pixels = [builder.load(builder.gep(xa.data, [builder.add(xo, c64(t))]))
                      for t in range(n_t)]
            return v.outer_fma(pixels, wvs, accs)

        def step_bf16(xo, wr, accs):  # two channels per step: one uint32 = a bf16 pair
            wvs = [builder.bitcast(builder.load(builder.bitcast(
                builder.gep(wr, [c64(b * VEC)]), w32.as_pointer()), align=4), p16)
                for b in range(n_b)]
            news = []
            for t in range(n_t):
                pair = builder.load(builder.gep(xa.data, [builder.add(xo, c64(t))]))
                splat = builder.bitcast(v.splat(pair, w32), p16)
                for b in range(n_b):
                    news.append(builder.call(dot, [accs[t * n_b + b], splat, wvs[b]]))
            return news

        def body(r, accs):
            xo = builder.add(xb, builder.load(builder.gep(oa.data, [r])))
            return step(xo, builder.gep(wrow, [builder.mul(r, c64(width))]), accs)

        def tap(c, i, j):  # input offset of tap (i, j) of channel c
            if unroll == 1:
                xc = builder.add(xb, builder.load(builder.gep(oa.data, [builder.mul(c, c64(9))])))
                return builder.add(builder.add(xc, builder.mul(drow, c64(i))), c64(j))
            k = builder.add(builder.mul(c, c64(9)), c64(3 * i + j))
            return builder.add(xb, builder.load(builder.gep(oa.data, [k])))

        def body3(c, accs):  # channel c: 9 taps
            ahead = builder.mul(cstr, c64(PF_DIST))
            for i in range(3):  # the rows (both phases if strided) PF_DIST channels ahead
                for j, e in ((0, 0), (0, n_t + 1)) if unroll == 1 else ((0, 0), (0, n_t),
                                                                          (1, 0), (1, n_t)):
                    v.prefetch(xa.data, builder.add(builder.add(tap(c, i, j), ahead), c64(e)))
            wc = builder.gep(wrow, [builder.mul(c, c64(9 * width))])
            for i in range(3):
                for j in range(3):
                    accs = step(tap(c, i, j), builder.gep(wc, [c64((3 * i + j) * width)]), accs)
            return accs

        inits = [bvecs[i % n_b] for i in range(n_t * n_b)]
        if unroll:
            drow = builder.sub(builder.load(builder.gep(oa.data, [c64(3)])),
                               builder.load(builder.gep(oa.data, [c64(0)])))
            cstr = builder.sub(builder.load(builder.gep(oa.data, [builder.select(  # offs[9]-offs[0]
                builder.icmp_unsigned(">", nr, c64(9)), c64(9), c64(0))])),
                builder.load(builder.gep(oa.data, [c64(0)])))
            finals = v.accumulate(builder.udiv(nr, c64(9)), inits, body3, "tile3")
        else:
            finals = v.accumulate(nr, inits, body, "tile")
        if not do_t:
            for i, fin in enumerate(finals):
                v.vstore(fin, ta.data, c64(i * VEC))
            return
        pitch = tile_pitch(n_t)
        for b in range(n_b):
            for g0 in range(0, n_t, VEC):
                rows = v.transpose16([finals[t * n_b + b] if t < n_t else undef
                                      for t in range(g0, g0 + VEC)])
                for k in range(VEC):  # row k now holds channel b*16+k of pixels g0..g0+15
                    v.vstore(rows[k], ta.data, c64((b * VEC + k) * pitch + g0))
        return

    return sig, codegen


def _choose_shape(mg, ow_n, dtype, allowed=None):
    """The (blocks, pixels) microkernel shape with the least estimated time per output row
    (zero-padded channels of the last block and recomputed pixels of the last tile count),
    among ``allowed`` if given; (1, 1) fits everything."""
    best, best_cost = (1, 1), None
    for (b, t), eff in _shapes(dtype).items():
        if t <= ow_n and (allowed is None or (b, t) in allowed):
            cost = -(-mg // (b * VEC)) * b * -(-ow_n // t) * t / eff
            if best_cost is None or cost < best_cost:
                best, best_cost = (b, t), cost
    return best



@njit
def tile_kernel_t(xf, xb, offs, wp, blk, bp, tile, nb_, nt, taps):
    """``_tile_sums`` of the direct kernel: a ``TRANSPOSED_CASES`` shape, stored transposed
    (``tile[k*tile_pitch(nt) + t]``).  A function of its own so that each worker calls (and
    compiles) one copy of the dispatch, as before it was table-driven."""
    _tile_sums(xf, xb, offs, wp, blk, bp, tile, nb_, nt, True, taps)


@njit
def tile_kernel(xf, xb, offs, wp, blk, bp, tile, nb_, nt):
    """``_tile_sums`` of Winograd's products: a ``PRODUCT_CASES`` shape, untransposed."""
    _tile_sums(xf, xb, offs, wp, blk, bp, tile, nb_, nt, False, 0)
