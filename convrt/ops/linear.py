"""Gemm and MatMul.  A constant right-hand side is packed once as (K, M) for the numba kernel."""

import numpy as np

from ..kernels import first_tier
from ..kernels.gemm import ACT_NONE, ACT_RELU, bias_operand, gemm_nt, gemm_packed
from ._shape import FLOAT_TYPES, NUMERIC, broadcast, known
from .registry import register_op

def _chunk(n: int, m: int) -> int:
    """Columns per task: the chunk of every output row stays in L1; two tasks at least."""
    c = max(16, min(1024, 8192 // max(n, 1)))
    half = -(-m // 2)
    return max(1, min(c, half))


def bind_gemm(ctx, A, B, C, alpha=1.0, beta=1.0, transA=0, transB=0, act="none"):
    """Validate a Gemm and return its result (kernel at bind time); used by fused Gemm too."""
    ctx.check(A.dtype in FLOAT_TYPES, f"dtype {A.dtype} is not supported")
    for name, t in (("B", B), ("C", C)):
        if t is not None:
            ctx.check(t.dtype == A.dtype, f"{name} dtype {t.dtype} differs from A {A.dtype}")
    ctx.check(A.rank == 2 and B.rank == 2, f"A and B must be 2-D, got ranks {A.rank}, {B.rank}")
    m, k = (A.shape[1], A.shape[0]) if transA else A.shape
    k2, n = (B.shape[1], B.shape[0]) if transB else B.shape
    if known(k) and known(k2):
        ctx.check(k == k2, f"inner dims differ: A {list(A.shape)} B {list(B.shape)} "
                  f"(transA={transA}, transB={transB})")
    shape = (m, n)
    if C is not None:
        ctx.check(C.rank is not None and C.rank <= 2, f"C rank {C.rank} must be <= 2")
        ctx.check(broadcast(ctx, shape, C.shape) == shape or not all(map(known, shape)),
                  f"C {list(C.shape)} does not broadcast to {list(shape)}")
    macs = m * n * k if all(known(v) for v in (m, n, k)) else 0
    if not ctx.binding:
        return ctx.result([shape], [A.dtype], flops=macs)
    code = {"none": ACT_NONE, "relu": ACT_RELU}[act]
    dt = A.dtype
    alpha, beta = float(alpha), float(beta)
    if ctx.first_tier:  # numpy (kernels/first_tier.py): nothing to compile or pack
        def run_first(a, b, *rest):  # rest = ([c], out)
            first_tier.gemm(a, b, rest[0] if C is not None else None, rest[-1], alpha, beta,
                            transA, transB, act)

        return ctx.result([shape], [A.dtype], run_first, flops=macs)
    if ctx.precision == "bf16" and not transA:
        bf = _gemm_bf16(ctx, A, B, C, alpha, beta, transB, act, (m, n, k))
        if bf is not None:
            return ctx.result([shape], [A.dtype], bf[0], flops=macs, scratch=bf[1])

    def pack(b):
        return np.ascontiguousarray(b.T if transB else b, dtype=dt)

    has_c = C is not None
    # a constant C (a bias) in the kernels' form once; a fed one per run
    const_c = bias_operand(C.value, dt) if has_c and C.value is not None else None
    if transB:
        # (M, K) weights as stored: the dot-product kernel streams them with no packed copy
        # (also when B is fed at run time, as a trained layer's weights are: no per-run
        # transposed copy of them)
        bmk = None if B.value is None else np.ascontiguousarray(B.value, dtype=dt)

        def run_nt(a, b, *rest):  # rest = ([c], out)
            out = rest[-1]
            if transA:
                a = np.ascontiguousarray(a.T)
            c = const_c or bias_operand(rest[0] if has_c else None, dt)
            gemm_nt(a, bmk if bmk is not None else np.ascontiguousarray(b, dtype=dt), *c, out,
                    alpha, beta, code)

        return ctx.result([shape], [A.dtype], run_nt, flops=macs)

    packed = None
    if B.value is not None:  # one (K, M) copy per session, whichever batch sizes it plans
        bv = B.value
        packed = (pack(bv) if ctx.packs is None else
                  ctx.packs.get(("gemm", id(bv), transB, dt.str), (bv,), lambda: pack(bv)))
    chunk = _chunk(m, n)

    def run(a, b, *rest):  # rest = ([c], out)
        out = rest[-1]
        if transA:
            a = np.ascontiguousarray(a.T)
        c = const_c or bias_operand(rest[0] if has_c else None, dt)
        gemm_packed(a, packed if packed is not None else pack(b), *c, out, alpha, beta, chunk,
                    code)

    return ctx.result([shape], [A.dtype], run, flops=macs)


def _gemm_bf16(ctx, A, B, C, alpha, beta, transB, act, mnk):
    """``(run, scratch)`` of a float32 Gemm by constant weights in bf16, or None where it does
    not fit: the product runs as ``_matmul_as_conv``'s 1x1 convolution with the bf16 kernel
    (``kernels/conv/direct_bf16.py``), weights ``alpha*B`` rounded once, ``beta*C`` its float32
    bias (C constant and one value per output column), the ReLU fused.  At batch 1 (VGG-16's
    classifier) it streams half the float32 weight bytes."""
    from ..kernels.conv.select import Conv2d

    rows, ncols, kdim = mnk
    if A.dtype != np.float32 or B.value is None:
        return None
    bias = None
    if C is not None:
        if C.value is None or C.value.size not in (1, ncols) or (
                C.value.ndim == 2 and C.value.shape[0] != 1):
            return None
        bias = np.broadcast_to(beta * np.asarray(C.value, np.float32).reshape(-1), (ncols,))
    w = np.asarray(B.value, np.float32)
    w = w if transB else w.T
    if alpha != 1.0:
        w = w * np.float32(alpha)
    wt = np.ascontiguousarray(w, np.float32).reshape(ncols, kdim, 1, 1)
    bias = None if bias is None else np.ascontiguousarray(bias, np.float32)
    cv = None if C is None else C.value
    packs = None if ctx.packs is None else (
        ctx.packs, ("gemm_bf16", id(B.value), id(cv), alpha, beta, transB), (B.value, cv))
    conv = Conv2d(wt, bias, (1, kdim, 1, rows), activation=act, packs=packs,
                  precision="bf16")
    if conv.algo != "direct_bf16":
        return None

    def run(a, _b, *rest):  # rest = ([c], out)
        out = rest[-1]
        image = np.empty((kdim, rows), np.float32)  # per run: concurrent runs share the kernel
        np.copyto(image, a.T)
        y = np.empty((ncols, rows), np.float32)
        conv(image.reshape(1, kdim, 1, rows), y.reshape(1, ncols, 1, rows))
        np.copyto(out, y.T)

    return run, (kdim + ncols) * rows * 4 + conv.scratch_bytes()


@register_op("Gemm", since=(7, 9, 11, 13))
def Gemm(ctx, A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return bind_gemm(ctx, A, B, C, alpha, beta, transA, transB)


# From this many rows of A (and columns of B) on, a MatMul by a constant B runs as a 1x1
# convolution: weights B^T (N output channels of K), packed once, over the image A^T (K channels
# of P pixels), then out = (B^T A^T)^T.  gemm_packed is written for a classifier's few rows
# (column chunks that keep an output row in L1); on ConvNeXt's Linear layers it took 34-36 ms
# per MatMul ([3136, 96] x [96, 384], [49, 3072] x [3072, 768]), the conv form 1.5-2.9 ms with
# both transposes (measured 2026-12-06, busy 2-core box).  numpy's BLAS took 1.0 ms idle, but
# its spinning thread pool fights numba's under load (1.1 s for the model's 36 MatMuls then);
# A as the conv's weights instead would repack A on every run (12 ms for [3136, 384]).
MATMUL_CONV_MIN = 16


def _matmul_as_conv(ctx, dtype, rows, b):
    """``(run, scratch)``: ``run(a, b, out)`` computes ``a.reshape(rows, K) @ b`` with the conv
    kernels; ``scratch``: the bytes of its per-run transposed copies (for the memory budget)."""
    from ..kernels.conv.select import Conv2d

    kdim, ncols = b.shape
    wt = np.ascontiguousarray(b.T, dtype=dtype).reshape(ncols, kdim, 1, 1)
    packs = None if ctx.packs is None else (ctx.packs, ("matmul", id(b)), (b,))
    conv = Conv2d(wt, None, (1, kdim, 1, rows), dtype=dtype, packs=packs)

    def run(a, _b, out):
        image = np.empty((kdim, rows), dtype)  # per run: concurrent runs share the kernel
        np.copyto(image, a.reshape(rows, kdim).T)
        y = np.empty((ncols, rows), dtype)
        conv(image.reshape(1, kdim, 1, rows), y.reshape(1, ncols, 1, rows))
        np.copyto(out.reshape(rows, ncols), y.T)

    return run, (kdim + ncols) * rows * np.dtype(dtype).itemsize + conv.scratch_bytes()


@register_op("MatMul", since=(1, 9, 13))
def MatMul(ctx, A, B):
    ctx.check(A.dtype == B.dtype, f"dtypes differ ({A.dtype} vs {B.dtype})")
    ctx.check(A.dtype in NUMERIC, f"dtype {A.dtype} is not supported")
    ctx.check(A.rank >= 1 and B.rank >= 1, "inputs must have rank >= 1")
    a_shape = (1,) + tuple(A.shape) if A.rank == 1 else tuple(A.shape)
    b_shape = tuple(B.shape) + (1,) if B.rank == 1 else tuple(B.shape)
    if known(a_shape[-1]) and known(b_shape[-2]):
        ctx.check(a_shape[-1] == b_shape[-2], f"inner dims differ: {list(A.shape)} @ "
                  f"{list(B.shape)}")
    batch = broadcast(ctx, a_shape[:-2], b_shape[:-2])
    shape = batch + (a_shape[-2], b_shape[-1])
    if A.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if B.rank == 1:
        shape = shape[:-1]
    macs = int(np.prod(shape)) * a_shape[-1] if all(known(v) for v in shape + a_shape) else 0
    if not ctx.binding:
        return ctx.result([shape], [A.dtype], flops=macs)
    if ctx.first_tier:  # numpy's own product (runtime/tiers.py): nothing to compile
        return ctx.result([shape], [A.dtype], lambda a, b, out: np.matmul(a, b, out=out),
                          flops=macs)
    if B.value is not None and B.rank == 2 and A.dtype in FLOAT_TYPES and \
            int(np.prod(A.shape[:-1])) >= MATMUL_CONV_MIN and B.shape[1] >= MATMUL_CONV_MIN:
        run, scratch = _matmul_as_conv(ctx, A.dtype, int(np.prod(A.shape[:-1])), B.value)
        return ctx.result([shape], [A.dtype], run, flops=macs, scratch=scratch)
    if B.value is not None and B.rank == 2 and A.dtype in FLOAT_TYPES:
        packed = np.ascontiguousarray(B.value)
        kdim, ncols = packed.shape
        rows = int(np.prod(A.shape[:-1]))
        chunk = _chunk(rows, ncols)
        no_c = bias_operand(None, A.dtype)

        def run_packed(a, b, out):
            gemm_packed(a.reshape(rows, kdim), packed, *no_c, out.reshape(rows, ncols), 1.0,
                        0.0, chunk, ACT_NONE)

        return ctx.result([shape], [A.dtype], run_packed, flops=macs)
    return ctx.result([shape], [A.dtype], lambda a, b, out: np.matmul(a, b, out=out), flops=macs)
