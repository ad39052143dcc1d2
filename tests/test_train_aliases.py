"""Training models whose initializers the exporter aliased (issue #14 item 4, issue #23).

PyTorch's legacy exporter merges equal initializers of a fresh network (BatchNorm ones/zeros,
zero biases) behind ``Identity`` nodes or one shared name.  Two oracles:

* a hand-untied copy of an exporter-shaped graph (separate initializers from the start) must
  train to exactly the same losses and tensors as the aliased graph;
* ``sample_models/untrained_bn.{onnx,npz}``: a fresh PyTorch export and three SGD steps PyTorch
  took on it (``sample_models/export_untrained_bn.py``); no torch import here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import convrt
from convrt.ir.verify import verify
from convrt.train import SGD, Trainer
from convrt.train.untie import untie_initializers

ROOT = Path(__file__).resolve().parents[1]
UNTRAINED = ROOT / "sample_models" / "untrained_bn.onnx"
RECORDED = ROOT / "sample_models" / "untrained_bn.npz"

C, K = 4, 3  # channels, classes
RNG = np.random.default_rng(7)
W1 = (RNG.standard_normal((C, 2, 3, 3)) * 0.3).astype(np.float32)
W2 = (RNG.standard_normal((C, C, 3, 3)) * 0.3).astype(np.float32)
WFC = (RNG.standard_normal((K, C)) * 0.5).astype(np.float32)
BFC = (RNG.standard_normal(K) * 0.1).astype(np.float32)
ONES, ZEROS = np.ones(C, np.float32), np.zeros(C, np.float32)
X = RNG.standard_normal((6, 2, 6, 6)).astype(np.float32)
Y = np.array([0, 1, 2, 0, 1, 2], np.int64)


def _model(aliased: bool) -> onnx.ModelProto:
    """Conv(zero bias) -> BN -> Relu -> Conv(zero bias) -> Relu -> GAP -> Flatten -> Gemm.

    Aliased as the exporter writes it: BN scale/running_var are Identity outputs of one ones
    tensor, BN bias/running_mean Identity outputs of the zeros that both convs read by name.
    Untied: the same values, each in its own initializer from the start.
    """
    bn_in = ["c1", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    conv2_bias = "zeros" if aliased else "conv2.bias"
    nodes = [
        helper.make_node("Conv", ["x", "w1", "zeros"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("BatchNormalization", bn_in, ["b1"], name="bn", momentum=0.9),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", conv2_bias], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wfc", "bfc"], ["logits"], name="fc", transB=1),
    ]
    inits = {"w1": W1, "w2": W2, "wfc": WFC, "bfc": BFC, "zeros": ZEROS}
    if aliased:
        inits["ones"] = ONES
        nodes[:0] = [helper.make_node("Identity", [src], [dst], name=f"Identity_{i}")
                     for i, (src, dst) in enumerate([
                         ("ones", "bn.running_var"), ("zeros", "bn.running_mean"),
                         ("zeros", "bn.bias"), ("ones", "bn.weight")])]
    else:
        inits.update({"bn.weight": ONES, "bn.bias": ZEROS, "bn.running_mean": ZEROS,
                      "bn.running_var": ONES, "conv2.bias": ZEROS})
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X.shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [X.shape[0], K])],
        [numpy_helper.from_array(a.copy(), n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _roles(model: onnx.ModelProto) -> dict[tuple[str, int], np.ndarray]:
    """(node name, input index) -> the initializer that input reads: compares two exports by
    what each node reads, whatever the tensors are called."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {(n.name, i): inits[name] for n in model.graph.node
            for i, name in enumerate(n.input) if name in inits}


def _train(model, steps=4):
    tr = Trainer(model, optimizer=SGD(lr=0.1, momentum=0.9))
    losses = [tr.step(X, Y) for _ in range(steps)]
    return tr, losses, tr.to_model()


def test_aliased_graph_trains_exactly_like_the_hand_untied_one():
    tr, losses, out = _train(_model(aliased=True))
    _, ref_losses, ref = _train(_model(aliased=False))
    assert losses == ref_losses
    got, want = _roles(out), _roles(ref)
    assert got.keys() == want.keys() and len(got) == 10
    for role, arr in want.items():
        np.testing.assert_array_equal(got[role], arr, err_msg=str(role))
    # the tensors the exporter had tied went separate ways
    assert not np.array_equal(got["bn", 3], got["bn", 2])  # running_mean vs bias
    assert not np.array_equal(got["bn", 4], got["bn", 1])  # running_var vs weight
    assert not np.array_equal(got["conv1", 2], got["conv2", 2])  # the two zero conv biases
    # names: Identity outputs keep the exporter's names; the second reader of a shared name
    # gets <name>__<consumer>; the orphaned ones tensor is gone, and so are the Identity nodes
    assert tr.untied == {"bn.running_var": "ones", "bn.running_mean": "zeros",
                         "bn.bias": "zeros", "bn.weight": "ones", "zeros__conv2": "zeros"}
    assert [n.input[2] for n in out.graph.node if n.op_type == "Conv"] == ["zeros",
                                                                           "zeros__conv2"]
    assert sorted(tr.state) == ["bn.running_mean", "bn.running_var"]
    assert "ones" not in {t.name for t in out.graph.initializer}
    assert "Identity" not in {n.op_type for n in out.graph.node}
    onnx.checker.check_model(out, full_check=True)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": X})[0], tr.predict(X), rtol=1e-5, atol=1e-6)


