"""EfficientNet-B0, MobileNetV3-Large, ResNet-50, ConvNeXt-tiny and YOLOv8n (issue #21) built by
sample_models/builders.py at 64x64 (YOLOv8n: 128x128): convrt's optimized run against onnxruntime on the same file (max error <= 1e-4 x max|y|),
batch 2 so per-sample indexing in the SE scale and the fused kernels is exercised too.

The builders are torchvision's layer structure with random weights, so these are the graphs the
legacy exporter writes (SiLU as Mul(x, Sigmoid(x)), SE as Mul(gate, x), HardSwish/HardSigmoid);
the test also checks the SiLU fusions fired, so a silently unfused model does not pass as "fast".
"""

from __future__ import annotations

import collections
import pathlib
import sys

import numpy as np
import onnx
import pytest

import convrt

ort = pytest.importorskip("onnxruntime")

SAMPLE_DIR = pathlib.Path(__file__).resolve().parent.parent / "sample_models"
sys.path.insert(0, str(SAMPLE_DIR))
import builders  # noqa: E402

TOL = 1e-4


def _reference(data: bytes, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


@pytest.mark.parametrize("name, ops", [
    ("efficientnet_b0", {"Sigmoid": 65, "GlobalAveragePool": 17}),
    ("mobilenet_v3_large", {"HardSwish": 21, "HardSigmoid": 8}),
    ("resnet50", {"Conv": 53, "Add": 16}),
    ("convnext_tiny", {"Erf": 18, "LayerNormalization": 23, "MatMul": 36, "Transpose": 46}),
])
def test_matches_onnxruntime(name, ops):
    model = builders.build(name, image=64)
    onnx.checker.check_model(model)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    for op, n in ops.items():  # the torchvision structure: block counts as exported
        assert counts[op] == n, (op, counts[op])
    data = model.SerializeToString()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    y_ref = _reference(data, x)
    assert y_ref.shape == (2, 1000) and np.isfinite(y_ref).all()
    assert 1e-2 < np.abs(y_ref).max() < 1e3  # weights scaled so activations stay O(1)
    y = convrt.InferenceSession(data).run(None, {"input": x})[0]
    err = np.abs(y - y_ref).max()
    assert err <= TOL * np.abs(y_ref).max(), (name, err, np.abs(y_ref).max())


def test_efficientnet_silus_fused():
    """Every SiLU of EfficientNet-B0 leaves the graph (49: stem, expand, depthwise, SE, head),
    no standalone Sigmoid is left (the SE gates' are fused into their convolutions), and the
    optimized model, written back as ONNX, runs in onnxruntime with the original's outputs."""
    from convrt.onnx_io.writer import from_graph

    model = builders.build("efficientnet_b0", image=64)
    graph = convrt.load(model.SerializeToString())
    convrt.optimize(graph)
    ops = collections.Counter(n.op_type for n in graph.nodes)
    assert ops["FusedConvSilu"] + ops["Silu"] == 49, ops
    assert ops["Sigmoid"] == 0 and ops["FusedConvSigmoid"] == 16, ops
    so = ort.SessionOptions()
    so.log_severity_level = 3
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)

    def run(m):
        sess = ort.InferenceSession(m.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    ref = run(model)
    assert np.abs(run(from_graph(graph)) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_yolov8n_matches_onnxruntime_and_silus_fused():
    """YOLOv8n at 128x128, batch 2 (static, as ultralytics exports): the C2f Splits, SPPF, the
    Resize-nearest upsampling and the Detect head (DFL Softmax, Slice, box decoding) included."""
    model = builders.build("yolov8n", image=128, batch=2)
    onnx.checker.check_model(model)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    expect = {"Conv": 64, "Sigmoid": 58, "Mul": 58, "Concat": 19, "Split": 9, "Add": 8,
              "Reshape": 5, "MaxPool": 3, "Resize": 2, "Slice": 2, "Sub": 2, "Softmax": 1}
    assert {op: counts[op] for op in expect} == expect, counts
    data = model.SerializeToString()
    x = np.random.default_rng(1).standard_normal((2, 3, 128, 128)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    y_ref = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(
        None, {"images": x})[0]
    assert y_ref.shape == (2, 84, 16 * 16 + 8 * 8 + 4 * 4) and np.isfinite(y_ref).all()
    y = convrt.InferenceSession(data).run(None, {"images": x})[0]
    err = np.abs(y - y_ref).max()
    assert err <= TOL * np.abs(y_ref).max(), (err, np.abs(y_ref).max())
    graph = convrt.load(data)
    convrt.optimize(graph)
    ops = collections.Counter(n.op_type for n in graph.nodes)
    assert ops["FusedConvSilu"] + ops["Silu"] == 57 and ops["Split"] == 9, ops


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_shape, n", [((1, 7, 9, 24), 40), ((2, 20, 33), 16), ((16, 5), 17),
                                        ((3, 15), 64)])
def test_matmul_by_constant(dtype, a_shape, n):
    """MatMul by a constant B: 16+ rows and columns take the 1x1-convolution form (ConvNeXt's
    Linear layers), fewer the packed GEMM; both against numpy in float64."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    b = rng.standard_normal((a_shape[-1], n)).astype(dtype)
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", elem, list(a_shape))],
                          [helper.make_tensor_value_info("y", elem, None)],
                          [numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    a = rng.standard_normal(a_shape).astype(dtype)
    y = convrt.InferenceSession(m.SerializeToString()).run(None, {"a": a})[0]
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert y.dtype == dtype and y.shape == exact.shape
    np.testing.assert_allclose(y, exact, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)
