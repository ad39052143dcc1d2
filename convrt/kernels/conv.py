"""2-D convolution (ONNX ``Conv``) with a fused epilogue: bias, residual add, activation.

``Conv2d`` picks one algorithm per layer from the shapes alone (no im2col anywhere):

* **blocked** (dense and grouped convolutions with at least 8 output channels per group): weights
  are packed at construction into blocks of 16*B output channels ``(block, c*kH*kW, 16*B)``; the
  microkernel ``_tile_sums`` computes T output pixels x 16*B channels in T*B vector registers:
  the inner loop is B 16-wide weight loads and T broadcasts feeding T*B multiply-adds (B=2, T=14
  on the big layers).  It is written as LLVM IR
  with explicit 16-lane vectors (a numba ``@intrinsic``), so it neither depends on the SLP
  vectoriser nor inherits LLVM's preference for 256-bit vectors on Intel CPUs, and compiles in
  a fraction of a second.  The tile is transposed in registers (16x16 shuffles) so that the
  store into the NCHW output, with the epilogue applied, runs along pixels.  3x3 layers run the
  reduction per input channel with the 9 taps unrolled and a software prefetch of the rows 4
  channels ahead (``taps``): 8-25 % faster than one offset per step (the rows of the next
  channels are 1-2 cache lines each, far apart, which the hardware prefetcher does not follow).
  Big inputs with small weights take their work items row-major.
* **pixel** (``kernels/pixel.py``, ``use_pixel``): the mirror image, weights broadcast and 16
  pixels per vector, for 1x1 layers and short reductions (first layers); same input layout.
* **Winograd** F(2x2, 3x3) (``kernels/winograd.py``, ``use_winograd``) for deep 3x3 layers.
* depthwise and other narrow groups (fewer than 8 output channels per group) are handed to
  ``kernels/dw3x3.py`` (3x3, padding 1, stride 1 or 2) or ``kernels/depthwise.py``.

The blocked and pixel kernels read the input from a zero-bordered copy, laid out per row as
``stride_w`` phases (``row[p*Q + q] = padded[q*stride_w + p]``), so that consecutive output
pixels always read consecutive elements whatever the stride.  The copy is skipped when there is
no padding and unit stride; a 1x1 unit-stride unpadded convolution is run as one long row per
image.  The copy lives in one buffer per calling thread shared by every ``Conv2d``
(``_shared_scratch``): it stays warm from layer to layer, and one ``Conv2d`` may still be called
from several threads at once.  Since it holds another layer's data, the copy writes every
element it covers, borders included.

Parallel loops claim their work items dynamically from an atomic counter (``_claim_end``,
``work_split``) rather than splitting them statically: on a shared 2-vCPU machine a thread that
another process delays no longer leaves its fixed share undone while the other thread waits
(the region's closing barrier still waits for it to be scheduled once).  Claims are guided:
whole grains first, smaller ones as the loop runs out.  With two threads, one claims from the
front of the loop and the other from the back, so each keeps to its own part of the data until
they meet.  Every item computes the same outputs in the same order whichever thread runs it, so
results are bit-identical for any thread count.

Index arithmetic inside the kernels is ``uint64``: numba adds a negative-index wrap-around to
every signed index, which costs instructions and blocks vectorisation.
"""