def test_keep_ties_keeps_a_shared_name_shared():
    """A tie of two trainable inputs survives ``keep_ties``; the BN aliases are split anyway.
    Oracle: the hand-untied model with its two conv biases re-tied by name (nothing to untie)."""
    tied = _model(aliased=False)
    for n in tied.graph.node:
        if n.name == "conv2":
            n.input[2] = "zeros"
    keep = [i for i, t in enumerate(tied.graph.initializer) if t.name != "conv2.bias"]
    inits = [tied.graph.initializer[i] for i in keep]
    del tied.graph.initializer[:]
    tied.graph.initializer.extend(inits)
    tr = Trainer(_model(aliased=True), optimizer=SGD(lr=0.1, momentum=0.9), keep_ties=True)
    ref = Trainer(tied, optimizer=SGD(lr=0.1, momentum=0.9), keep_ties=True)
    assert ref.untied == {} and "zeros__conv2" not in tr.untied
    assert sorted(tr.params) == sorted(ref.params) and "zeros" in tr.params
    assert [tr.step(X, Y) for _ in range(3)] == [ref.step(X, Y) for _ in range(3)]
    got, want = _roles(tr.to_model()), _roles(ref.to_model())
    for role, arr in want.items():
        np.testing.assert_array_equal(got[role], arr, err_msg=str(role))
    assert np.array_equal(got["conv1", 2], got["conv2", 2])  # still one tensor


def test_fed_running_statistics_are_not_state():
    """BN statistics fed as graph inputs: the trainer reads them and updates nothing."""
    inits = [numpy_helper.from_array(a, n) for n, a in [("s", ONES), ("b", ZEROS)]]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
         for n, s in [("x", [3, C, 2, 2]), ("m", [C]), ("v", [C])]],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, C, 2, 2])], inits)
    tr = Trainer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]),
                 loss="mse", optimizer=SGD(lr=0.1))
    x = RNG.standard_normal((3, C, 2, 2)).astype(np.float32)
    loss = tr.step({"x": x, "m": ZEROS, "v": ONES}, np.zeros_like(x))
    assert np.isfinite(loss) and tr.state == {} and sorted(tr.params) == ["b", "s"]


def test_untie_rules_on_the_ir():
    """Identity chains resolve, a non-trainable reader (Clip's bound) gets a frozen copy, and an
    Identity that is a graph output or reads a non-float tensor stays."""
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in [
        ("z", np.float32(0.5)), ("hi", np.float32(6)), ("k", np.float32(2)),
        ("shape", np.array([2, 3], np.int64))]]
    nodes = [helper.make_node("Identity", ["z"], ["z1"], name="i1"),
             helper.make_node("Identity", ["z1"], ["z2"], name="i2"),
             helper.make_node("Identity", ["k"], ["kout"], name="i3"),
             helper.make_node("Identity", ["shape"], ["shape1"], name="i4"),
             helper.make_node("Add", ["x", "z"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "z", "hi"], ["c"], name="clip"),
             helper.make_node("Mul", ["c", "z2"], ["m"], name="mul"),
             helper.make_node("Reshape", ["m", "shape1"], ["y"], name="reshape")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("kout", TensorProto.FLOAT, [])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    g = convrt.load(model)
    created = untie_initializers(g)
    verify(g, after="untie")
    assert created == {"z2": "z", "z__clip": "z"}
    assert [n.name for n in g.nodes] == ["i3", "i4", "add", "clip", "mul", "reshape"]
    add, clip, mul = g.nodes[2:5]
    assert [n.inputs[1].name for n in (add, clip, mul)] == ["z", "z__clip", "z2"]
    assert "z1" not in g.initializers  # an intermediate Identity output: no reader left

    tr = Trainer(model, loss="mse", optimizer=SGD(lr=0.5))
    assert sorted(tr.params) == ["k", "z", "z2"]  # the Clip bound is not trained
    tr.step(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32))
    assert tr.params["z"] != 0.5 and tr.params["z2"] != 0.5
    assert tr.graph.initializers["z__clip"].const == 0.5
    assert model.graph.node[0].op_type == "Identity"  # the caller's proto is left alone


def test_fresh_pytorch_export_trains_like_pytorch(tmp_path):
    with np.load(RECORDED) as z:
        recorded = {k: z[k] for k in z.files}
    x, y, torch_losses = recorded.pop("inputs"), recorded.pop("labels"), recorded.pop("losses")
    src = onnx.load(UNTRAINED)
    assert sum(n.op_type == "Identity" for n in src.graph.node) == 6  # the aliased export
    tr = Trainer(str(UNTRAINED), loss="cross_entropy", optimizer=SGD(lr=0.1, momentum=0.9))
    losses = [tr.step({"input": x}, y) for _ in range(len(torch_losses))]
    np.testing.assert_allclose(losses, torch_losses, rtol=1e-4)
    out = tmp_path / "trained.onnx"
    tr.export(out)
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    exported = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    # untying restored PyTorch's names: every parameter and BN statistic is its own tensor
    assert sorted(exported) == sorted(recorded)
    for name, want in recorded.items():
        np.testing.assert_allclose(exported[name], want, rtol=0, atol=1e-5, err_msg=name)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], tr.predict(x), rtol=1e-4,
                               atol=1e-5)
