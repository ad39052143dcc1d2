"""SiLU / HardSwish / HardSigmoid in every conv algorithm's epilogue (issue #21): a Conv followed
by the activation, optimized by convrt into one fused conv, against onnx's ReferenceEvaluator on
the unfused model (float64 numpy, so an exact oracle), and the exported model in onnxruntime.

The shapes pick the kernels: depthwise 3x3 (dw3x3 / depthwise), pointwise 1x1 (pixel), 3x3 with
many channels (direct / winograd), strided 3x3, 5x5 depthwise (EfficientNet's).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convrt

RNG = np.random.default_rng(21)

SHAPES = [  # (C in, C out, kernel, stride, group, H)
    (16, 16, 3, 1, 16, 20), (32, 32, 5, 2, 32, 17), (24, 40, 1, 1, 1, 14), (64, 64, 3, 1, 1, 16),
    (16, 24, 3, 2, 1, 19), (3, 8, 3, 1, 1, 9)]
ACTS = {"silu": ["Sigmoid", "Mul"], "hard_swish": ["HardSwish"],
        "hard_sigmoid": ["HardSigmoid"]}
FUSED = {"silu": "FusedConvSilu", "hard_swish": "FusedConvHardSwish",
         "hard_sigmoid": "FusedConvHardSigmoid"}


def conv_act_model(cin, cout, k, s, g, h, act):
    w = (RNG.standard_normal((cout, cin // g, k, k)) * (2 / (cin // g * k * k)) ** .5 * 2)
    b = RNG.standard_normal(cout) * 0.5
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[k // 2] * 4, strides=[s, s],
                              group=g)]
    if act == "silu":
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"],
                                                                               ["y"])]
    elif act == "hard_swish":
        nodes.append(helper.make_node("HardSwish", ["c"], ["y"]))
    else:
        nodes.append(helper.make_node("HardSigmoid", ["c"], ["y"], alpha=0.25, beta=0.45))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "W"),
         numpy_helper.from_array(b.astype(np.float32), "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_epilogue_activation(shape, act, tmp_path):
    m = conv_act_model(*shape, act)
    x = (RNG.standard_normal((1, shape[0], shape[5], shape[5])) * 3).astype(np.float32)
    x.flat[[7, x.size // 2]] = np.nan  # NaN must come through the epilogue, not vanish
    ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
    path = str(tmp_path / "opt.onnx")
    sess = convrt.InferenceSession(m.SerializeToString(),
                                   convrt.SessionOptions(optimized_model_filepath=path))
    y = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    fin = ~np.isnan(ref)
    np.testing.assert_allclose(y[fin], ref[fin], rtol=1e-5, atol=1e-5 * np.abs(ref[fin]).max())
    exported = onnx.load(path)
    assert [n.op_type for n in exported.graph.node] == [FUSED[act]]
    y2 = ort.InferenceSession(exported.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(y2[fin], ref[fin], rtol=1e-4, atol=1e-4 * np.abs(ref[fin]).max())


# -- squeeze-and-excitation scale: Mul(x[N, C, H, W], gate[N, C, 1, 1]) ----------------------
@pytest.mark.parametrize("xs, gs, swap", [
    ((2, 24, 7, 9), (2, 24, 1, 1), False), ((2, 24, 7, 9), (2, 24, 1, 1), True),
    ((1, 8, 5, 5), (1, 8, 5, 1), True), ((3, 4, 5), (3, 1, 1), False),
    ((2, 6, 4, 4), (6, 1, 1), False),  # broadcast over N: not per-plane, numpy's loop
    ((2, 6, 4, 4), (2, 1, 4, 1), True),  # 1 inside the leading dims: numpy's loop
    (("N", 6, 4, 4), ("N", 6, 1, 1), False)])  # symbolic batch, same symbol
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mul_per_plane_scale(xs, gs, swap, dtype):
    """Every broadcast Mul, per-plane kernel or numpy's loop, equals numpy's product exactly."""
    tp = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    concrete = [2 if d == "N" else d for d in xs]
    x = RNG.standard_normal(concrete).astype(dtype)
    g = RNG.standard_normal([2 if d == "N" else d for d in gs]).astype(dtype)
    ins = ["g", "x"] if swap else ["x", "g"]
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Mul", ins, ["y"])], "se",
        [helper.make_tensor_value_info("x", tp, list(xs)),
         helper.make_tensor_value_info("g", tp, list(gs))],
        [helper.make_tensor_value_info("y", tp, None)]),
        opset_imports=[helper.make_opsetid("", 17)])
    y = convrt.InferenceSession(m.SerializeToString()).run(None, {"x": x, "g": g})[0]
    assert y.dtype == dtype and np.array_equal(y, x * g)


def test_plane_rank_picks_only_per_plane_scales():
    from convrt.ops.elementwise import plane_rank
    assert plane_rank((2, 24, 7, 9), (2, 24, 1, 1), (2, 24, 7, 9)) == 2
    assert plane_rank(("N", 24, 7, 9), ("N", 24, 1, 1), ("N", 24, 7, 9)) == 2
    assert plane_rank(("N", 24, 7, 9), ("M", 24, 1, 1), ("N", 24, 7, 9)) == 0
    assert plane_rank((None, 24, 7, 9), (None, 24, 1, 1), (None, 24, 7, 9)) == 0
    assert plane_rank((2, 24, 7, 9), (24, 1, 1), (2, 24, 7, 9)) == 0
    assert plane_rank((2, 24, 7, 9), (2, 24, 7, 9), (2, 24, 7, 9)) == 0  # same shape: own path
    assert plane_rank((2, 24, 1, 1), (2, 24, 7, 9), (2, 24, 7, 9)) == 0  # small operand is big


# -- LayerNormalization (opset 17, ConvNeXt) against onnx's ReferenceEvaluator ---------------
def _ln_model(xs, ss, axis, with_b=True, outputs=1, dtype=np.float32):
    tp = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array((RNG.standard_normal(ss) + 1).astype(dtype), "S")]
    ins = ["x", "S"]
    if with_b:
        inits.append(numpy_helper.from_array(RNG.standard_normal(ss).astype(dtype), "B"))
        ins.append("B")
    outs = ["y", "mean", "inv"][:outputs]
    node = helper.make_node("LayerNormalization", ins, outs, axis=axis, epsilon=1e-5)
    return helper.make_model(helper.make_graph(
        [node], "ln", [helper.make_tensor_value_info("x", tp, list(xs))],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs], inits),
        opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("xs, ss, axis, with_b, outputs", [
    ((2, 7, 7, 96), (96,), -1, True, 1),  # ConvNeXt's channels-last LayerNorm
    ((2, 8, 5, 5), (8, 5, 5), 1, True, 3), ((3, 4, 6), (6,), 2, False, 2),
    ((3, 4, 6), (1, 6), -2, True, 3)])
def test_layer_normalization(xs, ss, axis, with_b, outputs):
    m = _ln_model(xs, ss, axis, with_b, outputs)
    x = (RNG.standard_normal(xs) * 3 + 1).astype(np.float32)
    want = ReferenceEvaluator(m).run(None, {"x": x})
    got = convrt.InferenceSession(m.SerializeToString()).run(None, {"x": x})
    assert len(got) == outputs
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xs, ss, axis", [((2, 3, 4), (4,), 3), ((2, 3, 4), (4,), -4),
                                          ((2, 3, 4), (3,), -1), ((2, 3, 4), (5, 3, 4), 0)])
def test_layer_normalization_misfit_is_one_line_shape_error(xs, ss, axis):
    with pytest.raises(convrt.errors.ShapeError) as e:
        convrt.InferenceSession(_ln_model(xs, ss, axis).SerializeToString())
    assert "\n" not in str(e.value)
