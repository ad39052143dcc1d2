"""bfloat16 support: whether this CPU has the bf16 dot product, and float32 -> bf16 rounding.

``precision="bf16"`` (``SessionOptions``) runs the dense convolutions and constant-weight GEMMs
with ``vdpbf16ps`` (AVX512_BF16): weights rounded to bf16 once when packed, activations rounded
where they enter the kernel, products summed in float32 (``_microkernel._tile_sums``).  Rounding
is round-to-nearest-even on the float32 bit pattern, done in integer arithmetic that LLVM
vectorises, so this module, the kernels and the numpy reference of the tests
(``to_bf16_bits``/``round_bf16``) round the same way; a NaN stays a (quiet) NaN.

``available()`` says whether the bf16 kernels may run.  ``CONVRT_DISABLE_BF16=1`` in the
environment (read when this module is imported) or ``FORCE_FP32 = True`` (tests set it) makes
it answer False, as on a CPU without AVX512_BF16: that is how the float32 fallback is tested on
a machine that has the instructions.
"""

import os

import llvmlite.binding as llvm
import numpy as np
from numba import prange

from ._jit import njit, pjit

PRECISIONS = ("fp32", "bf16")
FORCE_FP32 = os.environ.get("CONVRT_DISABLE_BF16", "") not in ("", "0")
HOST_BF16 = bool(llvm.get_host_cpu_features().get("avx512bf16"))

_U = np.uint64


def available() -> bool:
    """Whether the bf16 kernels run on this CPU (AVX512_BF16, and not forced off)."""
    return HOST_BF16 and not FORCE_FP32


def to_bf16_bits(x) -> np.ndarray:
    """The bf16 bit patterns (uint16) of float32 ``x``, rounded to nearest even (the numpy
    form of ``_bits``); NaN -> a quiet NaN of the same sign."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    r = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x40), r)
    return r.astype(np.uint16)


def round_bf16(x) -> np.ndarray:
    """float32 ``x`` rounded to the nearest bf16 value, as float32 (the tests' reference)."""
    return (to_bf16_bits(x).astype(np.uint32) << np.uint32(16)).view(np.float32)


def pack_pairs(lo, hi) -> np.ndarray:
    """uint32 words holding bf16(``lo``) in the low and bf16(``hi``) in the high half: the
    operand layout of ``vdpbf16ps`` (lane k multiplies elements 2k and 2k+1 of its inputs)."""
    return (to_bf16_bits(lo).astype(np.uint32)
            | (to_bf16_bits(hi).astype(np.uint32) << np.uint32(16)))


@njit
def _bits(u):
    """``to_bf16_bits`` of one float32 bit pattern (uint32), as a uint32 in [0, 0xFFFF]."""
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return (u >> np.uint32(16)) | np.uint32(0x40)
    return (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@njit
def _pair_plane(xu, xs, u, c_n, c2_n, h_n, w_n, q_n, sw, pt, pl, cstride, plane):
    """Plane ``u`` (image n, channel pair c2) of ``pad_pairs``: zeros, then the rows."""
    base = _U(u * cstride)
    for i in range(_U(cstride)):
        xs[base + i] = 0
    n = u // c2_n
    c = 2 * (u - n * c2_n)
    src0 = _U((n * c_n + c) * plane)
    two = c + 1 < c_n  # an odd channel count: the last pair's high half stays zero
    rl = sw * q_n
    if sw == 1:  # a plain row: LLVM vectorises the rounding
        for h in range(h_n):
            s = src0 + _U(h * w_n)
            d = base + _U((h + pt) * rl + pl)
            if two:
                for w in range(_U(w_n)):
                    xs[d + w] = _bits(xu[s + w]) | (_bits(xu[s + _U(plane) + w]) << np.uint32(16))
            else:
                for w in range(_U(w_n)):
                    xs[d + w] = _bits(xu[s + w])
        return
    for h in range(h_n):
        for w in range(w_n):
            s = src0 + _U(h * w_n + w)
            pw = w + pl
            d = base + _U((h + pt) * rl + (pw % sw) * q_n + pw // sw)
            lo = _bits(xu[s])
            hi = _bits(xu[s + _U(plane)]) if two else np.uint32(0)
            xs[d] = lo | (hi << np.uint32(16))


@pjit
def pad_pairs(xu, xs, n_img, c_n, h_n, w_n, q_n, sw, pt, pl, cstride):
    """Round NCHW float32 ``xu`` (flat, viewed as uint32) to bf16 and store channel pairs
    (2c, 2c+1) as one uint32 per pixel into ``xs``: plane (n, c) of ``_layout._pad_copy``'s
    zero-bordered, phase-split layout holds pair c (ceil(C/2) planes per image, ``cstride``
    words each), and one spare plane of zeros follows the last image."""
    c2_n = (c_n + 1) // 2
    planes = n_img * c2_n
    plane = h_n * w_n
    for u in prange(planes + 1):
        if u == planes:
            for i in range(_U(cstride)):
                xs[_U(planes * cstride) + i] = 0
        else:
            _pair_plane(xu, xs, u, c_n, c2_n, h_n, w_n, q_n, sw, pt, pl, cstride, plane)
