"""Cast: numeric types, plus the ml_dtypes ONNX exchanges (bfloat16, float8, float4, int4, int2).

The small float types follow the spec's tables: with ``saturate`` (default) out-of-range values
and infinities clamp to the largest finite value; without it they become NaN (Inf for E5M2).
FLOAT8E8M0 (a power of two) honours ``round_mode`` (up / down / nearest).

Integer targets of 4 or 2 bits are computed here, not by ml_dtypes' conversion: floats round
half to even (ONNX's technical note on INT4), then every source keeps the low bits (two's
complement).  The spec defines that wrap for fixed-point sources ("discard higher bits and
reinterpret") and leaves floating-point values out of range *undefined*; ml_dtypes changed its
answers between releases (0.6 wrapped those values, 0.7 gives 0 and truncates fractions), so
convrt wraps them too, the same whatever ml_dtypes is installed.  Only in-range int64 values
ever reach ml_dtypes' ``astype``.
"""


import numpy as np

from ..onnx_io.tensors import ELEM_STRING, EXOTIC_ELEM_TYPES, elem_type_dtype, elem_type_name

_SATURATING = {"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
               "float4_e2m1fn"}
_SMALL_INTS = {"int4", "uint4", "int2", "uint2"}


def onnx_np_dtype(ctx, to) -> np.dtype:
    """The numpy (or ml_dtypes) dtype of ONNX element type ``to``."""
    to = int(to)
    if to == ELEM_STRING:
        raise ctx.unsupported("cast to STRING is not supported")
    try:
        dt = elem_type_dtype(to)
    except Exception:
        raise ctx.unsupported(f"cast to ONNX type {to} is not supported") from None
    if dt.kind not in "biuf" and to not in EXOTIC_ELEM_TYPES:
        raise ctx.unsupported(f"cast to {elem_type_name(to)} is not supported")
    return dt


def _is_small_float(dt) -> bool:
    return dt.kind == "V" and dt.name not in _SMALL_INTS


def _to_e8m0(x, out, saturate, mode):
    import ml_dtypes
    f = np.asarray(x, dtype=np.float64)
    e8 = np.dtype(ml_dtypes.float8_e8m0fnu)
    lo_e, hi_e = -127, 127
    with np.errstate(all="ignore"):
        m, e = np.frexp(np.abs(f))  # |f| = m * 2**e, m in [0.5, 1)
        exact = m == 0.5
        down = e - 1
        if mode == "down":
            k = down
        elif mode == "nearest":
            k = np.where(m >= 0.75, e, down)
        else:
            k = np.where(exact, down, e)
        k = np.where(exact, down, k)
        bad = ~np.isfinite(f) | (f <= 0) | (k > hi_e) | (k < lo_e)
        if saturate:
            k = np.clip(k, lo_e, hi_e)
            k = np.where(np.isposinf(f), hi_e, k)
            k = np.where(f <= 0, lo_e, k)
            nan = np.isnan(f)
        else:
            nan = bad
        vals = np.ldexp(1.0, k.astype(np.int64))
        vals = np.where(nan, np.nan, vals)
    out[...] = vals.astype(e8)


def _cast_kernel(src, dst, saturate, round_mode):
    if dst.name == "float8_e8m0fnu":
        return lambda x, out: _to_e8m0(x, out, saturate, round_mode)
    if dst.name in _SATURATING and saturate and src.kind in "fV" and src.name not in _SMALL_INTS:
        import ml_dtypes
        hi = float(ml_dtypes.finfo(dst).max)

        def run_sat(x, out):
            out[...] = np.clip(x.astype(np.float32), -hi, hi).astype(dst)
        return run_sat
    if dst.name in _SMALL_INTS:
        bits = 4 if dst.name.endswith("4") else 2
        signed = not dst.name.startswith("u")
        wide = np.float64 if src.kind in "fV" else np.int64  # int4 and bfloat16 are "V"

        def run_int(x, out):  # round half to even, then keep the low bits (two's complement)
            with np.errstate(invalid="ignore"):
                v = np.rint(x.astype(wide)).astype(np.int64) & ((1 << bits) - 1)
            if signed:
                v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
            out[...] = v.astype(dst)
        return run_int
    if _is_small_float(src) or _is_small_float(dst) or src.name in _SMALL_INTS \
            or dst.name in _SMALL_INTS:
        def run_via(x, out):
            mid = x.astype(np.float32) if src.kind == "V" and dst.kind != "V" and \
                dst.kind == "f" else x
            out[...] = np.asarray(mid).astype(dst)
        return run_via
    return lambda x, out: np.copyto(out, x, casting="unsafe")


def cast_op(ctx, input, to, saturate=1, round_mode="up"):
    """Cast ``input`` to ONNX type ``to``; shared by every Cast schema version."""
    dt = onnx_np_dtype(ctx, to)
    src = input.dtype
    ctx.check(src is not None and (src.kind in "biuf" or src.kind == "V"),
              f"cannot cast from {src}")
    ctx.check(round_mode in ("up", "down", "nearest"), f"round_mode {round_mode!r} is not one "
              "of up, down, nearest")
    return ctx.result([input.shape], [dt], _cast_kernel(src, dt, bool(saturate), round_mode))


__all__ = ["cast_op", "onnx_np_dtype"]
