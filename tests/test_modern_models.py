"""EfficientNet-B0, MobileNetV3-Large and ResNet-50 (issue #21) built by sample_models/builders.py
at 64x64: convrt's optimized run against onnxruntime on the same file (max error <= 1e-4 x max|y|),
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
    """Every SiLU of EfficientNet-B0 leaves the graph (49: stem, expand, depthwise, SE, head)."""
    graph = convrt.load(builders.build("efficientnet_b0", image=64).SerializeToString())
    convrt.optimize(graph)
    ops = collections.Counter(n.op_type for n in graph.nodes)
    assert ops["FusedConvSilu"] + ops["Silu"] == 49, ops
