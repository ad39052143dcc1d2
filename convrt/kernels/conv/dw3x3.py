"""3x3 depthwise convolution, padding 1, stride 1 or 2: MobileNet's layer, one row at a time.

The general depthwise kernel (``kernels/depthwise.py``) copies each plane into a zero-bordered
scratch, sums the nine taps over the flattened plane and then compacts the rows into the
output: three passes, and on 7x7..28x28 maps the short rows leave most of the time in loop
set-up and scalar remainders.  Here the LLVM-level microkernel ``_dw3_plane`` writes
the output rows straight from the input, in 16-lane vectors along each row:

* the zero padding is never materialised: lanes that fall outside the row, and whole rows that
  fall outside the plane, are masked off (``llvm.masked.load`` reads nothing for a masked lane
  and yields 0 there, which is what the padding holds);
* stride 1 on AVX-512 (``SHIFTS``) loads each input row once per vector of outputs, one vector
  ahead: the left and right neighbours are that vector shifted by one lane with the last lane of
  the previous one and the first of the next (two shuffles instead of two more unaligned loads:
  3 loads per output vector, not 9).  With AVX2 a 16-lane vector is two registers and a one-lane
  shift across them costs four shuffles, so there the neighbours are three unaligned loads per
  input row (a 144-channel 56x56 layer: 0.74 -> 0.34 ms with the plain stores below);
* stride 2 loads 32 consecutive inputs and splits them into even and odd columns with two
  shuffles; the left neighbours are the odd columns shifted by one lane, carried over from the
  previous vector (the row's last vector, shifted back to end at the row's end like stride 1's,
  loads its own);
* bias, residual and activation (any of ``activations.IN_REGISTERS``: all but tanh) are applied
  in registers and the row is written one vector at a time: no scratch, no second pass;
* loads and stores are masked only where a vector reaches past a row's ends or the plane's
  first or last row needs a missing neighbour row; every other vector takes plain ones (AVX2
  has no cheap masked store: masked everywhere, a 56x56 layer spent more time storing than
  multiplying).

One call of ``_dw3_plane`` does a whole plane, so the weights and the activation's constants are
loaded once per plane.  Planes (image, channel) are claimed dynamically by the workers, as in
the other conv kernels; each plane is computed by the same instructions whichever thread runs it
(bitwise reproducible).
Every comparison in the activations lets NaN through, as numpy's maximum/clip do.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ...activations import (CLIP, HARD_SIGMOID, IN_REGISTERS, LEAKY, NONE, RELU, SIGMOID,
                            SILU)
from .._jit import njit, pjit
from ._base import ConvAlgorithm
from ._ir import VEC, VecIR, arrays
from ._microkernel import HOST
from ._schedule import _claim_end, _side, serial, work_split

SHIFTS = int(HOST.vbits >= 512)  # stride 1's neighbours: lane shifts (AVX-512) or loads (AVX2)


@intrinsic
def _dw3_plane(typingctx, x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
               shifts, stride, act):
    """One plane: ``out[oo + y*ow + j] = act(b + res[...] + sum_{i,k} w[i,k] *
    x[xo + (y*s - 1 + i)*w_n + j*s - 1 + k])`` for y < oh_n, j < ow_n, x read as 0 outside the
    ``h_n x w_n`` plane (the padding); the residual only if ``has_res`` (else it is never read).

    ``wb[wo:wo+9]`` are the taps, ``wb[wo+9]`` the bias; ``prm`` = (alpha, clip_min, clip_max)
    (hard_sigmoid / hard_swish: alpha, beta in the first two).
    ``shifts`` (0/1: stride 1's neighbours by lane shifts, see the module's docstring), ``stride``
    (1 or 2) and ``act`` must be literals; offsets int64, ``w_n`` < 2**31.
    """
    if not all(isinstance(v, types.IntegerLiteral) for v in (shifts, stride, act)):
        return None
    s_l, a_l, sh_l = stride.literal_value, act.literal_value, shifts.literal_value
    sig = types.void(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm, shifts,
                     stride, act)

    def codegen(context, builder, signature, args):
        aty = signature.args
        v = VecIR(context, builder, aty[0].dtype)
        c64, vt, vpt, i1, i32, i64, splat = v.c64, v.vt, v.vpt, v.i1, v.i32, v.i64, v.splat
        mt = ir.VectorType(i1, VEC)
        it = ir.VectorType(i32, VEC)
        mload = v.intrinsic("llvm.masked.load", vt, [vpt, i32, mt, vt], ".p0")
        mstore = v.intrinsic("llvm.masked.store", ir.VoidType(), [vt, vpt, i32, mt], ".p0")
        fma = v.fma
        align = ir.Constant(i32, 4 if isinstance(v.ft, ir.FloatType) else 8)
        zero = ir.Constant(vt, None)

        def arg(i, kind=types.int64):
            return context.cast(builder, args[i], aty[i], kind)

        xa, oa, ra, wa, pa = arrays(context, builder, aty, args, (0, 6, 8, 10, 12))
        xo, h_n, w_n, oh_n, ow_n, oo, wo = (arg(i) for i in (1, 2, 3, 4, 5, 7, 11))
        wts = [splat(builder.load(builder.gep(wa.data, [builder.add(wo, c64(k))])))
               for k in range(10)]
        alpha, lo, hi = (splat(builder.load(builder.gep(pa.data, [c64(k)]))) for k in range(3))
        iota = ir.Constant(it, list(range(VEC)))
        w_s = splat(builder.trunc(w_n, i32), it)
        ow_s = splat(builder.trunc(ow_n, i32), it)
        nch = builder.udiv(builder.add(ow_n, c64(VEC - 1)), c64(VEC))

        def load(base, off, mask):  # masked vector load of x[base + off + lane]
            ptr = builder.bitcast(builder.gep(xa.data, [builder.add(base, off)]), vpt)
            return builder.call(mload, [ptr, align, mask, zero])

        def sums(taps):  # bias + the nine taps in order, as a one-element list (for either:
            # the paths join on the sum, not on nine vectors that AVX2 would have to spill)
            acc = wts[9]
            for t in range(9):
                acc = builder.call(fma, [wts[t], taps[t], acc])
            return [acc]

        entry = builder.block
        yloop = builder.append_basic_block("dw3.rows")
        kloop = builder.append_basic_block("dw3.vecs")
        ynext = builder.append_basic_block("dw3.next")
        done = builder.append_basic_block("dw3.done")
        nonempty = builder.and_(builder.icmp_signed(">", oh_n, c64(0)),
                                builder.icmp_signed(">", nch, c64(0)))
        builder.cbranch(nonempty, yloop, done)

        builder.position_at_end(yloop)  # per output row: which input rows exist, where
        y = builder.phi(i64)
        y.add_incoming(c64(0), entry)
        r = builder.sub(builder.mul(y, c64(s_l)), c64(1))
        present, bases = [], []
        for i in range(3):
            ri = builder.add(r, c64(i))
            ok = builder.and_(builder.icmp_signed(">=", ri, c64(0)),
                              builder.icmp_signed("<", ri, h_n))
            present.append(splat(ok, mt))
            safe = builder.select(ok, ri, c64(0))
            bases.append(builder.add(xo, builder.mul(safe, w_n)))
        inner = builder.and_(builder.icmp_signed(">=", r, c64(0)),  # all three rows exist
                             builder.icmp_signed("<", builder.add(r, c64(2)), h_n))
        orow = builder.add(oo, builder.mul(y, ow_n))
        shifts = s_l == 1 and sh_l
        firsts = []
        if shifts:  # each row's first vector; later ones are loaded one step ahead
            cm0 = builder.icmp_signed("<", iota, w_s)
            firsts = [load(bases[i], c64(0), builder.and_(cm0, present[i])) for i in range(3)]
        row_end = builder.block
        builder.branch(kloop)

        builder.position_at_end(kloop)  # per vector of 16 outputs along the row
        k = builder.phi(i64)
        k.add_incoming(c64(0), row_end)
        prev, cur = [], []
        if s_l == 2 or shifts:  # per input row: the previous vector's odd columns (stride 2)
            for i in range(3):  # or the previous vector (0 = the left padding) and this one
                p = builder.phi(vt)
                p.add_incoming(zero, row_end)
                prev.append(p)
                if shifts:
                    c = builder.phi(vt)
                    c.add_incoming(firsts[i], row_end)
                    cur.append(c)
        x0 = builder.mul(k, c64(VEC))
        wide = ir.Constant(i1, 0)
        if s_l == 1 and not shifts:  # a row of 17+ inputs with both neighbour rows: its last
            # vector is shifted left to end at the row's end (it recomputes a few outputs, the
            # same way), so every load and store of the row is a plain one
            wide = builder.and_(inner, builder.icmp_signed(">=", w_n, c64(VEC + 1)))
            x0 = builder.select(wide, builder.select(
                builder.icmp_signed("<", x0, builder.sub(ow_n, c64(VEC))), x0,
                builder.sub(ow_n, c64(VEC))), x0)
        shifted = ir.Constant(i1, 0)
        if s_l == 2:  # likewise a row of 17+ outputs whose inputs all lie in the row (w_n >=
            # 2*ow_n: even widths): its last vector ends at the row's end, and reads its left
            # neighbours (the odd columns one lane back) by two more loads, since the vector
            # before it is not the one just before (a 56-wide plane: 0.19 -> 0.09 ms, the
            # masked path cost more than the rest of the layer)
            wide = builder.and_(inner, builder.and_(
                builder.icmp_signed(">=", ow_n, c64(VEC + 1)),
                builder.icmp_signed(">=", w_n, builder.mul(ow_n, c64(2)))))
            last = builder.sub(ow_n, c64(VEC))
            shifted = builder.and_(wide, builder.icmp_signed(">", x0, last))
            x0 = builder.select(shifted, last, x0)
        ox = builder.add(splat(builder.trunc(x0, i32), it), iota)
        omask = builder.icmp_signed("<", ox, ow_s)
        nexts = []
        if shifts:  # the next vector's columns (one load per row and step; the left and
            # right neighbours are this vector shifted by a lane from the previous / next one)
            nm = builder.icmp_signed("<", builder.add(ox, ir.Constant(it, [VEC] * VEC)), w_s)
            taps, odds = [], []
            for i in range(3):
                nxt = load(bases[i], builder.add(x0, c64(VEC)), builder.and_(nm, present[i]))
                mid = cur[i]
                left = builder.shuffle_vector(prev[i], mid, ir.Constant(
                    it, list(range(VEC - 1, 2 * VEC - 1))))
                right = builder.shuffle_vector(mid, nxt, ir.Constant(it, list(range(1, VEC + 1))))
                taps += [left, mid, right]
                odds.append(mid)  # the next step's previous vector
                nexts.append(nxt)
        elif s_l == 1:
            # per input row the three neighbours x[j-1], x[j], x[j+1] as three loads (on AVX2
            # a one-lane shift of a 16-lane vector across two registers costs more shuffles
            # than the loads it saves)
            inside = builder.and_(builder.icmp_signed(">=", x0, c64(1)),
                                  builder.icmp_signed("<=", builder.add(x0, c64(VEC + 1)), w_n))
            zero_left = ir.Constant(it, list(range(VEC - 1, 2 * VEC - 1)))  # (0, x[0..14])
            zero_right = ir.Constant(it, list(range(1, VEC + 1)))  # (x[1..15], 0)

            def edge(first):  # the row's first or (shifted) last vector: the padding by a shift
                vals = []
                for i in range(3):
                    mid = v.vload(xa.data, builder.add(bases[i], x0))
                    if first:
                        left = builder.shuffle_vector(zero, mid, zero_left)
                        right = v.vload(xa.data, builder.add(bases[i], builder.add(x0, c64(1))))
                    else:
                        left = v.vload(xa.data, builder.add(bases[i], builder.sub(x0, c64(1))))
                        right = builder.shuffle_vector(mid, zero, zero_right)
                    vals += [left, mid, right]
                return sums(vals)

            def plain_rows():
                return v.either(inside, lambda: rows(False), lambda: v.either(
                    builder.icmp_signed("==", x0, c64(0)), lambda: edge(True),
                    lambda: edge(False), "dw3.edge"), "dw3.in")

            def rows(masked):
                vals = []
                for i in range(3):
                    for d in (-1, 0, 1):
                        at = builder.add(x0, c64(d))
                        if masked:
                            cols = builder.add(ox, ir.Constant(it, [d] * VEC))
                            m = builder.and_(builder.and_(
                                builder.icmp_signed(">=", cols, ir.Constant(it, [0] * VEC)),
                                builder.icmp_signed("<", cols, w_s)), present[i])
                            vals.append(load(bases[i], at, m))
                        else:
                            vals.append(v.vload(xa.data, builder.add(bases[i], at)))
                return sums(vals)

            acc = v.either(wide, plain_rows, lambda: rows(True), "dw3.ld")[0]
            odds = []
        else:
            x2 = builder.mul(x0, c64(2))
            ia = builder.add(splat(builder.trunc(x2, i32), it), iota)
            am = builder.icmp_signed("<", ia, w_s)
            bm = builder.icmp_signed("<", builder.add(ia, ir.Constant(it, [VEC] * VEC)), w_s)
            fast = builder.and_(inner, builder.icmp_signed(
                "<=", builder.add(x2, c64(2 * VEC)), w_n))

            evens = ir.Constant(it, list(range(0, 2 * VEC, 2)))

            def pairs(masked, own_left=False):  # the sum and the rows' odd columns (carried)
                taps, odds = [], []
                for i in range(3):
                    va, vb = ((load(bases[i], off, builder.and_(m, present[i])) if masked
                               else v.vload(xa.data, builder.add(bases[i], off)))
                              for off, m in ((x2, am), (builder.add(x2, c64(VEC)), bm)))
                    mid = builder.shuffle_vector(va, vb, evens)
                    right = builder.shuffle_vector(va, vb,
                                                   ir.Constant(it, list(range(1, 2 * VEC, 2))))
                    if own_left:  # x[2j - 1]: the even lanes of the inputs one column back
                        back = builder.add(bases[i], builder.sub(x2, c64(1)))
                        left = builder.shuffle_vector(
                            v.vload(xa.data, back),
                            v.vload(xa.data, builder.add(back, c64(VEC))), evens)
                    else:
                        left = builder.shuffle_vector(
                            prev[i], right, ir.Constant(it, list(range(VEC - 1, 2 * VEC - 1))))
                    taps += [left, mid, right]
                    odds.append(right)
                return sums(taps) + odds

            joined = v.either(fast, lambda: v.either(
                shifted, lambda: pairs(False, True), lambda: pairs(False), "dw3.sh"),
                lambda: pairs(True), "dw3.ld")
            acc, odds = joined[0], joined[1:]
        if shifts:
            acc = sums(taps)[0]
        opos = builder.add(orow, x0)
        whole = builder.icmp_signed("<=", builder.add(x0, c64(VEC)), ow_n)
        def with_residual(acc=acc):  # plain load for a whole vector, else masked
            res = v.either(whole, lambda: [v.vload(ra.data, opos)], lambda: [builder.call(
                mload, [v.vptr(ra.data, opos), align, omask, zero])], "dw3.rl")[0]
            return [builder.fadd(acc, res)]

        acc = v.either(arg(9, types.boolean), with_residual, lambda acc=acc: [acc], "dw3.res")[0]
        acc = v.activate(acc, a_l, (alpha, lo, hi, zero))

        def store(masked):
            if masked:
                builder.call(mstore, [acc, v.vptr(oa.data, opos), align, omask])
            else:
                v.vstore(acc, oa.data, opos)
            return []

        v.either(whole, lambda: store(False), lambda: store(True), "dw3.st")
        kn = builder.add(k, c64(1))
        kend = builder.block
        k.add_incoming(kn, kend)
        for p, o in zip(prev, odds):
            p.add_incoming(o, kend)
        for c, nx in zip(cur, nexts):
            c.add_incoming(nx, kend)
        builder.cbranch(builder.icmp_signed("<", kn, nch), kloop, ynext)

        builder.position_at_end(ynext)
        yn = builder.add(y, c64(1))
        y.add_incoming(yn, ynext)
        builder.cbranch(builder.icmp_signed("<", yn, oh_n), yloop, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@njit
def _plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm, stride, act):
    """``_dw3_plane`` for a runtime (stride, act), act one of ``IN_REGISTERS``."""
    if stride == 1:
        if act == NONE:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 1, 0)
        elif act == RELU:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 1, 1)
        elif act == LEAKY:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 1, 2)
        elif act == CLIP:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 1, 3)
        elif act == SIGMOID:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 1, 4)
        elif act == SILU:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 1, 6)
        elif act == HARD_SIGMOID:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 1, 7)
        else:  # HARD_SWISH (supports() admits no tanh)
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 1, 8)
    else:
        if act == NONE:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 2, 0)
        elif act == RELU:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 2, 1)
        elif act == LEAKY:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 2, 2)
        elif act == CLIP:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 2, 3)
        elif act == SIGMOID:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 2, 4)
        elif act == SILU:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 2, 6)
        elif act == HARD_SIGMOID:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 2, 7)
        else:  # HARD_SWISH (supports() admits no tanh)
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm,
                       SHIFTS, 2, 8)


@njit
def _worker(ctr, grain, x, out, res, has_res, wb, prm, geo, side):
    """Claims planes (image, channel) ``grain`` at a time until none is left.

    ``geo`` (int64) = images, channels, h, w, oh, ow, stride, act.
    """
    n_img, c_n, h_n, w_n, oh_n, ow_n, st, act = (geo[0], geo[1], geo[2], geo[3], geo[4],
                                                 geo[5], geo[6], geo[7])
    total = n_img * c_n
    hw = h_n * w_n
    ohw = oh_n * ow_n
    done = 0
    while True:
        u0, u1 = _claim_end(ctr, total, abs(grain), side, done)
        if u1 <= u0:
            break
        done += u1 - u0
        for u in range(u0, u1):
            _plane(x, u * hw, h_n, w_n, oh_n, ow_n, out, u * ohw, res, has_res, wb,
                   (u % c_n) * 10, prm, st, act)


@pjit
def _run_par(x, out, res, has_res, wb, prm, geo, nthr, grain):
    ctr = np.zeros(1, dtype=np.int64)
    for t in prange(nthr):
        _worker(ctr, grain, x, out, res, has_res, wb, prm, geo, _side(t, nthr, grain))


@njit
def _run_seq(x, out, res, has_res, wb, prm, geo, nthr, grain):
    _worker(np.zeros(1, dtype=np.int64), grain, x, out, res, has_res, wb, prm, geo, -1)


def supports(kernel_shape, strides, pads, dilations, cg, mg, act):
    """Whether a depthwise layer fits this kernel: 3x3, padding 1 all round, stride 1 or 2 (both
    axes alike), no dilation, one input and one output channel per group, and an activation
    the microkernel applies in registers."""
    return (tuple(kernel_shape) == (3, 3) and tuple(pads) == (1, 1, 1, 1)
            and tuple(strides) in ((1, 1), (2, 2)) and tuple(dilations) == (1, 1)
            and cg == 1 and mg == 1 and act in IN_REGISTERS)


MAX_WIDTH = 2**31 - 2 * VEC  # column indices are int32 lanes


class Depthwise3x3(ConvAlgorithm):
    """A layer ``supports`` accepts, bound once."""

    name = "depthwise"  # what Conv2d.algo has always said for this family

    @classmethod
    def accepts(cls, layer, cpu) -> bool:
        return (layer.n_img * layer.c_n * layer.h_n * layer.w_n < 2**62
                and layer.w_n < MAX_WIDTH
                and supports((layer.kh, layer.kw), layer.strides, layer.pads, layer.dilations,
                             layer.cg, layer.mg, layer.act))

    def __init__(self, layer, w, bias):
        super().__init__(layer, w, bias)
        dtype, act, stride = layer.dtype, layer.act, layer.sh
        n_img, c_n, h_n, w_n = layer.in_shape
        oh_n, ow_n = layer.oh_n, layer.ow_n
        outs = n_img * layer.m_all * oh_n * ow_n
        self._wb = np.empty((c_n, 10), dtype=dtype)
        self._wb[:, :9] = w.reshape(c_n, 9)
        self._wb[:, 9] = bias
        self._wb = self._wb.reshape(-1)
        self._geo = np.array([n_img, c_n, h_n, w_n, oh_n, ow_n, stride, act], dtype=np.int64)
        self._planes = n_img * c_n
        self._kernel = _run_seq if serial(outs * 9, layer.moved) else _run_par

    def __call__(self, x, out, residual=None):
        nthr, grain = work_split(self._planes)
        res = self._dummy if residual is None else residual.reshape(-1)
        kernel = _run_seq if nthr == 1 else self._kernel  # a serial step: no parallel region
        kernel(x.reshape(-1), out.reshape(-1), res, residual is not None, self._wb, self._prm,
               self._geo, nthr, grain)
        return out
