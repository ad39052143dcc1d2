"""Cast to INT4/UINT4/INT2/UINT2 by the Cast spec, whatever ml_dtypes release is installed.

The spec (Cast, and ONNX's technical note on INT4: "rounding to the nearest-integer (with ties
to even) ... and truncating"): floats round to the nearest integer (ties to even); fixed-point values out of range
"discard higher bits and reinterpret"; floats out of range are undefined, and convrt wraps them
like integers.  Expected values here are plain Python integer arithmetic, not ml_dtypes.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import convrt

TARGETS = {"INT4": (4, True), "UINT4": (4, False), "INT2": (2, True), "UINT2": (2, False)}


def _wrap(v: int, bits: int, signed: bool) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v


def _cast(x: np.ndarray, to: str) -> np.ndarray:
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=getattr(TensorProto, to))],
                          "cast", [helper.make_tensor_value_info("x", elem, x.shape)],
                          [helper.make_tensor_value_info("y", getattr(TensorProto, to),
                                                         x.shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    (y,) = convrt.InferenceSession(m).run(None, {"x": x})
    return y


@pytest.mark.parametrize("to", sorted(TARGETS))
@pytest.mark.parametrize("src", [np.int8, np.int32, np.int64, np.uint8])
def test_fixed_point_sources_wrap(to, src):
    bits, signed = TARGETS[to]
    lo = -40 if np.dtype(src).kind == "i" else 0
    x = np.arange(lo, lo + 80).astype(src)
    y = _cast(x, to)
    assert y.dtype == helper.tensor_dtype_to_np_dtype(getattr(TensorProto, to))
    want = [_wrap(int(v), bits, signed) for v in x]
    assert y.astype(np.int64).tolist() == want


@pytest.mark.parametrize("to", sorted(TARGETS))
@pytest.mark.parametrize("src", [np.float16, np.float32, np.float64])
def test_float_sources_round_half_to_even_then_wrap(to, src):
    bits, signed = TARGETS[to]
    x = (np.arange(-40, 40) / 2).astype(src)  # every half: ties are exercised
    y = _cast(x, to)
    want = [_wrap(int(round(float(v))), bits, signed) for v in x]  # Python round: ties to even
    assert y.astype(np.int64).tolist() == want


@pytest.mark.parametrize("to", sorted(TARGETS))
def test_in_range_floats_match_onnx_reference(to):
    """Integral floats in range: onnx's reference evaluator agrees.  (Its answer for fractions is
    ml_dtypes' astype, which truncates in 0.7 where ONNX's int4 note says round half to even.)"""
    from onnx.reference import ReferenceEvaluator
    bits, signed = TARGETS[to]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    x = np.arange(lo, hi + 1).astype(np.float32)
    y = _cast(x, to)
    node = helper.make_node("Cast", ["x"], ["y"], to=getattr(TensorProto, to))
    ref = ReferenceEvaluator(node).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y.astype(np.int64), ref.astype(np.int64))
    assert onnx.__version__  # the installed spec is the one tested
