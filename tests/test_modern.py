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
