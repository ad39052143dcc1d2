"""Elementwise kernels over flat, C-contiguous arrays (the runtime keeps every buffer so).

Each keeps numpy's NaN semantics: ``relu(NaN) = NaN`` like ``np.maximum(x, 0)``; clip passes
NaN through like ``np.clip``.

Vector math.  numba's ``math.exp``/``math.tanh`` are scalar libm calls inside a loop (PyPI's
llvmlite has no SVML), so a float32 sigmoid ran at 0.26 G elements/s on one thread.  ``exp32``,
``sigmoid32``, ``tanh32`` and ``silu32`` below are branch-free range reduction + polynomial (Cephes'
expf/tanhf coefficients) in float32 arithmetic (exp's polynomial in fused multiply-adds), which
LLVM's loop vectorizer turns into 16-lane AVX-512 code; 2**n is built from its bits
(``_f32_from_bits``).  Every special value is handled by ordered selects rather than by luck:
exp(NaN) = NaN, exp(+inf) = inf, exp(-inf) = 0, results in the denormal range are rounded once (2**n
applied as two normal factors).  The tests (tests/test_elementwise_vec.py) compare with numpy over
every float32 exponent, +-0, +-inf, NaN and denormals.  float64 keeps the libm loops: its callers
are rare and numpy's exactness matters more there.

The flat kernels split the array into ``CHUNK``-element pieces in a ``prange`` (each piece a
vectorized inner loop over a slice, whose index starts at 0 so numba drops its wrap-around
select); the plan runs small tensors single-threaded anyway.
"""

import math

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._jit import njit, pjit

CHUNK = 1 << 14  # elements per parallel task: 64 KiB of float32, L2-resident


@intrinsic
def _f32_from_bits(typingctx, i):
    """The float32 whose bit pattern is int32 ``i`` (an LLVM bitcast, which vectorizes)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _bits32(typingctx, x):
    """The int32 bit pattern of float32 ``x`` (an LLVM bitcast, which vectorizes)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _fma32(typingctx, a, b, c):
    """``a*b + c`` rounded once (``llvm.fma``, which the loop vectorizer widens): the steps of
    exp's polynomial, as the conv epilogues' vector form (``conv/_ir.VecIR._exp32``) does them."""
    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3),
                                             "llvm.fma.f32")
        return builder.call(fma, args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def _rint32(typingctx, x):
    """``x`` rounded to the nearest integer, ties to even (``llvm.rint``: one ``vroundps``
    once vectorized; the ``1.5 * 2**23`` add-and-subtract it replaces gave the same values with
    one more step on exp's dependency chain)."""
    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32]),
                                            "llvm.rint.f32")
        return builder.call(fn, args)
    return types.float32(types.float32), codegen


_F = np.float32
_LOG2E, _LN2_HI, _LN2_LO = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
_E5, _E4, _E3 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_E2, _E1, _E0 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_X_HI, _X_LO = _F(89.0), _F(-104.0)  # exp overflows above 88.72, is 0 below -103.98
_ONE, _ZERO, _HALF, _TWO = _F(1.0), _F(0.0), _F(0.5), _F(2.0)
_T4, _T3, _T2 = _F(-5.70498872745e-3), _F(2.06390887954e-2), _F(-5.37397155531e-2)
_T1, _T0 = _F(1.33314422036e-1), _F(-3.33332819422e-1)
_T_SMALL = _F(0.625)
# SiLU's exp (``_exp_normal``): fma(a, log2e, 1.5 * 2**23) holds round(a*log2e) in its low
# mantissa bits, so n and 2**n come from that one float; below -87.33 exp is not a normal float
# and is flushed to 0 (SiLU there is smaller than 1.2e-36 in magnitude).
_MAGIC, _FTZ = _F(12582912.0), _F(-87.33)
_MAGIC_BITS = np.int32(0x4B400000 - 127)  # the bits of _MAGIC, less the exponent bias


# The scalar helpers below are not cached on their own (``cache=False``): a kernel compiled
# while a helper came from the disk cache got other code (up to 2 ulp apart) than one compiled
# with the helper fresh, so two kernels meant to agree bit for bit (small_maps and direct,
# pixel's two store paths) disagreed whenever another process had cached the helper first.
# Uncached, each caller compiles them in-process, the same way every time; a cached caller
# carries their code inside its own.
@njit(cache=False)
def exp32(x):
    """exp of float32 ``x``, within 2 ulp of numpy's (tests), NaN/inf/denormals as numpy."""
    xc = _X_HI if x > _X_HI else x  # ordered: NaN stays NaN here and below
    return _exp_below(xc)


