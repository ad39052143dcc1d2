"""Erf and Gelu over flat, C-contiguous arrays: vector float32 code, libm for float64.

Why not ``math.erf``: numba calls libm's scalar ``erff`` inside the loop, which does not
vectorize; ConvNeXt-tiny runs GELU over ~8.6 M hidden values per image, so the activation alone
would cost tens of milliseconds (see ``erf_libm32`` below, kept for the measurement in
tests/test_gelu_split.py's docstring).  ``erf32`` is branch-free (both ranges computed, one
selected), so LLVM vectorizes it like ``sigmoid32``:

* ``|x| < 1``: ``erf(a) = a * P(a^2)``, ``P`` of degree 6;
* ``|x| >= 1``: ``erfc(a) = exp(-a^2) * Q(1/a)``, ``Q`` of degree 10, ``erf = 1 - erfc``.
  ``a^2`` is split as ``z^2 + (a - z)(a + z)`` with ``z`` the upper 12 bits of ``a`` (Veltkamp's
  split), so ``z^2`` is exact and ``exp(-a^2)`` does not inherit the rounding of ``a*a``
  (up to 16 ulp of relative error in the exponent at ``a = 4`` otherwise).  The scalar helpers
  are inlined at numba's level (``inline="always"``): left as calls, LLVM does not inline them
  and the loop stays scalar (measured: 0.1 G/s instead of 1.2 G/s).

The coefficients were fitted for this module in float64 (weighted least squares for relative
error on Chebyshev nodes of [0, 1] and [1, 10]) and rounded to float32.  Measured against
float64 ``math.erf`` rounded to float32 (tests/test_gelu_split.py): at most 2 ulp.

GELU (ONNX ``Gelu``, PyTorch ``nn.GELU``): ``0.5 x (1 + erf(x / sqrt 2))``.  For ``x < 0`` that
sum cancels (``erf -> -1``); it is computed as ``0.5 x erfc(|x| / sqrt 2)`` instead, from the same
two ranges, so the tail keeps its relative precision.  The tanh form ``0.5 x (1 + tanh(v))``,
``v = sqrt(2/pi) (x + 0.044715 x^3)``, is ``x * sigmoid(2 v)`` (the same identity, no
cancellation), with the vector ``sigmoid32``.  Measured (tests): GELU within 13 ulp of the
correctly rounded value over normal results (the worst just below x = -sqrt 2, where the small
range's 1 - erf still cancels a little; the tests allow 16), the tanh form within 2e-5 relative.

Special values follow the ONNX formula evaluated in IEEE arithmetic: erf(+-inf) = +-1,
erf(-0) = -0, NaN -> NaN; gelu(+inf) = inf and gelu(-inf) = -inf * 0 = NaN in both forms, which
is what the decomposed ``Div -> Erf -> Add -> Mul -> Mul`` graph (and onnxruntime) give, so the
fusion (passes/fuse_gelu.py) does not change a result.
"""

import math

import numpy as np
from numba import prange

from ._jit import njit, pjit
from .elementwise import CHUNK, exp32, sigmoid32

_F = np.float32
_ONE, _HALF, _ZERO, _SIXTH = _F(1.0), _F(0.5), _F(0.0), _F(1.0 / 6.0)
_P0, _P1, _P2 = _F(1.128379226e+00), _F(-3.761262894e-01), _F(1.128361225e-01)
_P3, _P4, _P5 = _F(-2.685480565e-02), _F(5.190048832e-03), _F(-8.024311974e-04)
_P6 = _F(7.898066542e-05)
_Q0, _Q1, _Q2 = _F(-3.285556659e-06), _F(5.643273592e-01), _F(-2.484971425e-03)
_Q3, _Q4, _Q5 = _F(-2.566955984e-01), _F(-1.629155874e-01), _F(1.103820205e+00)
_Q6, _Q7, _Q8 = _F(-1.824252367e+00), _F(1.717751265e+00), _F(-9.941620231e-01)
_Q9, _Q10 = _F(3.309318125e-01), _F(-4.873321578e-02)
_ERF_ONE = _F(4.0)  # erf(a) rounds to 1 in float32 from a = 3.92 on
_ERFC_ZERO = _F(10.5)  # erfc(a) underflows float32 (to 0) from a = 10.06 on
_ERFC_X_ONE, _ERFC_X_ZERO = _F(1.4142135), _F(10.5 * 1.4142135)  # the same bounds for x
_SPLIT = _F(4097.0)  # 2**12 + 1: Veltkamp's constant for float32
_SQRT1_2 = _F(0.70710678118654752)
_TANH_2C, _TANH_K = _F(2.0 * 0.79788456080286536), _F(0.044715)  # 2 sqrt(2/pi)


@njit(error_model="numpy", inline="always")
def _erf_small(a):
    """erf(a) for 0 <= a < 1."""
    s = a * a
    return a * ((((((_P6 * s + _P5) * s + _P4) * s + _P3) * s + _P2) * s + _P1) * s + _P0)


