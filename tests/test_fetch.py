"""Fetching intermediate values by their names in the original model (issue #17, convrt/fetch.py).

The oracle is onnxruntime running the same model with the fetched values added as graph
outputs.  The values chosen are the ones the optimizer removes: a BatchNormalization output
(folded into its Conv), a Relu output (fused into the Conv) and a MaxPool output (fused into
Conv+Relu+MaxPool), fetched together with the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import convrt
from convrt.errors import InputError

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SMALL_VGG = str(ROOT / "sample_models" / "small_vgg.onnx")


def ort_values(model: onnx.ModelProto, names: list[str], feeds: dict) -> list[np.ndarray]:
    """onnxruntime's values of ``names``, added as graph outputs (all optimizations off, so the
    values are the original graph's)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                                     None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


def pick_fused_names(sess: convrt.InferenceSession) -> list[str]:
    """A BN and a Relu output that no node of the optimized graph computes any more, a MaxPool
    output (the name of a fused Conv+Relu+MaxPool node's output, not a graph output), + logits."""
    vals = sess.get_values()
    produced = {v.name for n in sess.graph.nodes for v in n.outputs}
    picks = [next(v.name for v in vals if v.op == op and v.name not in produced)
             for op in ("BatchNormalization", "Relu")]
    picks.append(next(v.name for v in vals if v.op == "MaxPool"))
    return picks + [sess.get_outputs()[0].name]


def compare(model_path, x: np.ndarray) -> dict[str, float]:
    """Max |convrt - ort| / max |ort| per fetched name (the issue's rtol 1e-4 x max|y|)."""
    model = onnx.load(model_path)
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node)
    sess = convrt.InferenceSession(model_path)
    names = pick_fused_names(sess)
    got = sess.run(names, {"input": x})
    want = ort_values(model, names, {"input": x})
    errs = {}
    for n, g, w in zip(names, got, want):
        assert g.shape == w.shape, n
        errs[n] = float(np.max(np.abs(g - w)) / max(np.max(np.abs(w)), 1e-30))
    return errs


def test_fused_values_match_onnxruntime_small_vgg():
    x = np.load(ROOT / "sample_models" / "small_vgg.npz")["x"]
    errs = compare(SMALL_VGG, x)
    assert len(errs) == 4
    assert max(errs.values()) < 1e-4, errs


def test_fused_values_match_onnxruntime_vgg11_bn(tmp_path):
    import builders

    path = tmp_path / "vgg11_bn.onnx"
    onnx.save(builders.build("vgg11_bn", image=32, hidden=64, num_classes=10), path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    errs = compare(str(path), x)
    assert max(errs.values()) < 1e-4, errs


def test_fetch_keeps_plain_outputs_and_order():
    sess = convrt.InferenceSession(SMALL_VGG)
    x = np.load(ROOT / "sample_models" / "small_vgg.npz")["x"]
    (plain,) = sess.run(None, {"input": x})
    relu = next(v.name for v in sess.get_values() if v.op == "Relu")
    a, logits, b = sess.run([relu, "logits", relu], {"input": x})
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-5)
    assert a.shape == (1, 32, 32, 32) and np.array_equal(a, b) and a.min() >= 0
    (inp,) = sess.run(["input"], {"input": x})  # a graph input is a value too
    np.testing.assert_array_equal(inp, x)


def test_fetch_sets_are_compiled_once_and_bounded():
    from convrt.fetch import MAX_FETCH_SETS

    sess = convrt.InferenceSession(SMALL_VGG)
    x = np.zeros((1, 3, 32, 32), np.float32)
    names = [v.name for v in sess.get_values() if v.op in ("Relu", "MaxPool")]
    cache = sess._fetch
    sess.run([names[0]], {"input": x})
    first = cache.plan((names[0],), sess._check_feeds({"input": x})[1])
    sess.run([names[0]], {"input": x})
    assert cache.plan((names[0],), sess._check_feeds({"input": x})[1]) is first
    for n in names[1:MAX_FETCH_SETS + 2]:
        sess.run([n], {"input": x})
    assert len(cache._sets) == MAX_FETCH_SETS


def test_get_values_lists_every_node_output():
    sess = convrt.InferenceSession(SMALL_VGG)
    vals = sess.get_values()
    model = onnx.load(SMALL_VGG)
    assert [v.name for v in vals[1:]] == [o for n in model.graph.node for o in n.output]
    first = vals[1]
    assert (first.op, first.shape, first.dtype) == ("Conv", ["N", 32, 32, 32], "float32")


def test_unknown_value_lists_close_matches():
    sess = convrt.InferenceSession(SMALL_VGG)
    x = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(InputError) as e:
        sess.run(["/features/features.2/Relu_output", "logits"], {"input": x})
    msg = str(e.value)
    assert "\n" not in msg and "close matches: /features/features.2/Relu_output_0" in msg