@njit(cache=False)
def _exp_below(x):
    """``exp32`` of an ``x`` already at most ``_X_HI`` (or NaN): the rest of it, which sigmoid
    calls directly on -|x|.  The reduction ``r = x - n*ln2`` is two fused multiply-adds
    (``n * _LN2_HI`` is exact, so the first rounds once either way; the second is one rounding
    instead of two), and the polynomial is Horner in fused multiply-adds: half the dependent
    steps of mul + add.  The chain's latency is what an activation in a conv epilogue waits on
    (a flat float32 SiLU loop ran 23 % faster this way on AVX2)."""
    xc = _X_LO if x < _X_LO else x
    nf = _rint32(xc * _LOG2E)
    nf = nf if nf > _F(-160.0) else _F(-160.0)  # NaN -> a finite n (the int cast needs one)
    r = _fma32(-nf, _LN2_LO, _fma32(-nf, _LN2_HI, xc))
    p = _fma32(_fma32(_fma32(_fma32(_fma32(_E5, r, _E4), r, _E3), r, _E2), r, _E1), r, _E0)
    p = _fma32(p, r * r, r) + _ONE
    n = np.int32(nf)
    n1 = n >> 1  # 2**n as two normal factors: the product rounds once, also into denormals
    s1 = _f32_from_bits((n1 + np.int32(127)) << 23)
    s2 = _f32_from_bits((n - n1 + np.int32(127)) << 23)
    return (p * s1) * s2


# error_model="numpy": IEEE division (numba's default checks for 0 and blocks vectors)
@njit(error_model="numpy", cache=False)
def sigmoid32(x):
    """1 / (1 + exp(-x)) without overflow: e = exp(-|x|) <= 1, and e / (1 + e) for x < 0, so
    the tiny results of large negative x keep their precision; NaN -> NaN."""
    e = _exp_below(-abs(x))  # -|x| <= 0 needs no upper clamp; -|NaN| is NaN
    return (_ONE if x >= _ZERO else e) / (_ONE + e)


@njit(cache=False)
def _exp_normal(a):
    """exp of float32 ``a`` <= 0 (or NaN), 0 below ``_FTZ`` where it is not a normal float:
    SiLU's exp.  ``exp32``'s reduction and polynomial, with n rounded by the magic-number add
    (no rint, no int cast and no NaN guard for it), 2**n one factor, and the polynomial in
    Estrin's order (three dependent steps where Horner has five): a flat SiLU loop 0.73 -> 0.61
    ns a value on AVX2.  Only ``silu32`` and the conv epilogues' vector form use it, op for op
    (``conv/_ir.VecIR.silu``)."""
    t = _fma32(a, _LOG2E, _MAGIC)
    nf = t - _MAGIC
    r = _fma32(-nf, _LN2_LO, _fma32(-nf, _LN2_HI, a))
    r2 = r * r
    p = _fma32(_fma32(_fma32(_E5, r, _E4), r2, _fma32(_E3, r, _E2)), r2, _fma32(_E1, r, _E0))
    p = _fma32(p, r2, r) + _ONE
    s = _f32_from_bits((_bits32(t) - _MAGIC_BITS) << 23)
    return _ZERO if a < _FTZ else p * s


@njit(error_model="numpy", cache=False)
def silu32(x):
    """x * sigmoid(x) (SiLU / Swish), as ONNX's Mul(x, Sigmoid(x)) computes it, written
    ``(x if x >= 0 else x*e) / (1 + e)`` with e = exp(-|x|) (one multiply fewer than x times
    sigmoid32); results below 1.2e-36 in magnitude (x < -87.33) are flushed to -0, and
    silu(-inf) is NaN as -inf * sigmoid(-inf) = -inf * 0 is."""
    e = _exp_normal(-abs(x))
    return (x if x >= _ZERO else x * e) / (_ONE + e)


@njit(error_model="numpy", cache=False)
def tanh32(x):
    """Cephes tanhf on |x|: an odd polynomial below 0.625, 1 - 2 / (exp(2|x|) + 1) above (which
    reaches exactly 1 past ~9 and at inf), the sign put back with copysign (-0 -> -0, NaN ->
    NaN); both sides computed and one selected, so the loop stays branch-free and vectorizes."""
    a = abs(x)
    z = a * a
    small = ((((_T4 * z + _T3) * z + _T2) * z + _T1) * z + _T0) * z * a + a
    big = _ONE - _TWO / (exp32(a + a) + _ONE)
    return math.copysign(small if a < _T_SMALL else big, x)


@pjit
def relu(x, out):
    for i in prange(x.size):
        v = x[i]
        out[i] = 0 if v < 0 else v


@pjit
def leaky_relu(x, out, alpha):
    for i in prange(x.size):
        v = x[i]
        out[i] = v * alpha if v < 0 else v


@pjit
def clip(x, out, lo, hi):
    for i in prange(x.size):
        v = x[i]
        v = lo if v < lo else v
        out[i] = hi if v > hi else v  # min > max: every value is max, as ONNX specifies