@njit(error_model="numpy", inline="always")
def _square(v):
    """``v * v`` as ``hi + lo``: ``z`` = the upper 12 bits of ``v`` (Veltkamp's split), so
    ``hi = z * z`` is exact and ``lo = (v - z)(v + z)`` is small (<= 2 v^2 2**-12)."""
    c = v * _SPLIT
    z = c - (c - v)
    return z * z, (v - z) * (v + z)


@njit(error_model="numpy", inline="always")  # a call in the loop would block vectors
def _erfc_big(a, hi, lo):
    """erfc(a) for 1 <= a <= 10.5 with a^2 = hi + lo (other lanes give garbage that the caller
    discards): exp(-hi) exp(-lo) Q(1/a), exp(-lo) by its Taylor series (lo < 0.06)."""
    t = _ONE / a
    q = (((((((((_Q10 * t + _Q9) * t + _Q8) * t + _Q7) * t + _Q6) * t + _Q5) * t + _Q4) * t
            + _Q3) * t + _Q2) * t + _Q1) * t + _Q0
    return exp32(-hi) * (_ONE - lo * (_ONE - lo * (_HALF - lo * _SIXTH))) * q


@njit(error_model="numpy", inline="always")
def erf32(x):
    """erf of float32 ``x`` (within 2 ulp, tests), odd, NaN -> NaN."""
    a = abs(x)
    a = _ERF_ONE if a > _ERF_ONE else a  # ordered: NaN stays NaN
    ab = _ONE if a < _ONE else a
    hi, lo = _square(ab)
    big = _ONE - _erfc_big(ab, hi, lo)
    return math.copysign(_erf_small(a) if a < _ONE else big, x)


@njit(error_model="numpy", inline="always")
def gelu32(x):
    """0.5 x (1 + erf(x / sqrt 2)), as 0.5 x erfc(|x| / sqrt 2) for negative x."""
    a = abs(x * _SQRT1_2)
    a = _ERFC_ZERO if a > _ERFC_ZERO else a
    small = _erf_small(a)
    # (x / sqrt 2)^2 = x^2 / 2 from x's own split: x * (1 / sqrt 2) rounds, and its relative
    # error, times a^2 (up to 110) in the exponent, would cost the tail its precision
    xb = abs(x)
    xb = _ERFC_X_ONE if xb < _ERFC_X_ONE else xb
    xb = _ERFC_X_ZERO if xb > _ERFC_X_ZERO else xb
    hi, lo = _square(xb)
    big = _erfc_big(_ONE if a < _ONE else a, hi * _HALF, lo * _HALF)
    if x >= _ZERO:
        two_phi = _ONE + (small if a < _ONE else _ONE - big)
    else:  # also NaN: the product below is NaN either way
        two_phi = _ONE - small if a < _ONE else big
    return (_HALF * x) * two_phi


@njit(error_model="numpy")
def gelu_tanh32(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) = x sigmoid(2 sqrt(2/pi) (...))."""
    return x * sigmoid32(_TANH_2C * (x + _TANH_K * (x * x * x)))


@pjit(error_model="numpy")
def _erf32(x, out):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        xs, os = x[c * CHUNK:min(n, (c + 1) * CHUNK)], out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for i in range(xs.size):
            os[i] = erf32(xs[i])


@pjit(error_model="numpy")
def _gelu32(x, out):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        xs, os = x[c * CHUNK:min(n, (c + 1) * CHUNK)], out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for i in range(xs.size):
            os[i] = gelu32(xs[i])


@pjit(error_model="numpy")
def _gelu_tanh32(x, out):
    n = x.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        xs, os = x[c * CHUNK:min(n, (c + 1) * CHUNK)], out[c * CHUNK:min(n, (c + 1) * CHUNK)]
        for i in range(xs.size):
            os[i] = gelu_tanh32(xs[i])


@pjit
def _erf64(x, out):
    for i in prange(x.size):
        out[i] = math.erf(x[i])


@pjit
def _gelu64(x, out):
    r = 0.7071067811865476
    for i in prange(x.size):
        v = x[i]
        if v >= 0:
            out[i] = 0.5 * v * (1.0 + math.erf(v * r))
        else:  # and NaN
            out[i] = 0.5 * v * math.erfc(-v * r)


@pjit
def _gelu_tanh64(x, out):
    c2 = 2.0 * 0.7978845608028654
    for i in prange(x.size):
        v = x[i]
        t = c2 * (v + 0.044715 * (v * v * v))
        if t >= 0:
            out[i] = v / (1.0 + math.exp(-t))
        else:  # and NaN
            e = math.exp(t)
            out[i] = v * e / (1.0 + e)


@pjit
def erf_libm32(x, out):
    """float32 erf through libm's scalar erff (for the speed comparison only)."""
    for i in prange(x.size):
        out[i] = math.erf(x[i])


def erf(x, out):
    """out = erf(x) on flat arrays (vector kernel for float32, libm for float64)."""
    (_erf32 if x.dtype == np.float32 else _erf64)(x, out)


def gelu(x, out, approximate: str = "none"):
    """out = gelu(x) on flat arrays; ``approximate`` is ONNX's "none" or "tanh"."""
    if approximate == "tanh":
        (_gelu_tanh32 if x.dtype == np.float32 else _gelu_tanh64)(x, out)
    else:
        (_gelu32 if x.dtype == np.float32 else _gelu64)(x, out)
