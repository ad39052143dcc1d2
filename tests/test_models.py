"""Whole models against onnxruntime: the sample model and a generated VGG-16, batch 1 and a
dynamic batch >= 4, default optimizations and none."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from builders import cached_model

import convrt

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def ort_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def assert_matches(got, want, rtol=1e-4, atol=1e-5):
    """rtol 1e-4 / atol 1e-5 on outputs scaled to O(1) (atol relative to the output scale)."""
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("level", ["all", "disable"])
@pytest.mark.parametrize("batch", [1, 4])
def test_small_vgg_matches_onnxruntime(batch, level):
    path = SAMPLES / "small_vgg.onnx"
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    sess = convrt.InferenceSession(path, convrt.SessionOptions(graph_optimization_level=level))
    (got,) = sess.run(None, {"input": x})
    (want,) = ort_session(path).run(None, {"input": x})
    assert got.shape == (batch, 10)
    assert_matches(got, want)


def test_small_vgg_matches_torch():
    """The exporter's own output (computed by PyTorch when the model was exported)."""
    data = np.load(SAMPLES / "small_vgg.npz")
    (got,) = convrt.InferenceSession(SAMPLES / "small_vgg.onnx").run(None, {"input": data["x"]})
    assert_matches(got, data["y"])


def test_small_vgg_batch_sizes_share_one_session():
    sess = convrt.InferenceSession(SAMPLES / "small_vgg.onnx")
    x = np.random.default_rng(7).standard_normal((6, 3, 32, 32)).astype(np.float32)
    (full,) = sess.run(None, {"input": x})
    for i in range(0, 6, 3):
        (part,) = sess.run(None, {"input": x[i:i + 3]})
        np.testing.assert_allclose(part, full[i:i + 3], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def vgg16():
    path = cached_model("vgg16")
    return path, convrt.InferenceSession(path), ort_session(path)


@pytest.mark.parametrize("batch", [1, 4])
def test_vgg16_matches_onnxruntime(vgg16, batch):
    path, sess, ref = vgg16
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    (got,) = sess.run(None, {"input": x})
    (want,) = ref.run(None, {"input": x})
    assert got.shape == (batch, 1000)
    assert np.abs(want).max() > 1e-2  # a real signal, not all zeros
    assert_matches(got, want)


def test_vgg16_inputs_outputs_describe_dynamic_batch(vgg16):
    _, sess, _ = vgg16
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert inp.name == "input" and inp.shape == ["N", 3, 224, 224] and inp.type == "tensor(float)"
    assert out.name == "logits" and out.shape == ["N", 1000]
