"""What the LLVM-level microkernels share (_microkernel.py, _epilogue.py, pixel.py, dw3x3.py):
16-lane vectors of the arrays' float type, the fused multiply-add intrinsic, splats and integer
constants.

Every microkernel is a numba ``@intrinsic`` whose codegen builds its loop with llvmlite; this
keeps their common vocabulary in one place so that each file only says what its loop does.
"""

from llvmlite import ir
from numba.core import cgutils

from ...activations import CLIP, HARD_SIGMOID, HARD_SWISH, LEAKY, RELU, SIGMOID, SILU
from .. import elementwise as _ew

VEC = 16  # lanes per vector


class VecIR:
    """Types, constants and helpers for one codegen, in the float type of ``dtype``."""

    def __init__(self, context, builder, dtype):
        self.builder = builder
        ft = context.get_value_type(dtype)
        self.ft = ft
        self.vt = ir.VectorType(ft, VEC)
        self.vpt = self.vt.as_pointer()
        self.i1, self.i32, self.i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        self.suffix = "v%d%s" % (VEC, "f32" if isinstance(ft, ir.FloatType) else "f64")
        self.fma = self.intrinsic("llvm.fmuladd", self.vt, [self.vt] * 3)
        self._splat_mask = ir.Constant(ir.VectorType(self.i32, VEC), [0] * VEC)

    def intrinsic(self, name, ret, params, tail=""):
        """The LLVM intrinsic ``name.<v16f32|v16f64><tail>`` (declared once per module);
        ``tail`` names the pointer type of the masked loads and stores (``.p0``)."""
        return cgutils.get_or_insert_function(self.builder.module, ir.FunctionType(ret, params),
                                              "%s.%s%s" % (name, self.suffix, tail))

    def c64(self, v):
        return ir.Constant(self.i64, v)

    def splat(self, value, vtype=None):
        """``value`` in every lane of a vector of ``vtype`` (default: the float vector)."""
        u = ir.Constant(vtype or self.vt, ir.Undefined)
        b = self.builder
        return b.shuffle_vector(b.insert_element(u, value, ir.Constant(self.i32, 0)), u,
                                self._splat_mask)

    def vptr(self, base, index):
        """Pointer to the vector starting at element ``index`` of ``base`` (a float pointer)."""
        return self.builder.bitcast(self.builder.gep(base, [index]), self.vpt)

    def vload(self, base, index):
        return self.builder.load(self.vptr(base, index), align=1)

    def vstore(self, value, base, index):
        self.builder.store(value, self.vptr(base, index), align=1)

    def prefetch(self, base, index):
        """Hint the cache line holding element ``index`` of ``base`` into L1 (``llvm.prefetch``:
        never faults, so the address may lie past the array)."""
        b = self.builder
        i8p = ir.IntType(8).as_pointer()
        pf = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(ir.VoidType(), [i8p, self.i32, self.i32, self.i32]),
            "llvm.prefetch.p0")
        b.call(pf, [b.bitcast(b.gep(base, [index]), i8p), ir.Constant(self.i32, 0),
                    ir.Constant(self.i32, 3), ir.Constant(self.i32, 1)])

    def outer_fma(self, scalars, vecs, accs):
        """One step of a register-tiled outer product: ``accs[i*len(vecs) + j] += scalars[i] *
        vecs[j]`` (each scalar splat once), returned as the new accumulators."""
        news = []
        for i, x in enumerate(scalars):
            splat = self.splat(x)
            for j, vec in enumerate(vecs):
                news.append(self.builder.call(self.fma, [splat, vec, accs[i * len(vecs) + j]]))
        return news

    def accumulate(self, n, inits, body, name):
        """Emit ``for r in range(n): accs = body(r, accs)`` (``n`` an i64) with the accumulators
        carried in registers (phi nodes); returns their final values (``inits`` if n <= 0)."""
        b = self.builder
        pre = b.block
        loop = b.append_basic_block(name + ".loop")
        done = b.append_basic_block(name + ".done")
        b.cbranch(b.icmp_signed(">", n, self.c64(0)), loop, done)
        b.position_at_end(loop)
        r = b.phi(self.i64)
        r.add_incoming(self.c64(0), pre)
        accs = []
        for init in inits:
            acc = b.phi(init.type)
            acc.add_incoming(init, pre)
            accs.append(acc)
        news = body(r, accs)
        rn = b.add(r, self.c64(1))
        end = b.block
        r.add_incoming(rn, end)
        for acc, new in zip(accs, news):
            acc.add_incoming(new, end)
        b.cbranch(b.icmp_signed("<", rn, n), loop, done)
        b.position_at_end(done)
        finals = []
        for init, new in zip(inits, news):  # every phi first: LLVM wants them at the top
            fin = b.phi(init.type)
            fin.add_incoming(init, pre)
            fin.add_incoming(new, end)
            finals.append(fin)
        return finals

    def either(self, cond, fast, slow, name):
        """``fast()`` where i1 ``cond`` holds, else ``slow()`` (each emits code and returns a
        list of values, alike in type), joined by phis.  The conv kernels use it to take plain
        loads and stores where a whole vector is in bounds and masked ones only at the edges:
        AVX2 has no cheap masked store, so masking every vector cost more than the arithmetic
        on small rows."""
        b = self.builder
        fbb = b.append_basic_block(name + ".fast")
        sbb = b.append_basic_block(name + ".slow")
        jbb = b.append_basic_block(name + ".join")
        b.cbranch(cond, fbb, sbb)
        b.position_at_end(fbb)
        fv = fast()
        fend = b.block
        b.branch(jbb)
        b.position_at_end(sbb)
        sv = slow()
        send = b.block
        b.branch(jbb)
        b.position_at_end(jbb)
        outs = []
        for a, c in zip(fv, sv):
            ph = b.phi(a.type)
            ph.add_incoming(a, fend)
            ph.add_incoming(c, send)
            outs.append(ph)
        return outs

    def transpose16(self, rows):
        """The 16x16 transpose of ``rows`` (16 vectors) in registers: ``out[k][r] = rows[r][k]``.
        Four rounds of shuffles, each swapping bit ``bit`` of the row and lane indices (an undef
        row, for a short tile, stays undef where it lands)."""
        b = self.builder
        rows = list(rows)
        for bit in (1, 2, 4, 8):
            lo_c = ir.Constant(ir.VectorType(self.i32, VEC),
                               [k if not k & bit else VEC + (k ^ bit) for k in range(VEC)])
            hi_c = ir.Constant(ir.VectorType(self.i32, VEC),
                               [k ^ bit if not k & bit else VEC + k for k in range(VEC)])
            new_rows = list(rows)
            for r in range(VEC):
                if not r & bit:
                    a, c = rows[r], rows[r | bit]
                    new_rows[r] = b.shuffle_vector(a, c, lo_c)
                    new_rows[r | bit] = b.shuffle_vector(a, c, hi_c)
            rows = new_rows
        return rows

    def const(self, value):
        """``value`` in every lane of a float vector (a constant; float32 rounds it once)."""
        return ir.Constant(self.vt, [float(value)] * VEC)

    def _exp32(self, x, upper=True):
        """``elementwise.exp32`` of a float32 vector (``elementwise._exp_below`` with ``upper``
        false: no clamp from above), op for op (same constants, same order, ``llvm.rint`` and
        ``llvm.fma`` as the scalar form calls them, nothing else contracted): bit-identical to
        the scalar function the row epilogues vectorise."""
        b, c = self.builder, self.const
        if upper:
            x = b.select(b.fcmp_ordered(">", x, c(_ew._X_HI)), c(_ew._X_HI), x)  # NaN stays
        xc = b.select(b.fcmp_ordered("<", x, c(_ew._X_LO)), c(_ew._X_LO), x)
        rint = self.intrinsic("llvm.rint", self.vt, [self.vt])
        nf = b.call(rint, [b.fmul(xc, c(_ew._LOG2E))])
        nf = b.select(b.fcmp_ordered(">", nf, c(-160.0)), nf, c(-160.0))  # NaN -> finite n
        fma = self.intrinsic("llvm.fma", self.vt, [self.vt] * 3)
        neg = b.fneg(nf)
        r = b.call(fma, [neg, c(_ew._LN2_LO), b.call(fma, [neg, c(_ew._LN2_HI), xc])])
        p = c(_ew._E5)
        for k in (_ew._E4, _ew._E3, _ew._E2, _ew._E1, _ew._E0):
            p = b.call(fma, [p, r, c(k)])
        p = b.fadd(b.call(fma, [p, b.fmul(r, r), r]), c(1.0))
        it = ir.VectorType(self.i32, VEC)
        n = b.fptosi(nf, it)
        n1 = b.ashr(n, ir.Constant(it, [1] * VEC))
        bias, sh = ir.Constant(it, [127] * VEC), ir.Constant(it, [23] * VEC)
        s1 = b.bitcast(b.shl(b.add(n1, bias), sh), self.vt)
        s2 = b.bitcast(b.shl(b.add(b.sub(n, n1), bias), sh), self.vt)
        return b.fmul(b.fmul(p, s1), s2)

    def sigmoid(self, x):
        """``elementwise.any_sigmoid`` of a vector: e = exp(-|x|) (the polynomial for float32,
        ``llvm.exp`` = libm's exp per lane for float64, as the scalar form calls), then
        ``(1 if x >= 0 else e) / (1 + e)``; NaN -> NaN."""
        b = self.builder
        zero, one = ir.Constant(self.vt, None), self.const(1.0)
        fabs = self.intrinsic("llvm.fabs", self.vt, [self.vt])
        if isinstance(self.ft, ir.FloatType):
            e = self._exp32(b.fneg(b.call(fabs, [x])), upper=False)
        else:
            e = b.call(self.intrinsic("llvm.exp", self.vt, [self.vt]),
                       [b.fneg(b.call(fabs, [x]))])
        return b.fdiv(b.select(b.fcmp_ordered(">=", x, zero), one, e), b.fadd(one, e))

    def silu(self, x):
        """``elementwise.silu32`` of a vector, op for op (``_exp_normal``: the magic-number
        rounding, Estrin's polynomial, one 2**n factor, 0 below ``_FTZ``; then
        ``(x if x >= 0 else x*e) / (1 + e)``); float64: x times ``sigmoid``."""
        b, c = self.builder, self.const
        if not isinstance(self.ft, ir.FloatType):
            return b.fmul(x, self.sigmoid(x))
        fma = self.intrinsic("llvm.fma", self.vt, [self.vt] * 3)
        zero, one = ir.Constant(self.vt, None), c(1.0)
        a = b.fneg(b.call(self.intrinsic("llvm.fabs", self.vt, [self.vt]), [x]))
        t = b.call(fma, [a, c(_ew._LOG2E), c(_ew._MAGIC)])
        neg = b.fneg(b.fsub(t, c(_ew._MAGIC)))
        r = b.call(fma, [neg, c(_ew._LN2_LO), b.call(fma, [neg, c(_ew._LN2_HI), a])])
        r2 = b.fmul(r, r)
        p = b.call(fma, [b.call(fma, [b.call(fma, [c(_ew._E5), r, c(_ew._E4)]), r2,
                                      b.call(fma, [c(_ew._E3), r, c(_ew._E2)])]),
                         r2, b.call(fma, [c(_ew._E1), r, c(_ew._E0)])])
        p = b.fadd(b.call(fma, [p, r2, r]), one)
        it = ir.VectorType(self.i32, VEC)
        bits = b.sub(b.bitcast(t, it), ir.Constant(it, [int(_ew._MAGIC_BITS)] * VEC))
        s = b.bitcast(b.shl(bits, ir.Constant(it, [23] * VEC)), self.vt)
        e = b.select(b.fcmp_ordered("<", a, c(_ew._FTZ)), zero, b.fmul(p, s))
        num = b.select(b.fcmp_ordered(">=", x, zero), x, b.fmul(x, e))
        return b.fdiv(num, b.fadd(one, e))

    def activate(self, v, act, prm):
        """``v`` through activation code ``act`` (one of ``activations.IN_REGISTERS``, a
        compile-time int) with ``prm`` = (alpha, lo, hi, 0) splats, as ``_epilogue._store_tile``
        / ``_epilogue.act_other`` compute it: every comparison ordered, so NaN passes through
        unchanged.  sigmoid and silu are ``sigmoid`` above; hard_sigmoid / hard_swish clamp
        ``alpha*v + beta`` (beta in the lo slot, ``activations.params``) to [0, 1]."""
        b = self.builder
        alpha, lo, hi, zero = prm
        if act == RELU:
            return b.select(b.fcmp_ordered("<", v, zero), zero, v)
        if act == LEAKY:
            return b.select(b.fcmp_ordered("<", v, zero), b.fmul(v, alpha), v)
        if act == CLIP:
            v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
            return b.select(b.fcmp_ordered(">", v, hi), hi, v)
        if act == SIGMOID:
            return self.sigmoid(v)
        if act == SILU:
            return self.silu(v)
        if act in (HARD_SIGMOID, HARD_SWISH):
            one = self.const(1.0)
            h = b.call(self.fma, [v, alpha, lo])
            h = b.select(b.fcmp_ordered("<", h, zero), zero, h)
            h = b.select(b.fcmp_ordered(">", h, one), one, h)
            return h if act == HARD_SIGMOID else b.fmul(v, h)
        return v

def arrays(context, builder, sig_args, args, which):
    """The numba array structs of the arguments at positions ``which``."""
    return [context.make_array(sig_args[i])(context, builder, args[i]) for i in which]
