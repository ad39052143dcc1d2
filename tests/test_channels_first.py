"""passes/channels_first.py (ConvNeXt's channels-last MLP blocks moved to NCHW), the
``convrt.ChannelLayerNorm`` op and kernel it writes, and fuse_conv_bias's per-channel Mul fold.

Oracles: onnxruntime on the original model (and on the optimized model exported back to ONNX,
where ChannelLayerNorm is a model-local function), and onnx's ReferenceEvaluator for float64.
"""

from __future__ import annotations

import collections
import pathlib
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convrt
from convrt.onnx_io.writer import from_graph

ort = pytest.importorskip("onnxruntime")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "sample_models"))
import builders  # noqa: E402
from oracle import run_ort  # noqa: E402

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def _run(model, feeds, level="all"):
    opts = convrt.SessionOptions()
    opts.graph_optimization_level = level
    return convrt.InferenceSession(model.SerializeToString(), opts).run(None, feeds)


def _ops(model):
    g = convrt.load(model.SerializeToString())
    results = convrt.optimize(g)
    return g, collections.Counter((n.domain + "." if n.domain else "") + n.op_type
                                  for n in g.nodes), results


def _block(c=8, k=32, hw=(5, 7), elem=F32, ln_axis=-1, perm_back=(0, 3, 1, 2),
           extra_output=None, bias_shape=None, w_const=True, scale_shape=None, seed=0):
    """ConvNeXt's block: Conv dw -> Transpose -> LN -> MatMul -> Add -> Gelu (erf chain) ->
    MatMul -> Add -> Transpose -> Mul(layer scale) -> Add(residual)."""
    rng = np.random.default_rng(seed)
    dt = np.float32 if elem == F32 else np.float64
    h, w = hw
    inits = {
        "dw_w": rng.standard_normal((c, 1, 3, 3)) * 0.3, "dw_b": rng.standard_normal(c) * 0.1,
        "ln_s": 1 + rng.standard_normal(c) * 0.1, "ln_b": rng.standard_normal(c) * 0.1,
        "w1": rng.standard_normal((c, k)) / np.sqrt(c),
        "b1": rng.standard_normal(bias_shape or (k,)) * 0.1,
        "w2": rng.standard_normal((k, c)) / np.sqrt(k), "b2": rng.standard_normal(c) * 0.1,
        "gamma": rng.standard_normal(scale_shape or (c, 1, 1)) * 0.5,
        "sqrt2": np.array(np.sqrt(2.0)), "one": np.array(1.0), "half": np.array(0.5)}
    inputs = [helper.make_tensor_value_info("x", elem, [2, c, h, w])]
    if not w_const:
        inputs.append(helper.make_tensor_value_info("w1", elem, [c, k]))
    nodes = [
        helper.make_node("Conv", ["x", "dw_w", "dw_b"], ["d"], group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["d"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "ln_s", "ln_b"], ["n"], axis=ln_axis,
                         epsilon=1e-6),
        helper.make_node("MatMul", ["n", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Div", ["a1", "sqrt2"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["a1", "p"], ["q"]),
        helper.make_node("Mul", ["q", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["m2"]),
        helper.make_node("Add", ["m2", "b2"], ["a2"]),
        helper.make_node("Transpose", ["a2"], ["back"], perm=list(perm_back)),
        helper.make_node("Mul", ["gamma", "back"], ["scaled"]),
        helper.make_node("Add", ["scaled", "x"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", elem, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, elem, None))
    graph = helper.make_graph(nodes, "block", inputs, outputs, [
        numpy_helper.from_array(np.asarray(a, dt), n) for n, a in inits.items()
        if w_const or n != "w1"])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((2, c, h, w)).astype(dt)
    feeds = {"x": x}
    if not w_const:
        feeds["w1"] = inits["w1"].astype(dt)
    return m, feeds


def test_convnext_block_runs_in_nchw_and_matches_onnxruntime():
    m, feeds = _block()
    g, ops, results = _ops(m)
    # the dw conv stays; both MatMuls are 1x1 convs, the second with the layer scale folded and
    # the residual fused; no Transpose, MatMul or Add left
    assert ops == {"Conv": 2, "convrt.ChannelLayerNorm": 1, "convrt.Gelu": 1,
                   "convrt.FusedConvAdd": 1}, ops
    stats = {r.name: r.stats for r in results}
    assert stats["channels_first"] == {"channels-last stretches moved to NCHW": 1}
    assert stats["fuse_conv_bias"]["Mul folded into Conv"] == 1
    ref = run_ort(m, feeds)[0]
    got = _run(m, feeds)[0]
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-5 * scale
    # unoptimized convrt runs the channels-last form: the pass changes values by rounding only
    plain = _run(m, feeds, "basic")[0]
    assert np.abs(got - plain).max() <= 1e-5 * scale
    out = from_graph(g)  # ChannelLayerNorm exported as a function onnxruntime runs
    onnx.checker.check_model(out, full_check=True)
    assert np.abs(run_ort(out, feeds)[0] - ref).max() <= 1e-5 * scale
    assert np.abs(_run(out, feeds)[0] - ref).max() <= 1e-5 * scale


def test_float64_block_against_the_reference_evaluator():
    m, feeds = _block(elem=F64, c=6, k=12, hw=(4, 3))
    _, ops, _ = _ops(m)
    assert ops["convrt.ChannelLayerNorm"] == 1 and "Transpose" not in ops, ops
    got = _run(m, feeds)[0]
    # the reference evaluator takes LayerNormalization's stash_type (1: float32) literally for
    # the statistics; convrt keeps float64 input in float64 (ops/normalization.py), with or
    # without the pass
    ref = ReferenceEvaluator(m).run(None, feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, _run(m, feeds, "basic")[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kw, why", [
    ({"ln_axis": -2}, "LayerNorm over H and W, not the channels"),
    ({"perm_back": (0, 3, 2, 1)}, "the closing Transpose is not the inverse"),
    ({"extra_output": "m1"}, "an intermediate is a graph output"),
    ({"bias_shape": (5, 1, 32)}, "a bias that broadcasts along W too"),
    ({"w_const": False}, "MatMul by a fed weight"),
])
def test_stretches_that_must_stay(kw, why):
    m, feeds = _block(**kw, hw=(5, 5) if {"bias_shape", "perm_back"} & set(kw) else (5, 7))
    _, ops, _ = _ops(m)
    assert ops["Transpose"] == 2 and "convrt.ChannelLayerNorm" not in ops, (why, ops)
    ref = run_ort(m, feeds)[0]
    np.testing.assert_allclose(_run(m, feeds)[0], ref, rtol=1e-4, atol=1e-5)


def test_intermediate_read_elsewhere_keeps_the_stretch():
    m, feeds = _block()
    m.graph.node.append(helper.make_node("Relu", ["a1"], ["r"]))
    m.graph.output.append(helper.make_tensor_value_info("r", F32, None))
    _, ops, _ = _ops(m)
    assert ops["Transpose"] == 2 and ops["MatMul"] == 2, ops
    ref = run_ort(m, feeds)
    for got, want in zip(_run(m, feeds), ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_layer_scale_shared_by_two_convs_is_not_folded_into_either():
    """fuse_conv_bias's Mul fold rewrites weights in place: a shared weight must stay."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    s = rng.standard_normal((4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"]), helper.make_node("Conv", ["x", "w"],
                                                                             ["c2"]),
             helper.make_node("Mul", ["c1", "s"], ["y1"]), helper.make_node("Add", ["c2", "s"],
                                                                            ["y2"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info(n, F32, None) for n in ("y1", "y2")],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(s, "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    _, ops, _ = _ops(m)
    assert ops["Mul"] == 1, ops
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    for got, want in zip(_run(m, {"x": x}), run_ort(m, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 96, 7, 9), (2, 5, 13, 11), (1, 768, 1, 70), (3, 1, 2, 2)])
def test_channel_layer_norm_kernel_equals_the_row_kernel(shape):
    """Same sums in the same (channel) order as the row kernel on the transposed data: the
    same bits."""
    from convrt.kernels.layer_norm import PIXELS, channel_layer_norm, layer_norm

    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    n, c, h, w = shape
    s = rng.standard_normal(c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    rows = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(-1, c)
    want = np.empty_like(rows)
    layer_norm(rows, s, b, 1e-5, want)
    got = np.empty_like(x)
    px = h * w
    stats = np.empty((n * -(-px // PIXELS), 2, PIXELS))
    channel_layer_norm(x.reshape(n, c, px), s, b, 1e-5, got.reshape(n, c, px), stats)
    np.testing.assert_array_equal(got, want.reshape(n, h, w, c).transpose(0, 3, 1, 2))


def test_channel_layer_norm_bad_scale_is_one_line_error():
    rng = np.random.default_rng(6)
    node = helper.make_node("ChannelLayerNorm", ["x", "s", "b"], ["y"], domain="convrt")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, [1, 4, 2, 2])],
                          [helper.make_tensor_value_info("y", F32, None)],
                          [numpy_helper.from_array(rng.standard_normal(3).astype(np.float32),
                                                   n) for n in ("s", "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("convrt", 1)], ir_version=8)
    with pytest.raises(convrt.ConvrtError) as e:
        convrt.InferenceSession(m.SerializeToString())
    assert "\n" not in str(e.value) and "must be [4]" in str(e.value)


def test_convnext_tiny_has_no_transpose_left_and_matches_onnxruntime():
    m = builders.build("convnext_tiny", image=32)
    g, ops, _ = _ops(m)
    assert ops["Transpose"] == 0 and ops["MatMul"] == 0, ops
    assert ops["convrt.ChannelLayerNorm"] == 23 and ops["convrt.FusedConvAdd"] == 18, ops
    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = run_ort(m, {"input": x})[0]
    scale = np.abs(ref).max()
    assert np.abs(_run(m, {"input": x})[0] - ref).max() <= 1e-4 * scale
    out = from_graph(g)
    onnx.checker.check_model(out)
    assert np.abs(run_ort(out, {"input": x})[0] - ref).max() <= 1e-4 * scale
