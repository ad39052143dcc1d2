"""Sanity checks for sample_models/ using onnx + onnxruntime only.

These tests deliberately do not import convrt (or torch): they check that the
committed sample models and the deterministic builders are valid ONNX that
onnxruntime runs, so convrt's own tests can trust them as references.
"""

from __future__ import annotations

import collections
import pathlib
import sys

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")

SAMPLE_DIR = pathlib.Path(__file__).resolve().parent.parent / "sample_models"
sys.path.insert(0, str(SAMPLE_DIR))
import builders  # noqa: E402


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _session(model) -> "ort.InferenceSession":
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


# ---------------------------------------------------------------------------
# committed torch exports
# ---------------------------------------------------------------------------

def test_small_vgg_onnx_structure():
    path = SAMPLE_DIR / "small_vgg.onnx"
    assert path.stat().st_size < 5 * 2**20
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    ops = _ops(m)
    assert ops["BatchNormalization"] == 5
    assert ops["Dropout"] == 1
    assert ops["Conv"] == 5 and ops["MaxPool"] == 3 and ops["Gemm"] == 2
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert _dims(m.graph.input[0]) == ["N", 3, 32, 32]
    assert _dims(m.graph.output[0]) == ["N", 10]


def test_small_vgg_matches_torch_oracle():
    data = np.load(SAMPLE_DIR / "small_vgg.npz")
    x, y = data["x"], data["y"]
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert y.shape == (1, 10) and y.dtype == np.float32
    assert np.std(y) > 0.1  # the oracle is not trivially small / constant
    sess = _session(SAMPLE_DIR / "small_vgg.onnx")
    got = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, y, rtol=0, atol=1e-5)

    # Dynamic batch: the oracle sample inside a batch of 4 gives the same row.
    rng = np.random.default_rng(0)
    xb = np.concatenate([x, rng.standard_normal((3, 3, 32, 32), dtype=np.float32)])
    got4 = sess.run(None, {"input": xb})[0]
    assert got4.shape == (4, 10)
    np.testing.assert_allclose(got4[:1], y, rtol=0, atol=1e-5)


def test_digits_vgg_onnx():
    m = onnx.load(str(SAMPLE_DIR / "digits_vgg.onnx"))
    onnx.checker.check_model(m, full_check=True)
    ops = _ops(m)
    assert ops["BatchNormalization"] == 3 and ops["Dropout"] == 1 and ops["Conv"] == 3
    assert ops["Identity"] == 0  # parameters are initializers, not Identity outputs
    assert _dims(m.graph.input[0]) == ["N", 1, 8, 8]
    assert _dims(m.graph.output[0]) == ["N", 10]
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    y = _session(m).run(None, {"input": x})[0]
    assert y.shape == (5, 10) and np.isfinite(y).all()


# ---------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------

BUILDER_CASES = [
    ("vgg11", dict(image=32, hidden=64), 32, {"Conv": 8, "MaxPool": 5, "Gemm": 3, "Dropout": 2}),
    ("vgg11_bn", dict(image=32, hidden=64, opset=13), 32, {"BatchNormalization": 8}),
    ("small_vgg_32", {}, 32, {"Conv": 6, "MaxPool": 3, "Gemm": 1}),
    ("small_vgg_32", dict(batch_norm=True), 32, {"BatchNormalization": 6}),
    ("resnet18", dict(image=64, num_classes=100), 64,
     {"Conv": 20, "BatchNormalization": 20, "Add": 8, "GlobalAveragePool": 1}),
    ("mobilenet_v2", dict(image=64, num_classes=100), 64,
     {"Conv": 52, "BatchNormalization": 52, "Clip": 35, "Add": 10}),
    ("squeezenet1_1", dict(image=64), 64, {"Conv": 26, "Concat": 8, "MaxPool": 3}),
    ("squeezenet1_1", dict(image=64, opset=13), 64, {"Concat": 8}),
]


@pytest.mark.parametrize("name,kw,image,expect_ops", BUILDER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BUILDER_CASES)])
def test_builder_model_valid_and_runs(name, kw, image, expect_ops):
    m = builders.build(name, **kw)
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == kw.get("opset", 17)
    ops = _ops(m)
    for op, n in expect_ops.items():
        assert ops[op] == n, (op, ops)
    assert _dims(m.graph.input[0])[0] == "N"

    x = np.random.default_rng(1).standard_normal((2, 3, image, image), dtype=np.float32)
    y = _session(m).run(None, {"input": x})[0]
    classes = kw.get("num_classes", 10 if name == "small_vgg_32" else 1000)
    assert y.shape == (2, classes)
    assert np.isfinite(y).all()
    assert y.std(axis=1).min() > 1e-2, "logits are (nearly) constant across classes"
    assert np.abs(y[0] - y[1]).max() > 1e-2, "logits do not depend on the input"
    assert np.abs(y).max() < 1e3, "activations blew up"


def test_builder_special_ops():
    mb = builders.mobilenet_v2(image=32, num_classes=10)
    groups = [a.i for n in mb.graph.node if n.op_type == "Conv"
              for a in n.attribute if a.name == "group"]
    assert len(groups) == 17 and min(groups) > 1  # one depthwise conv per block
    clip = next(n for n in mb.graph.node if n.op_type == "Clip")
    assert len(clip.input) == 3  # min/max as inputs (opset >= 11)

    sq = builders.squeezenet1_1(image=32, num_classes=10)
    pools = [n for n in sq.graph.node if n.op_type == "MaxPool"]
    assert all(any(a.name == "ceil_mode" and a.i == 1 for a in n.attribute) for n in pools)


def test_builders_deterministic():
    a = builders.small_vgg_32(batch_norm=True).SerializeToString()
    b = builders.small_vgg_32(batch_norm=True).SerializeToString()
    c = builders.small_vgg_32(batch_norm=True, seed=1).SerializeToString()
    assert a == b and a != c


def test_fold_bn_is_equivalent():
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32), dtype=np.float32)
    plain = builders.resnet18(image=32, num_classes=10)
    folded = builders.resnet18(image=32, num_classes=10, fold_bn=True)
    assert _ops(folded)["BatchNormalization"] == 0
    y0 = _session(plain).run(None, {"input": x})[0]
    y1 = _session(folded).run(None, {"input": x})[0]
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4)


def test_cached_model_and_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVRT_MODEL_CACHE", str(tmp_path / "cache"))
    p = builders.cached_model("small_vgg_32", seed=3)
    assert p.parent == tmp_path / "cache" and p.exists()
    mtime = p.stat().st_mtime_ns
    assert builders.cached_model("small_vgg_32", seed=3) == p
    assert p.stat().st_mtime_ns == mtime  # not rebuilt
    assert builders.cached_model("small_vgg_32", seed=4) != p
    onnx.checker.check_model(str(p), full_check=True)

    out = tmp_path / "cli.onnx"
    assert builders.main(["vgg", "--depth", "11", "--bn", "--image", "32", "--hidden", "64",
                         "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    m = onnx.load(str(out))
    assert _ops(m)["BatchNormalization"] == 8