def any_sigmoid(v):
    """sigmoid of a float32 or float64 scalar inside a kernel (``_epilogue.act_other``):
    the vector form for float32, libm for float64 (dispatched at compile time by type)."""
    raise NotImplementedError  # only called from numba code


def any_tanh(v):
    """tanh of a float32 or float64 scalar inside a kernel, as ``any_sigmoid``."""
    raise NotImplementedError


def any_silu(v):
    """SiLU of a float32 or float64 scalar inside a kernel, as ``any_sigmoid``: ``silu32``
    for float32, ``v * sigmoid(v)`` through libm for float64."""
    raise NotImplementedError


@overload(any_sigmoid, jit_options={"error_model": "numpy"})
def _any_sigmoid(v):
    if v == types.float32:
        return lambda v: sigmoid32(v)

    def impl(v):
        e = math.exp(-abs(v))
        return (1.0 if v >= 0 else e) / (1.0 + e)
    return impl


@overload(any_silu, jit_options={"error_model": "numpy"})
def _any_silu(v):
    if v == types.float32:
        return lambda v: silu32(v)

    return lambda v: v * any_sigmoid(v)


@overload(any_tanh)
def _any_tanh(v):
    if v == types.float32:
        return lambda v: tanh32(v)
    return lambda v: math.tanh(v)


@pjit
def _sigmoid64(x, out):
    for i in prange(x.size):
        v = x[i]
        if v >= 0:
            out[i] = 1 / (1 + math.exp(-v))
        else:
            e = math.exp(v)
            out[i] = e / (1 + e)


@pjit
def _tanh64(x, out):
    for i in prange(x.size):
        out[i] = math.tanh(x[i])


@pjit
def _silu64(x, out):
    for i in prange(x.size):
        v = x[i]
        if v >= 0:
            out[i] = v / (1 + math.exp(-v))
        else:
            e = math.exp(v)
            out[i] = v * e / (1 + e)


@pjit(error_model="numpy")
def _sigmoid32(x, out):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        xs, os = x[c * CHUNK:min(n, (c + 1) * CHUNK)], out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for i in range(xs.size):
            os[i] = sigmoid32(xs[i])


@pjit(error_model="numpy")
def _tanh32(x, out):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        xs, os = x[c * CHUNK:min(n, (c + 1) * CHUNK)], out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for i in range(xs.size):
            os[i] = tanh32(xs[i])


@pjit(error_model="numpy")
def _silu32(x, out):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        xs, os = x[c * CHUNK:min(n, (c + 1) * CHUNK)], out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for i in range(xs.size):
            os[i] = silu32(xs[i])


@pjit
def _exp32(x, out):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        xs, os = x[c * CHUNK:min(n, (c + 1) * CHUNK)], out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for i in range(xs.size):
            os[i] = exp32(xs[i])


def sigmoid(x, out):
    """out = 1 / (1 + exp(-x)) on flat arrays: the vector kernel for float32, libm for float64."""
    (_sigmoid32 if x.dtype == np.float32 else _sigmoid64)(x, out)


def tanh(x, out):
    """out = tanh(x) on flat arrays (vector kernel for float32)."""
    (_tanh32 if x.dtype == np.float32 else _tanh64)(x, out)


def silu(x, out):
    """out = x * sigmoid(x) on flat arrays, one pass (the fused standalone SiLU)."""
    (_silu32 if x.dtype == np.float32 else _silu64)(x, out)


def exp(x, out):
    """out = exp(x) on flat arrays (vector kernel for float32, numpy otherwise)."""
    if x.dtype == np.float32:
        _exp32(x, out)
    else:
        np.exp(x, out=out)


@pjit
def add(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] + b[i]


@pjit
def sub(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] - b[i]


@pjit
def mul(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] * b[i]


@pjit
def div(a, b, out):
    for i in prange(out.size):
        out[i] = a[i] / b[i]


@pjit
def channel_affine(x, scale, shift, out):
    """out[n, c, :] = x[n, c, :] * scale[c] + shift[c] on (N, C, S) views."""
    n, c, s = x.shape
    for nc in prange(n * c):
        i, j = nc // c, nc % c
        a, b = scale[j], shift[j]
        for k in range(s):
            out[i, j, k] = x[i, j, k] * a + b


@pjit
def plane_scale(x, s, out):
    """out[p, :] = x[p, :] * s[p] on (P, S) views: a feature map times a per-plane scalar, the
    squeeze-and-excitation Mul(x[N, C, H, W], gate[N, C, 1, 1]); one task per N*C plane, each a
    contiguous vectorized loop (numpy's broadcast loop is one thread and strides the gate)."""
    for p in prange(x.shape[0]):
        a = s[p]
        xs, os = x[p], out[p]
        for k in range(xs.size):
            os[k] = xs[k] * a
