"""What the LLVM-level microkernels share (_microkernel.py, _epilogue.py, pixel.py, dw3x3.py):
16-lane vectors of the arrays' float type, the fused multiply-add intrinsic, splats and integer
constants.

Every microkernel is a numba ``@intrinsic`` whose codegen builds its loop with llvmlite; this
keeps their common vocabulary in one place so that each file only says what its loop does.
"""

from llvmlite import ir
from numba.core import cgutils

from ...activations import CLIP, LEAKY, RELU

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

    def activate(self, v, act, prm):
        """``v`` through activation code ``act`` (one of ``activations.IN_REGISTERS``, a
        compile-time int) with ``prm`` = (alpha, lo, hi, 0) splats, as ``_epilogue._store_tile``
        computes it: every comparison ordered, so NaN passes through unchanged."""
        b = self.builder
        alpha, lo, hi, zero = prm
        if act == RELU:
            return b.select(b.fcmp_ordered("<", v, zero), zero, v)
        if act == LEAKY:
            return b.select(b.fcmp_ordered("<", v, zero), b.fmul(v, alpha), v)
        if act == CLIP:
            v = b.select(b.fcmp_ordered("<", v, lo), lo, v)
            return b.select(b.fcmp_ordered(">", v, hi), hi, v)
        return v


def arrays(context, builder, sig_args, args, which):
    """The numba array structs of the arguments at positions ``which``."""
    return [context.make_array(sig_args[i])(context, builder, args[i]) for i in which]
