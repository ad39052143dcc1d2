"""Resize and Upsample against oracles.

* Resize-11..19: onnx's ReferenceEvaluator over a grid of modes x coordinate transformations x
  nearest modes x scales/sizes (upscale, downscale, non-integer), plus axes, aspect-ratio
  policies, antialias, exclude_outside, tf_crop_and_resize, dtypes and ranks.
* Resize-10, Upsample-7/9 and tf_half_pixel_for_nn: onnxruntime (the reference evaluator runs
  none of them beyond Upsample's integer nearest, which is checked against it too).
* A small U-Net exported from PyTorch (``sample_models/export_unet.py``): torch's own output.
* Bad input: one-line ShapeError/UnsupportedOpError naming the node, at load time.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from oracle import assert_close, check_op, node_model, run_both, run_ort

import convrt

SAMPLES = pathlib.Path(__file__).resolve().parent.parent / "sample_models"
RNG = np.random.default_rng(0)
X4 = RNG.standard_normal((2, 3, 5, 7)).astype(np.float32)
CONST = ("roi", "scales", "sizes")
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
MODES = [("nearest", m) for m in NEAREST] + [("linear", None), ("cubic", None)]
CTMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
        "half_pixel_symmetric"]
TARGETS = [  # (kind, values): integer up, mixed non-integer, down, sizes up/down, length-1 axes
    ("scales", [1, 1, 2, 2]), ("scales", [1, 1, 0.6, 1.7]), ("scales", [1, 1, 0.5, 0.25]),
    ("sizes", [2, 3, 9, 4]), ("sizes", [2, 3, 1, 1]),
]


def _inputs(x, kind=None, values=None, roi=None, opset=19):
    scales = np.array(values, np.float32) if kind == "scales" else None
    sizes = np.array(values, np.int64) if kind == "sizes" else None
    if opset < 13 and scales is None:
        scales = np.zeros(0, np.float32)  # required before opset 13: empty means "use sizes"
    return {"x": x, "roi": roi, "scales": scales, "sizes": sizes}


def _attrs(mode, nearest_mode=None, ctm=None, **kw):
    attrs = {"mode": mode, **kw}
    if nearest_mode is not None:
        attrs["nearest_mode"] = nearest_mode
    if ctm is not None:
        attrs["coordinate_transformation_mode"] = ctm
    return attrs


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype != np.float16 else {"rtol": 2e-3, "atol": 2e-3}


# -- Resize-19 grid against the reference evaluator --------------------------------------------
@pytest.mark.parametrize("kind,values", TARGETS, ids=[f"{k}{v}" for k, v in TARGETS])
@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("mode,nearest_mode", MODES, ids=[m if n is None else f"nearest-{n}"
                                                          for m, n in MODES])
def test_resize_grid_matches_reference(mode, nearest_mode, ctm, kind, values):
    check_op("Resize", _inputs(X4, kind, values), _attrs(mode, nearest_mode, ctm), opset=19,
             const=CONST, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("kind,values", [("scales", [1, 1, 2, 1.5]), ("sizes", [2, 3, 3, 4])])
@pytest.mark.parametrize("ctm", ["half_pixel", "pytorch_half_pixel", "align_corners",
                                 "asymmetric"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_opsets_match_reference(opset, kind, values, ctm, mode):
    roi = np.zeros(0, np.float32) if opset == 11 else None  # roi is required in Resize-11
    check_op("Resize", _inputs(X4, kind, values, roi, opset), _attrs(mode, ctm=ctm),
             opset=opset, const=CONST, rtol=1e-5, atol=1e-5)


# -- attributes of Resize-18/19 -----------------------------------------------------------------
@pytest.mark.parametrize("axes,kind,values", [
    ([2, 3], "scales", [2.0, 1.5]), ([3, 2], "scales", [0.5, 3.0]), ([-1], "scales", [1.8]),
    ([1], "scales", [2.0]), ([2, 3], "sizes", [8, 3]), ([3, -2], "sizes", [10, 2]),
])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_axes(axes, kind, values, mode):
    """Negative axes count from the back; the reference takes only non-negative ones, so it
    runs the same model with the axes normalized."""
    inputs = _inputs(X4, kind, values)
    model = node_model("Resize", inputs, _attrs(mode, axes=axes), opset=18, const=CONST)
    ref_model = node_model("Resize", inputs, _attrs(mode, axes=[a % 4 for a in axes]), opset=18,
                           const=CONST)
    got = convrt.InferenceSession(model).run(None, {"x": X4})
    assert_close(got, ReferenceEvaluator(ref_model).run(None, {"x": X4}), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
@pytest.mark.parametrize("axes,sizes", [(None, [2, 3, 8, 8]), ([2, 3], [3, 20]),
                                        ([3, 2], [20, 3])])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_keep_aspect_ratio_policy(policy, axes, sizes, mode):
    attrs = _attrs(mode, keep_aspect_ratio_policy=policy)
    if axes is not None:
        attrs["axes"] = axes
    check_op("Resize", _inputs(X4, "sizes", sizes), attrs, opset=19, const=CONST,
             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,values", [("scales", [1, 1, 0.5, 0.3]), ("scales", [1, 1, 0.8, 2]),
                                         ("sizes", [2, 3, 2, 3])])
@pytest.mark.parametrize("ctm", ["half_pixel", "align_corners", "asymmetric"])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_antialias(mode, ctm, kind, values):
    x = RNG.standard_normal((1, 2, 11, 13)).astype(np.float32)
    check_op("Resize", _inputs(x, kind, values), _attrs(mode, ctm=ctm, antialias=1), opset=18,
             const=CONST, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("a", [-0.5, -0.75])
@pytest.mark.parametrize("exclude", [0, 1])
@pytest.mark.parametrize("values", [[1, 1, 0.8, 2.3], [1, 1, 3, 0.5]])
def test_cubic_coeff_and_exclude_outside(a, exclude, values):
    check_op("Resize", _inputs(X4, "scales", values),
             _attrs("cubic", cubic_coeff_a=a, exclude_outside=exclude), opset=19, const=CONST,
             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,nearest_mode", [("nearest", "round_prefer_floor"),
                                               ("nearest", "ceil"), ("linear", None),
                                               ("cubic", None)])
@pytest.mark.parametrize("kind,values,roi,axes", [
    ("scales", [1, 1, 2, 1.5], [0, 0, 0.2, 0.1, 1, 1, 0.9, 0.7], None),
    ("sizes", [2, 3, 6, 6], [0, 0, -0.3, 0.4, 1, 1, 1.2, 1.5], None),  # partly outside
    ("sizes", [6, 4], [0.6, -0.2, 0.2, 0.9], [3, 2]),
])
def test_tf_crop_and_resize(mode, nearest_mode, kind, values, roi, axes):
    attrs = _attrs(mode, nearest_mode, "tf_crop_and_resize", extrapolation_value=-7.5)
    if axes is not None:
        attrs["axes"] = axes
    check_op("Resize", _inputs(X4, kind, values, np.array(roi, np.float32)), attrs, opset=19,
             const=CONST, rtol=1e-5, atol=1e-5)


# -- dtypes, ranks, the kernels' work split -----------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_float_dtypes(dtype, mode):
    x = X4.astype(dtype)
    check_op("Resize", _inputs(x, "scales", [1, 1, 1.6, 0.7]), _attrs(mode), opset=19,
             const=CONST, **_tol(dtype))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.int64])
def test_nearest_any_dtype(dtype):
    x = (RNG.standard_normal((1, 2, 4, 5)) * 50).astype(dtype)
    check_op("Resize", _inputs(x, "scales", [1, 1, 2.5, 0.6]), _attrs("nearest"), opset=19,
             const=CONST)


def test_nearest_bool():
    """The reference cannot cast to bool; nearest is a gather, so uint8 data is the oracle."""
    x = RNG.standard_normal((1, 2, 4, 5)) > 0
    inputs = _inputs(x, "scales", [1, 1, 2.5, 0.6])
    got = convrt.InferenceSession(node_model("Resize", inputs, {}, opset=19, const=CONST)).run(
        None, {"x": x})[0]
    ref_model = node_model("Resize", {**inputs, "x": x.astype(np.uint8)}, {}, opset=19,
                           const=CONST)
    ref = ReferenceEvaluator(ref_model).run(None, {"x": x.astype(np.uint8)})[0]
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, ref.astype(bool))


@pytest.mark.parametrize("shape,values", [
    ((7,), [2.5]), ((5, 6), [1.5, 0.5]), ((2, 5, 6), [1, 2, 0.7]),
    ((1, 2, 3, 4, 5), [1, 1, 2, 1.5, 0.8]),  # trilinear: the depth axis runs its own pass
    ((2, 3, 4, 5), [2, 0.7, 1.5, 2]),  # batch and channel axes resized too
    ((1, 1, 70, 33), [1, 1, 2.2, 1.9]),  # one plane, many rows: blocks of rows in parallel
])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_ranks(shape, values, mode):
    x = RNG.standard_normal(shape).astype(np.float32)
    check_op("Resize", _inputs(x, "scales", values), _attrs(mode), opset=19, const=CONST,
             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_identity_and_empty(mode):
    check_op("Resize", _inputs(X4, "scales", [1, 1, 1, 1]), _attrs(mode), opset=19, const=CONST)
    x = np.zeros((2, 0, 3, 4), np.float32)
    got = check_op("Resize", _inputs(x, "scales", [1, 1, 2, 2]), _attrs(mode), opset=19,
                   const=CONST)
    assert got[0].shape == (2, 0, 6, 8)
    x = np.zeros((1, 0, 5), np.float32)  # the empty axis is one of the last two
    got = check_op("Resize", _inputs(x, "scales", [2, 2, 1.5]), _attrs(mode), opset=19,
                   const=CONST)
    assert got[0].shape == (2, 0, 7)


def test_nearest_keeps_nan_and_signed_zero_bits():
    """Nearest copies elements bit for bit.  The reference multiplies every neighbour by its
    0/1 weight, so a NaN or inf spreads to its neighbours there (0 * inf = NaN) and -0.0 turns
    into 0.0; the oracle here is the definition: a 2x half_pixel nearest upscale repeats each
    element twice along each axis."""
    x = np.array([[[[np.nan, -0.0], [np.inf, 1.5]]]], np.float32)
    model = node_model("Resize", _inputs(x, "scales", [1, 1, 2, 2]), {}, opset=19, const=CONST)
    got = convrt.InferenceSession(model).run(None, {"x": x})[0]
    want = np.repeat(np.repeat(x, 2, 2), 2, 3)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_constant_input_is_folded_at_load():
    model = node_model("Resize", _inputs(X4, "scales", [1, 1, 2, 1.5]), _attrs("linear"),
                       opset=19, const=("x",) + CONST)
    graph = convrt.load(model)
    out = graph.outputs[0]
    assert out.shape == (2, 3, 10, 10)
    got, ref = run_both(model, {})
    assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_symbolic_batch_keeps_its_name():
    model = node_model("Resize", _inputs(X4, "scales", [1, 1, 2, 2]), _attrs("linear"),
                       opset=19, const=CONST)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    sess = convrt.InferenceSession(model)
    assert sess.get_outputs()[0].shape == ["N", 3, 10, 14]
    for n in (1, 3):
        x = RNG.standard_normal((n, 3, 5, 7)).astype(np.float32)
        got, ref = run_both(model, {"x": x})
        assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_tables_built_at_first_run_when_large(monkeypatch):
    """Past EAGER_TABLE_ENTRIES the tables wait for the first run; the result is the same."""
    from convrt.ops import resize as resize_op

    monkeypatch.setattr(resize_op, "EAGER_TABLE_ENTRIES", 0)
    check_op("Resize", _inputs(X4, "scales", [1, 1, 1.5, 2.5]), _attrs("cubic"), opset=19,
             const=CONST, rtol=1e-5, atol=1e-5)


def test_huge_output_is_refused_before_tables_are_built():
    """An axis of 2**31 - 1 float64 outputs (16 GB): the plan's memory budget refuses it, and
    no table of that length was built on the way (that would take minutes and gigabytes)."""
    x = np.ones(3, np.float64)
    model = node_model("Resize", _inputs(x, "sizes", [2 ** 31 - 1]), _attrs("linear"),
                       opset=19, const=CONST)
    sess = convrt.InferenceSession(model)
    with pytest.raises(convrt.ConvrtError, match="memory budget"):
        sess.run(None, {"x": x})


# -- opsets the reference does not run: onnxruntime ---------------------------------------------
@pytest.mark.parametrize("values", [[1, 1, 2, 3], [1, 1, 1.5, 1.7], [1, 1, 0.6, 0.45],
                                    [1, 1, 0.5, 2]])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_10_matches_onnxruntime(mode, values):
    check_op("Resize", {"x": X4, "scales": np.array(values, np.float32)}, {"mode": mode},
             opset=10, const=("scales",), rtol=1e-5, atol=1e-5, oracle="onnxruntime")


@pytest.mark.parametrize("values", [[1, 1, 2, 2], [1, 1, 1.5, 1.7], [1, 2, 3, 1]])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_9_matches_onnxruntime(mode, values):
    check_op("Upsample", {"x": X4, "scales": np.array(values, np.float32)}, {"mode": mode},
             opset=9, const=("scales",), rtol=1e-5, atol=1e-5, oracle="onnxruntime")


@pytest.mark.parametrize("values", [[1, 1, 2, 3], [1, 1, 1.5, 1.7]])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_7_matches_onnxruntime(mode, values):
    scales = [float(v) for v in values]  # a FLOATS attribute
    model = node_model("Upsample", {"x": X4}, {"mode": mode, "scales": scales}, opset=7)
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT  # for onnxruntime
    got = convrt.InferenceSession(model).run(None, {"x": X4})
    assert_close(got, run_ort(model, {"x": X4}), rtol=1e-5, atol=1e-5)


def test_upsample_9_integer_nearest_matches_reference():
    check_op("Upsample", {"x": X4, "scales": np.array([1, 2, 2, 3], np.float32)}, {}, opset=9,
             const=("scales",))


@pytest.mark.parametrize("values", [[1, 1, 2, 3], [1, 1, 1.5, 0.6]])
def test_tf_half_pixel_for_nn_matches_onnxruntime(values):
    check_op("Resize", _inputs(X4, "scales", values, np.zeros(0, np.float32), opset=11),
             _attrs("nearest", ctm="tf_half_pixel_for_nn"), opset=11, const=CONST,
             oracle="onnxruntime")


# -- the PyTorch oracle -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["unet_upsample.onnx", "unet_upsample_opset11.onnx",
                                  "unet_upsample_opset13.onnx"])
def test_unet_matches_torch(name):
    data = np.load(SAMPLES / "unet_upsample.npz")
    model = onnx.load(str(SAMPLES / name))
    resizes = {a.s.decode() for n in model.graph.node if n.op_type == "Resize"
               for a in n.attribute if a.name == "coordinate_transformation_mode"}
    assert resizes == {"asymmetric", "half_pixel", "align_corners"}  # the paths under test
    sess = convrt.InferenceSession(str(SAMPLES / name))
    (y,) = sess.run(None, {"input": data["x"]})
    assert y.shape == data["y"].shape == (1, 2, 32, 48)
    err = float(np.abs(y - data["y"]).max())
    assert err <= 1e-4 * float(np.abs(data["y"]).max()), err


# -- bad input ---------------------------------------------------------------------------------
def _bad(op, inputs, attrs, opset=19, const=CONST):
    model = node_model(op, inputs, attrs, opset=opset, const=const)
    model.graph.node[0].name = "the_resize"
    return model


def _raises(model, error):
    with pytest.raises(error) as e:
        convrt.InferenceSession(model)
    msg = str(e.value)
    assert "the_resize" in msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("inputs,attrs,match", [
    ({"x": X4, "roi": None, "scales": np.array([1, 1, 2, 2], np.float32),
      "sizes": np.array([2, 3, 10, 14], np.int64)}, {}, "both given"),
    ({"x": X4, "roi": None, "scales": np.zeros(0, np.float32),
      "sizes": np.zeros(0, np.int64)}, {}, "must be given"),
    (_inputs(X4, "scales", [1, 1, 0, 2]), {}, "> 0"),
    (_inputs(X4, "scales", [1, 1, -2, 2]), {}, "> 0"),
    (_inputs(X4, "scales", [1, 1, np.nan, 2]), {}, "finite"),
    (_inputs(X4, "scales", [1, 1, 1e30, 2]), {}, "too long"),
    (_inputs(X4, "scales", [2, 2]), {}, "2 entries, expected 4"),
    (_inputs(X4, "scales", [1, 1, 2, 2, 2]), {}, "5 entries, expected 4"),
    (_inputs(X4, "sizes", [2, 3, 4]), {}, "3 entries, expected 4"),
    (_inputs(X4, "sizes", [2, 3, 0, 4]), {}, ">= 1"),
    (_inputs(X4, "sizes", [2, 3, -4, 4]), {}, ">= 1"),
    (_inputs(X4, "sizes", [4, 4]), {"axes": [2, 2]}, "duplicates"),
    (_inputs(X4, "sizes", [4, 4]), {"axes": [2, 4]}, "out of range"),
    (_inputs(X4, "scales", [1, 1, 2, 2]), {"mode": "bilinear"}, "mode 'bilinear'"),
    (_inputs(X4, "scales", [1, 1, 2, 2]), {"coordinate_transformation_mode": "edge"}, "edge"),
    (_inputs(X4, "scales", [1, 1, 2, 2]), {"nearest_mode": "round"}, "nearest_mode"),
    (_inputs(X4, "sizes", [2, 3, 4, 4]), {"keep_aspect_ratio_policy": "fit"}, "fit"),
    (_inputs(X4, "scales", [1, 1, 2, 2]), {"exclude_outside": 2}, "exclude_outside"),
    (_inputs(X4, "scales", [1, 1, 2, 2]), {"antialias": 3}, "antialias"),
    (_inputs(X4, "scales", [1, 1, 2, 2]), {"coordinate_transformation_mode": "tf_crop_and_resize"},
     "roi"),
    (_inputs(X4, "scales", [1, 1, 2, 2], np.array([0, 0, 1, 1], np.float32)),
     {"coordinate_transformation_mode": "tf_crop_and_resize"}, "roi has 4 entries"),
    (_inputs(np.zeros((1, 1, 0, 3), np.float32), "sizes", [1, 1, 4, 3]), {}, "empty"),
], ids=["both", "neither", "zero-scale", "negative-scale", "nan-scale", "huge-scale",
        "short-scales", "long-scales", "short-sizes", "zero-size", "negative-size",
        "duplicate-axes", "axis-range", "mode", "ctm", "nearest-mode", "policy", "exclude",
        "antialias", "no-roi", "short-roi", "empty-axis"])
def test_bad_resize_is_one_line_shape_error(inputs, attrs, match):
    assert match in _raises(_bad("Resize", inputs, attrs), convrt.ShapeError)


@pytest.mark.parametrize("opset,ctm", [(13, "tf_half_pixel_for_nn"),
                                       (18, "half_pixel_symmetric")])
def test_mode_of_another_opset_is_rejected(opset, ctm):
    model = _bad("Resize", _inputs(X4, "scales", [1, 1, 2, 2]),
                 {"coordinate_transformation_mode": ctm}, opset=opset)
    assert ctm in _raises(model, convrt.ShapeError)


@pytest.mark.parametrize("op,opset,inputs,attrs,match", [
    ("Upsample", 9, {"x": X4, "scales": np.array([1, 1, 0.5, 2], np.float32)}, {}, ">= 1"),
    ("Upsample", 9, {"x": X4, "scales": np.array([1, 2], np.float32)}, {}, "expected 4"),
    ("Upsample", 7, {"x": X4}, {"scales": [1.0, 2.0]}, "expected 4"),
    ("Upsample", 7, {"x": X4}, {"scales": [1.0, 1.0, 2.0, 2.0], "mode": "cubic"}, "cubic"),
    ("Resize", 10, {"x": X4, "scales": np.array([1, 1, 2, 2], np.float32)}, {"mode": "cubic"},
     "cubic"),
])
def test_bad_legacy_is_one_line_shape_error(op, opset, inputs, attrs, match):
    model = _bad(op, inputs, attrs, opset=opset, const=("scales",))
    assert match in _raises(model, convrt.ShapeError)


def test_nearest_exclude_outside_is_unsupported():
    model = _bad("Resize", _inputs(X4, "scales", [1, 1, 2, 2]), {"exclude_outside": 1})
    assert "exclude_outside" in _raises(model, convrt.UnsupportedOpError)


def test_linear_resize_of_integers_is_unsupported():
    x = np.arange(20, dtype=np.int32).reshape(1, 1, 4, 5)
    model = _bad("Resize", _inputs(x, "scales", [1, 1, 2, 2]), {"mode": "linear"})
    assert "int32" in _raises(model, convrt.UnsupportedOpError)


def test_scales_of_wrong_dtype_is_a_shape_error():
    model = _bad("Resize", {"x": X4, "roi": None, "scales": None,
                            "sizes": np.array([2, 3, 4, 4], np.float32)}, {})
    assert "sizes has dtype float32" in _raises(model, convrt.ShapeError)


def test_roi_ignored_unless_crop():
    """A roi input that is not constant does not matter outside tf_crop_and_resize."""
    roi = np.array([0, 0, 0.5, 0.5, 1, 1, 0.2, 0.2], np.float32)
    model = node_model("Resize", _inputs(X4, "scales", [1, 1, 2, 2], roi), _attrs("linear"),
                       opset=19, const=("scales",))
    got, ref = run_both(model, {"x": X4, "roi": roi})
    assert_close(got, ref, rtol=1e-5, atol=1e-5)
    got_ort = run_ort(model, {"x": X4, "roi": roi})
    assert_close(got, got_ort, rtol=1e-5, atol=1e-5)