import threading

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._ir import VEC, VecIR, arrays
from ._jit import FAST, njit, pjit

ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_CLIP, ACT_SIGMOID, ACT_TANH = range(6)
ACTIVATIONS = {"none": ACT_NONE, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY, "clip": ACT_CLIP,
               "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH}
# Microkernel shapes (B vectors of 16 output channels, T pixels) -> relative speed, measured on
# VGG-16 layers (benchmarks/conv_layers.py): per inner step B weight loads, T broadcasts and T*B
# multiply-adds.  B=4 (T=7) needs fewer loads still but streams 4x the weights per tile from L2
# and measured slower than B=2 on every VGG layer, so it is not offered.
SHAPES = {(2, 14): 1.0, (2, 8): 0.93, (2, 7): 0.92, (2, 4): 0.8, (2, 2): 0.6, (2, 1): 0.4,
          (1, 28): 0.88, (1, 16): 0.87, (1, 14): 0.86, (1, 8): 0.8, (1, 7): 0.78, (1, 4): 0.62,
          (1, 2): 0.45, (1, 1): 0.3}
PF_DIST = 4
TILE_ELEMS = 32 * 2 * VEC  # size of the per-row tile buffer (max 16*B * tile_pitch(T))
_U = np.uint64
_FM = set(FAST)  # numba wants a set, not a frozenset
TWO_ENDS = True


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


_VBITS, _NREGS = _register_budget()


def _shapes(dtype):
    """Microkernel shapes whose T*B vectors of sums fit the registers (with weights, broadcast)."""
    nvec = max(1, VEC * 8 * dtype.itemsize // _VBITS)  # registers per vector of 16 sums
    return {(b, t): e for (b, t), e in SHAPES.items()
            if (t * b + b) * nvec + 1 <= _NREGS or (b, t) == (1, 1)}


@intrinsic
def _tile_sums(typingctx, xf, xb, offs, wp, blk, bp, tile, nblk, ntile, trans, taps):
    """``tile[t*W + k] = bp[blk, k] + sum_r xf[xb + offs[r] + t] * wp[blk, r, k]``, t < ntile,
    k < W = 16*nblk; with ``trans`` true the tile is stored transposed instead, one run of
    ``tile_pitch(ntile)`` pixels per channel: ``tile[k*P + t]`` (lanes t >= ntile hold garbage).

    ``nblk``, ``ntile``, ``trans`` and ``taps`` must be literals; arrays C-contiguous; ``xb``
    uint64.
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
    if not (isinstance(ntile, types.IntegerLiteral) and isinstance(nblk, types.IntegerLiteral)
            and isinstance(trans, types.BooleanLiteral)
            and isinstance(taps, types.IntegerLiteral)):
        return None
    n_t = ntile.literal_value
    n_b = nblk.literal_value
    do_t = trans.literal_value
    unroll = taps.literal_value
    assert unroll in (0, 1, 2) and (unroll != 1 or n_t <= 8)
    width = n_b * VEC
    sig = types.void(xf, xb, offs, wp, blk, bp, tile, nblk, ntile, trans, taps)

    def codegen(context, builder, signature, args):
        aty = signature.args
        v = VecIR(context, builder, aty[0].dtype)
        c64, vt = v.c64, v.vt
        xa, oa, wa, ba, ta = arrays(context, builder, aty, args, (0, 2, 3, 5, 6))
        nr = builder.extract_value(oa.shape, 0)
        blk = context.cast(builder, args[4], aty[4], types.int64)
        xb = context.cast(builder, args[1], aty[1], types.uint64)
        wrow = builder.gep(wa.data, [builder.mul(blk, builder.mul(nr, c64(width)))])
        bptr = builder.gep(ba.data, [builder.mul(blk, c64(width))])
        bvecs = [v.vload(bptr, c64(b * VEC)) for b in range(n_b)]
        undef = ir.Constant(vt, ir.Undefined)

        def step(xo, wr, accs):  # one reduction step; accs[t*n_b + b]
            wvs = [v.vload(wr, c64(b * VEC)) for b in range(n_b)]
            pixels = [builder.load(builder.gep(xa.data, [builder.add(xo, c64(t))]))
                      for t in range(n_t)]
            return v.outer_fma(pixels, wvs, accs)

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
            return context.get_dummy_value()
        pitch = tile_pitch(n_t)
        for b in range(n_b):
            for g0 in range(0, n_t, VEC):
                rows = [finals[t * n_b + b] if t < n_t else undef for t in range(g0, g0 + VEC)]
                for bit in (1, 2, 4, 8):  # swap bit `bit` of the row and lane indices
                    lo_m = [k if not k & bit else VEC + (k ^ bit) for k in range(VEC)]
                    hi_m = [k ^ bit if not k & bit else VEC + k for k in range(VEC)]
                    lo_c = ir.Constant(ir.VectorType(v.i32, VEC), lo_m)
                    hi_c = ir.Constant(ir.VectorType(v.i32, VEC), hi_m)
                    new_rows = list(rows)
                    for r in range(VEC):
                        if not r & bit:
                            a, c = rows[r], rows[r | bit]
                            new_rows[r] = builder.shuffle_vector(a, c, lo_c)
                            new_rows[r | bit] = builder.shuffle_vector(a, c, hi_c)
                    rows = new_rows
                for k in range(VEC):  # row k now holds channel b*16+k of pixels g0..g0+15
                    v.vstore(rows[k], ta.data, c64((b * VEC + k) * pitch + g0))
        return context.get_dummy_value()

    return sig, codegen


@njit
def _tile_kernel_t(xf, xb, offs, wp, blk, bp, tile, nb_, nt, taps):
    """``_tile_sums`` for a runtime shape (nb_, nt), one of ``SHAPES``, stored transposed
    (``tile[k*tile_pitch(nt) + t]``).  ``taps`` (0, 1 or 2, see ``_tile_sums``) picks the
    unrolled 3x3 loop for the shapes 3x3 layers use most (each instance costs ~0.6 s of compile
    on an empty cache); the other shapes run the per-step loop."""
    if taps != 0 and nb_ == 2 and nt == 14:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 14, True, 2)
    elif taps == 1 and nb_ == 2 and nt == 8:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 8, True, 1)
    elif taps == 1 and nb_ == 2 and nt == 7:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 7, True, 1)
    elif taps == 2 and nb_ == 2 and nt == 7:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 7, True, 2)
    elif nb_ == 2 and nt == 14:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 14, True, 0)
    elif nb_ == 2 and nt == 8:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 8, True, 0)
    elif nb_ == 2 and nt == 7:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 7, True, 0)
    elif nb_ == 2 and nt == 4:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 4, True, 0)
    elif nb_ == 2 and nt == 2:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 2, True, 0)
    elif nb_ == 2 and nt == 1:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 2, 1, True, 0)
    elif nb_ == 1 and nt == 28:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 1, 28, True, 0)
    elif nb_ == 1 and nt == 16:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 1, 16, True, 0)
    elif nb_ == 1 and nt == 14:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 1, 14, True, 0)
    elif nb_ == 1 and nt == 8:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 1, 8, True, 0)
    elif nb_ == 1 and nt == 7:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 1, 7, True, 0)
    elif nb_ == 1 and nt == 4:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 1, 4, True, 0)
    elif nb_ == 1 and nt == 2:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 1, 2, True, 0)
    else:
        _tile_sums(xf, xb, offs, wp, blk, bp, tile, 1, 1, True, 0)


@njit(fastmath=_FM)
def _store_tile(tile, nt, tp, out, ob, ohw, jv, res, has_res, act, prm):
    """``out[ob + j*ohw + t] = act(tile[j*tp + t] + res[...])`` for t < nt, j < jv (ob, ohw
    uint64): the (already transposed) tile into NCHW, contiguous along pixels.

    ``prm`` = (alpha, clip_min, clip_max, 0, 1) in the array's dtype.  Every comparison is
    written so that NaN passes through unchanged (as numpy's maximum/clip do).
    """
    alpha, lo, hi, zero, one = prm[0], prm[1], prm[2], prm[3], prm[4]
    for j in range(jv):
        base = ob + _U(j) * ohw
        tb = j * tp
        if has_res:
            for t in range(nt):
                tile[tb + t] += res[base + _U(t)]
        if act == ACT_NONE:
            for t in range(nt):
                out[base + _U(t)] = tile[tb + t]
        elif act == ACT_RELU:
            for t in range(nt):
                v = tile[tb + t]
                out[base + _U(t)] = zero if v < zero else v
        elif act == ACT_LEAKY:
            for t in range(nt):
                v = tile[tb + t]
                out[base + _U(t)] = v * alpha if v < zero else v
        elif act == ACT_CLIP:
            for t in range(nt):
                v = tile[tb + t]
                v = lo if v < lo else v
                out[base + _U(t)] = hi if v > hi else v
        elif act == ACT_SIGMOID:
            for t in range(nt):
                out[base + _U(t)] = one / (one + np.exp(-tile[tb + t]))
        else:
            for t in range(nt):
                out[base + _U(t)] = np.tanh(tile[tb + t])


@intrinsic
def _store_tile_m(typingctx, tile, nt, out, ob, ohw, jv, res, has_res, act, prm):
    """``_store_tile`` of a tile with pitch 16 (``nt`` <= 16 pixels) and an activation of
    none, relu, leaky_relu or clip, as vector code: per channel one load from the tile, the
    residual (masked load) added, the activation applied (``VecIR.activate``) and one masked
    store of the ``nt`` pixels.  The scalar loops of ``_store_tile`` cost 5 % of small VGG's
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
        for code in range(4):  # one loop over the channels per (activation, residual or not)
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


@intrinsic
def _fetch_add(typingctx, ctr, val):
    """Atomically ``old = ctr[0]; ctr[0] += val; return old`` on an int64 array."""
    if not (isinstance(ctr, types.Array) and ctr.dtype == types.int64):
        return None
    sig = types.int64(ctr, val)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        v = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", a.data, v, "monotonic")

    return sig, codegen


@njit
def _claim_end(ctr, total, grain, side, done):
    """The next claim ``[u0, u1)`` of a loop of ``total`` items (empty: none left) for worker
    ``side`` (``_side``): 0 takes its items from the front, 1 from the back, -1 the shared
    counter's next ones; ``done`` = the items this worker took so far.

    Guided: an eighth of what is left, at most ``grain``, at least 1.  Early claims are whole
    grains; the last ones shrink, so the two threads finish together instead of one waiting
    out the other's last grain (up to a millisecond on VGG-16's big layers).  The counter sums
    every claim, so the two ends never overlap (both workers' ``done`` add up to at most
    ``total``); its plain read may be stale, which only changes a claim's size.

    Two ends rather than one shared front: each worker walks its own images, channel blocks
    (weights) and rows, and the two meet once, instead of interleaving neighbouring rows whose
    output cache lines and weights both cores would then hold (in-process A/B, 2026-11-27:
    ResNet-18 0.94-0.95, MobileNetV2 0.96, VGG-16 and the small VGG within the noise)."""
    g = min(grain, max(1, (total - ctr[0]) // 8))
    k = _fetch_add(ctr, g)
    if k >= total:
        return 0, 0
    g = min(g, total - k)
    if side < 0:
        return k, k + g
    if side == 0:
        return done, done + g
    return total - done - g, total - done


@njit
def _item(u, na, nb, a_fastest):
    """Work item ``u`` of a loop over images x a (``na`` values) x b (``nb`` values), as
    ``(a, b, image)``; a varies fastest if ``a_fastest``, else b does."""
    if a_fastest:
        a = u % na
        r = u // na
        return a, r % nb, r // nb
    b = u % nb
    r = u // nb
    return r % na, b, r // na


def _thread_getter():
    """numba's raw per-thread getter (0.15 us a call) instead of ``numba.get_num_threads`` (1-2
    us: it checks that the pool is launched every time); the public one if internals differ."""
    try:
        from numba.np.ufunc import parallel as par
        par._launch_threads()
        raw = par._get_num_threads
        if callable(raw) and raw() == numba.get_num_threads():
            return raw
    except Exception:  # pragma: no cover - depends on numba's internals
        pass
    return numba.get_num_threads


_num_threads = None


@njit
def _block(blk, nbg, mg, wd):
    """Channel block ``blk`` of ``wd`` channels (``nbg`` blocks per group of ``mg``) as (group,
    first output channel, channels it holds: ``wd`` but for a group's last block)."""
    g = blk // nbg
    bl = blk - g * nbg
    return g, g * mg + bl * wd, min(wd, mg - bl * wd)


def work_split(total):
    """``(threads, grain)`` for a loop of ``total`` work items claimed dynamically: the current
    numba thread count, and about 8 claims per thread.  Which thread runs an item never changes
    what the item computes, so results stay bit-identical whatever the split.  The grain is
    negative when ``TWO_ENDS`` is off (workers pass ``abs(grain)`` to ``_claim_end``)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _thread_getter()
    nthr = _num_threads()
    if nthr < 1:  # pragma: no cover - the raw getter before numba set this thread's count
        nthr = numba.get_num_threads()
    grain = max(1, total // (8 * nthr))
    return nthr, grain if TWO_ENDS else -grain


@njit
def _side(t, nthr, grain):
    """Which end worker ``t`` claims from (``_claim_end``): two workers take one end each;
    more workers, or a negative grain (``TWO_ENDS`` off), share the front.  Always int64: a
    prange index is uint64 in the parallel body, int64 when numba first types it, and one
    type keeps the workers it is passed to from compiling twice (uint64 with -1 would even
    unify to float64)."""
    if nthr == 2 and grain > 0:
        return np.int64(t)
    return np.int64(-1)


@pjit(fastmath=_FM)
def _run_blocked(xf, offs, wp, bp, out, res, has_res, act, prm, nb_, nt, n_img, nb, nbg, mg,
                 oh_n, ow_n, ogeo, nstride, gstride, rowstep, taps, row_major, pool, nthr,
                 grain):
    """Work items (image, block of 16*nb_ channels, output row), claimed ``grain`` at a time
    from a shared atomic counter by ``nthr`` workers (``_blocked_worker``; the body lives
    outside the prange, which keeps the parallel function's compile short).  With ``pool``
    the workers are ``_pooled_worker`` and (oh_n, ow_n) the pooled output's size: one parallel
    function for both (each costs ~4 s of compile on an empty cache)."""
    ctr = np.zeros(1, dtype=np.int64)
    g = abs(grain)
    for t in prange(nthr):
        side = _side(t, nthr, grain)
        if pool:
            _pooled_worker(ctr, g, xf, offs, wp, bp, out, res, has_res, act, prm, nb_, nt,
                           n_img, nb, nbg, mg, oh_n, ow_n, ogeo, nstride, gstride, rowstep,
                           taps, row_major, side)
        else:
            _blocked_worker(ctr, g, xf, offs, wp, bp, out, res, has_res, act, prm, nb_,
                            nt, n_img, nb, nbg, mg, oh_n, ow_n, ogeo, nstride, gstride,
                            rowstep, taps, row_major, side)


@njit(fastmath=_FM)
def _blocked_worker(ctr, grain, xf, offs, wp, bp, out, res, has_res, act, prm, nb_, nt, n_img,
                    nb, nbg, mg, oh_n, ow_n, ogeo, nstride, gstride, rowstep, taps, row_major,
                    side):
    """One worker of ``_run_blocked``: claims items until none is left; tiles of nt pixels.

    The last tile of a row is shifted left to end at the row's end: it recomputes a few pixels
    (writing the same values again) instead of reading or writing past the row.  ``ogeo``
    (int64) = the output's image, channel and row strides and its first pixel's offset: NCHW,
    or the next layer's zero-bordered input (``Conv2d.write_padded``).
    """
    ntiles = (ow_n + nt - 1) // nt
    ohw = _U(ogeo[1])
    total = n_img * nb * oh_n
    wd = nb_ * VEC
    tp = (nt + VEC - 1) // VEC * VEC  # tile_pitch(nt)
    tile = np.empty(TILE_ELEMS, dtype=wp.dtype)
    done = 0
    while True:
        u0, u1 = _claim_end(ctr, total, grain, side, done)
        if u1 <= u0:
            break
        done += u1 - u0
        for u in range(u0, u1):
            # row-major: (image, row, block), a row's input serves every block from L2;
            # else (image, block, row), a block's weights serve every row
            blk, oh, n = _item(u, nb, oh_n, row_major)
            g, m0, jv = _block(blk, nbg, mg, wd)
            xrow = n * nstride + g * gstride + oh * rowstep
            orow = n * ogeo[0] + m0 * ogeo[1] + oh * ogeo[2] + ogeo[3]
            for ti in range(ntiles):
                ow0 = min(ti * nt, ow_n - nt)
                _tile_kernel_t(xf, _U(xrow + ow0), offs, wp, blk, bp, tile, nb_, nt, taps)
                if tp == 16 and act <= ACT_CLIP:
                    _store_tile_m(tile, nt, out, _U(orow + ow0), ohw, jv, res, has_res, act,
                                  prm)
                else:
                    _store_tile(tile, nt, tp, out, _U(orow + ow0), ohw, jv, res, has_res, act,
                                prm)
            if ogeo[6]:
                _zero_border(out, ogeo[0], ogeo[1], ogeo[2], ogeo[4], ogeo[5], n, m0, jv, oh,
                             oh_n, ow_n)


@njit(fastmath=_FM)
def _store_pool(t0, t1, npool, tp, out, ob, phw, jv, act, prm):
    """``out[ob + j*phw + q] = act(max of t0/t1[j*tp + 2q], [j*tp + 2q + 1])`` for q < npool,
    j < jv: the 2x2 windows of two transposed tiles (rows 2p and 2p+1), NaN-sticky, in
    ``pool._max2x2_plane``'s order.  ``prm`` as ``conv._store_tile`` (its [3] is 0)."""
    zero = prm[3]
    for j in range(jv):
        base = ob + _U(j) * phw
        a = t0[j * tp:j * tp + 2 * npool]
        b = t1[j * tp:j * tp + 2 * npool]
        for q in range(npool):
            m = a[2 * q]
            v = a[2 * q + 1]
            m = v if ((v > m) | (v != v)) else m
            v = b[2 * q]
            m = v if ((v > m) | (v != v)) else m
            v = b[2 * q + 1]
            m = v if ((v > m) | (v != v)) else m
            if act == ACT_RELU:
                m = zero if m < zero else m
            out[base + _U(q)] = m


@njit(fastmath=_FM)
def _pooled_worker(ctr, grain, xf, offs, wp, bp, out, res, has_res, act, prm, nb_, nt, n_img,
                   nb, nbg, mg, ph_n, pw_n, ogeo, nstride, gstride, rowstep, taps, row_major,
                   side):
    """``_blocked_worker`` followed by a 2x2/2 max pool (``kernels/conv_pool.py``): work items
    (image, block, pooled row); per item the two convolution rows of a pooled row, in tiles of
    ``nt`` (even) pixels at even columns, pooled as they come.  No residual (``res`` and
    ``has_res`` keep the blocked worker's signature)."""
    ow_e = 2 * pw_n  # the convolution columns the pool reads (floor mode drops an odd last)
    ntiles = (ow_e + nt - 1) // nt
    total = n_img * nb * ph_n
    wd = nb_ * VEC
    tp = (nt + VEC - 1) // VEC * VEC  # tile_pitch(nt)
    phw = _U(ogeo[1])
    t0 = np.empty(TILE_ELEMS, dtype=wp.dtype)
    t1 = np.empty(TILE_ELEMS, dtype=wp.dtype)
    done = 0
    while True:
        u0, u1 = _claim_end(ctr, total, grain, side, done)
        if u1 <= u0:
            break
        done += u1 - u0
        for u in range(u0, u1):
            blk, ph, n = _item(u, nb, ph_n, row_major)
            g, m0, jv = _block(blk, nbg, mg, wd)
            xrow = n * nstride + g * gstride + 2 * ph * rowstep
            orow = n * ogeo[0] + m0 * ogeo[1] + ph * ogeo[2] + ogeo[3]
            for ti in range(ntiles):
                ow0 = min(ti * nt, ow_e - nt)
                _tile_kernel_t(xf, _U(xrow + ow0), offs, wp, blk, bp, t0, nb_, nt, taps)
                _tile_kernel_t(xf, _U(xrow + rowstep + ow0), offs, wp, blk, bp, t1, nb_, nt,
                               taps)
                _store_pool(t0, t1, nt // 2, tp, out, _U(orow + ow0 // 2), phw, jv, act, prm)
            if ogeo[6]:
                _zero_border(out, ogeo[0], ogeo[1], ogeo[2], ogeo[4], ogeo[5], n, m0, jv, ph,
                             ph_n, pw_n)


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


_SCRATCH = threading.local()


def _shared_scratch(n, dtype):
    """``n`` elements of this thread's scratch, shared by every Conv2d the thread calls (one
    layer runs at a time per thread): the padded input copy stays warm in L2 from layer to
    layer, and the process holds one such buffer per thread instead of one per layer.  Kernels
    that use it rewrite every element they read (``_pad_copy``, ``pixel.gather``)."""
    key = np.dtype(dtype).char
    buf = getattr(_SCRATCH, key, None)
    if buf is None or buf.shape[0] < n:
        buf = np.empty(n, dtype=dtype)  # exactly: VGG-16's largest copy is 13 MB
        setattr(_SCRATCH, key, buf)
    return buf[:n]


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


def use_winograd(in_shape, w_shape, strides, dilations, group):
    """Whether ``Conv2d`` runs a layer as Winograd F(2x2, 3x3): a function of the shapes only,
    so the choice (and hence the result, bit for bit) is the same on every run."""
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


def use_pixel(kernel, pads, strides, group, cg, m_all, oh_n, ow_n, dtype):
    """Whether ``Conv2d`` runs a layer on the pixel-vectorised kernel (``kernels/pixel.py``).

    * 1x1 unpadded layers: from 64 output pixels per image (run as one long row), or whole
      vectors of 16.  On 7x7 maps (49 pixels, computed as 64) the blocked kernel measured as
      fast or faster; on MobileNetV2's 112x112..14x14 maps the pixel kernel is 1.6-3.8x faster.
    * other kernels: a short reduction (``cg*kH*kW <= PIXEL_MAX_TAPS``, first layers) and
      output rows of 16+ pixels.
    """
    from .pixel import choose_shape
    if group != 1:
        return False
    kh, kw = kernel
    if kh == kw == 1 and not any(pads):
        npix = oh_n * ow_n
        return (npix >= 64 or npix % VEC == 0) and choose_shape(m_all, npix, dtype) is not None
    return cg * kh * kw <= PIXEL_MAX_TAPS and choose_shape(m_all, ow_n, dtype) is not None


PIXEL_MAX_TAPS = 32
PAD_SERIAL_ELEMS = 1 << 14  # input copies up to this size run on the calling thread
SMALL_ROW = 32  # _pad_plane: rows up to this long zero the whole plane, then copy the rows in
ROW_MAJOR_BYTES = 2 << 20  # see Conv2d: the blocked kernel's work order


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
        algo: "auto" (``use_pixel`` / ``use_winograd`` / ``dw3x3.supports`` decide from
            the shapes), "direct", "pixel" (group 1, output rows of 16+ pixels),
            "winograd" (3x3, stride 1, dilation 1, group 1 only) or "depthwise" (narrow
            groups: the general kernel of depthwise.py, never dw3x3.py).

    Calling ``conv(x, out, residual=None)`` writes ``act(conv(x) + b + residual)`` into ``out``;
    ``residual`` must not share memory with ``out`` (the last tile of a row rewrites a few
    pixels, and would read an already-updated residual).
    """

    def __init__(self, w, b, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                 group=1, activation="none", alpha=0.01, clip_min=-np.inf, clip_max=np.inf,
                 dtype=np.float32, algo="auto"):
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
        self._strides = (sh, sw)
        self.dtype = dtype
        self.act = ACTIVATIONS[activation]
        self._prm = np.array([alpha, clip_min, clip_max, 0.0, 1.0], dtype=dtype)
        self._dummy = np.zeros(1, dtype=dtype)
        mg = m_all // group
        kk = kh * kw
        if mg < 8 and algo != "winograd":  # depthwise / narrow groups: kernels/depthwise.py
            from . import dw3x3
            from .depthwise import SERIAL_MACS, Depthwise  # depthwise imports this module
            bias = np.zeros(m_all, dtype=dtype) if b is None else np.asarray(b, dtype=dtype)
            self.algo = "depthwise"
            if (algo == "auto" and n_img * c_n * h_n * w_n < 2**62 and w_n < dw3x3.MAX_WIDTH
                    and dw3x3.supports((kh, kw), (sh, sw), pads, (dh, dw), cg, mg, self.act)):
                serial = n_img * m_all * oh_n * ow_n * 9 < SERIAL_MACS
                self._dw = dw3x3.Depthwise3x3(w, bias, self.in_shape, sh, self.act, self._prm,
                                              dtype, serial)
                return
            self._dw = Depthwise(w, bias, self.in_shape, (sh, sw), (pt, pl, pb, pr), (dh, dw),
                                 group, self.act, self._prm, dtype)
            return

        sane = max(n_img * c_n * (h_n + pt + pb) * (w_n + pl + pr), n_img * m_all * oh_n * ow_n)
        if (algo == "auto" and sane < 2**61
                and use_pixel((kh, kw), pads, strides, group, cg, m_all, oh_n, ow_n, dtype)):
            algo = "pixel"

        # ---- input layout -------------------------------------------------------------------
        self._copy = not (sw == 1 and pt == pl == pb == pr == 0)
        # a strided unpadded 1x1 layer (ResNet's downsamples) gathers the pixels it reads into
        # one long row per plane instead: a quarter of the input, where the phase-split copy
        # writes all of it (14x14x256 -> 7x7: 9 us against 66)
        self._gather = kh == kw == 1 and not any(pads) and (sh, sw) != (1, 1)
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
        self._gstride = cg * cstride
        self._rowstep = sh * rl
        koff = [i * dh * rl + ((j * dw) % sw) * q_n + (j * dw) // sw
                for i in range(kh) for j in range(kw)]
        self._offs = np.array([c * cstride + o for c in range(cg) for o in koff], dtype=np.uint64)
        self._tls = threading.local()

        bias = np.zeros(m_all, dtype=dtype) if b is None else np.asarray(b, dtype=dtype)
        assert bias.shape == (m_all,)
        if algo == "auto":
            algo = "winograd" if use_winograd(self.in_shape, w.shape, strides, dilations,
                                              group) else "direct"
        self.algo = algo
        if algo == "winograd":
            from .winograd import WINO_SHAPES, Winograd  # winograd imports this module
            assert kh == kw == 3 and sh == sw == dh == dw == 1 and group == 1
            tpi = -(-oh_n // 2) * -(-ow_n // 2)
            self._wino = Winograd(w, bias, self.in_shape, (pt, pl, pb, pr),
                                  _choose_shape(m_all, tpi, dtype, WINO_SHAPES), dtype)
            self._copy = False
            return
        if algo == "pixel":
            from . import pixel  # pixel imports this module
            self._shape = pixel.choose_shape(m_all, self._ow, dtype)
            if group != 1 or self._shape is None:
                raise ValueError("algo='pixel' needs group 1 and output rows of 16+ pixels")
            mr, nv = self._shape
            self._wp, self._bp = pixel.pack_weights(w, bias, mr, dtype)
            nmb = self._bp.shape[0] // mr
            pix_major = int(c_n * h_n * w_n * dtype.itemsize > pixel.PIX_MAJOR_BYTES
                            or cg * kk > m_all)
            self._items = n_img * self._oh * -(-self._ow // (nv * VEC)) * nmb
            self._pgeo = np.array([n_img, self._oh, self._ow, m_all, mr, nv, nmb, self.act,
                                   pix_major, self._nstride, self._rowstep, 1, *self._ogeo],
                                  dtype=np.int64)
            return
        # ---- weights ------------------------------------------------------------------------
        # mg >= 8 here: narrower groups went to Depthwise above
        self._shape = _choose_shape(mg, self._ow, dtype)
        wd = self._shape[0] * VEC
        nbg = -(-mg // wd)
        nb = group * nbg
        wp = np.zeros((nb, cg * kk, wd), dtype=dtype)
        bp = np.zeros((nb, wd), dtype=dtype)
        w3 = w.reshape(group, mg, cg * kk)
        b2 = bias.reshape(group, mg)
        for g in range(group):
            for bl in range(nbg):
                j = min(wd, mg - bl * wd)
                wp[g * nbg + bl, :, :j] = w3[g, bl * wd: bl * wd + j].T
                bp[g * nbg + bl, :j] = b2[g, bl * wd: bl * wd + j]
        self._wp, self._bp, self._nb, self._nbg, self._mg = wp, bp, nb, nbg, mg
        # 3x3 taps unrolled per channel: constant tap offsets need unit stride and dilation
        # along W (see _tile_sums)
        self._taps = 0 if (kh, kw) != (3, 3) else 1 if sw == dw == 1 else 2
        # Work order: (image, row, block) when an image's input would not stay in L2 through
        # every block's rows but all the weights do; measured 5 % faster on VGG-16's 224x224x64
        # and 112x112x128 layers, 3-7 % slower on 56x56x256 (2.4 MB of weights).
        self._row_major = (self._nstride * dtype.itemsize > ROW_MAJOR_BYTES
                           and wp.nbytes <= ROW_MAJOR_BYTES // 2)

    # -- zero-bordered handoff between layers (runtime/plan.py) ---------------------------------
    # When one convolution's output is read by the next alone, the plan can have the first
    # write straight into the zero-bordered layout the second would otherwise copy its input
    # into (``_pad_copy``: 4-9 % of a 3x3 layer's time, more where the copy's planes were
    # written by the other core).  The writer stores the border's zeros with its rows
    # (``_zero_border``), so the plan shares the buffer with other values like any other.
    x_shape = property(lambda self: (-1,) if self._padded_in else self.in_shape)
    y_shape = property(lambda self: (-1,) if self._padded_out else self.out_shape)
    _padded_in = _padded_out = False

    def padded_input(self):
        """``(elements, geometry)`` of the zero-bordered input this layer copies its input
        into, when another layer could write it instead (blocked or pixel kernel, unit stride
        along W); else None.  ``geometry`` = (padded rows, row length, top, left, plane
        stride)."""
        if self.algo not in ("direct", "pixel") or not self._copy or self._strides[1] != 1:
            return None
        hp, q_n, _, pt, pl, cstride = self._geom
        return self._xs_len, (hp, q_n, pt, pl, cstride)

    def read_padded(self):
        """From now on the input arrives flat, already in the ``padded_input`` layout."""
        assert self.padded_input() is not None
        self._padded_in = True
        self._copy = False

    def can_write_padded(self) -> bool:
        """Whether this layer can store its output into another layer's padded input: the
        blocked and pixel kernels on 2-D rows, without a residual (read at the output's own
        offsets)."""
        return self.algo in ("direct", "pixel") and self._oh == self.out_shape[2]

    def write_padded(self, geometry):
        """From now on write the output flat, into the ``padded_input`` layout ``geometry``
        of the layer that reads it (whose input shape is this layer's output shape)."""
        assert self.can_write_padded()
        self._ogeo[:] = padded_strides(self.out_shape, geometry)
        if self.algo == "pixel":
            self._pgeo[12:] = self._ogeo
        self._padded_out = True

    def _scratch(self):
        return _shared_scratch(self._xs_len, self.dtype)

    def scratch_bytes(self) -> int:
        """Bytes of one calling thread's input copy (0 when the input is read in place)."""
        for alt in ("_dw", "_wino"):
            if hasattr(self, alt):
                return getattr(self, alt).scratch_bytes()
        return self._xs_len * self.dtype.itemsize if self._copy or self._gather else 0

    def prepare(self, x):
        """The flat input the blocked and pixel kernels read: the zero-bordered copy, the
        gathered pixels (both in this thread's scratch) or ``x`` itself."""
        n_img, c_n, h_n, w_n = self.in_shape
        if self._padded_in:
            return x
        if self._copy:
            xf = self._scratch()
            copy = _pad_copy_serial if self._xs_len <= PAD_SERIAL_ELEMS else _pad_copy
            copy(x.reshape(-1), xf, n_img, c_n, h_n, w_n, *self._geom)
            return xf
        if self._gather:
            from .pixel import gather
            xf = self._scratch()
            (sh, sw), (oh_n, ow_n) = self._strides, self.out_shape[2:]
            gather(x.reshape(-1), xf, n_img * c_n, h_n, w_n, oh_n, ow_n, sh, sw)
            return xf
        return x.reshape(-1)

    def __call__(self, x, out, residual=None):
        if self.algo == "depthwise":
            return self._dw(x, out, residual)
        n_img = self.in_shape[0]
        if self.algo == "winograd":
            self._wino(x, out, residual, self.act, self._prm, self._tls)
            return out
        xf = self.prepare(x)
        of = out.reshape(-1)
        if self._padded_out:
            zero_spare(of, self._ogeo, n_img)
        has_res = residual is not None
        res = residual.reshape(-1) if has_res else self._dummy
        if self.algo == "pixel":
            from . import pixel
            nthr, grain = work_split(self._items)
            args = (xf, self._offs, self._wp, self._bp, of, res, has_res, self._prm, self._pgeo)
            if nthr == 1:
                pixel._worker(np.zeros(1, dtype=np.int64), abs(grain), *args, -1)
            else:
                pixel.run(*args, nthr, grain)
            return out
        nthr, grain = work_split(n_img * self._nb * self._oh)
        args = (xf, self._offs, self._wp, self._bp, of, res, has_res, self.act, self._prm,
                self._shape[0], self._shape[1], n_img, self._nb, self._nbg, self._mg,
                self._oh, self._ow, self._ogeo, self._nstride, self._gstride,
                self._rowstep, self._taps, self._row_major)
        if nthr == 1:  # a serial step (runtime/plan.py): no parallel region to launch
            _blocked_worker(np.zeros(1, dtype=np.int64), abs(grain), *args, -1)
        else:
            _run_blocked(*args, False, nthr, grain)
        return out
