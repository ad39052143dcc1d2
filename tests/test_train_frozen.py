"""The frozen part of a training graph runs as an inference plan (convrt/train/frozen.py).

Oracle: the same Trainer with ``compile_frozen=False``, which runs every node through the
training forward (itself checked against PyTorch in test_train_finetune.py); the compiled prefix
folds BN into the convolutions, so agreement is to float32 rounding, not bitwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from convrt.train import SGD, Trainer

HEAD = Path(__file__).resolve().parent.parent / "sample_models" / "finetune_head.onnx"


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, 16, 16)).astype(np.float32),
            rng.integers(0, 5, n).astype(np.int64))


def _pair(**kw):
    return [Trainer(str(HEAD), optimizer=SGD(lr=0.05, momentum=0.9), compile_frozen=c, **kw)
            for c in (True, False)]


def test_head_only_backbone_is_one_plan_and_steps_agree():
    fast, ref = _pair(trainable=["fc.*"])
    ops = sorted(n.op_type for n in fast.graph.nodes if id(n) in fast._prefix.node_ids)
    assert ops == sorted(["Conv", "BatchNormalization", "Relu", "MaxPool", "Conv",
                          "BatchNormalization", "Relu", "GlobalAveragePool", "Flatten"])
    assert fast._prefix.boundary == [fast.graph.nodes[-1].inputs[0].name]  # Gemm's input
    compiled = fast._prefix.current()
    assert "BatchNormalization" not in {n.op_type for n in compiled.nodes}  # folded
    before = {n: a.copy() for n, a in fast.state.items()}
    x, y = _data()
    for i in range(3):
        xb, yb = x[i:i + 4], y[i:i + 4]
        lf, lr = fast.step(xb, yb), ref.step(xb, yb)
        assert lf == pytest.approx(lr, rel=1e-5)
    for n in fast.params:
        np.testing.assert_allclose(fast.params[n], ref.params[n], rtol=1e-4, atol=1e-6)
    for n, a in before.items():  # eval-mode BN: statistics untouched
        np.testing.assert_array_equal(fast.state[n], a)
    np.testing.assert_allclose(fast.predict(x), ref.predict(x), rtol=1e-4, atol=1e-5)


def test_gradients_agree_and_train_mode_bn_is_not_compiled():
    x, y = _data(6, seed=1)
    fast, ref = _pair(trainable=["fc.*"])
    gf, gr = fast.gradients(x, y), ref.gradients(x, y)
    for n in gr:
        np.testing.assert_allclose(gf[n], gr[n], rtol=1e-4, atol=1e-6)
    # BN in train mode changes its statistics every step: it and all after it stay uncompiled
    fast, ref = _pair(trainable=["fc.*"], batchnorm="train")
    ops = {n.op_type for n in fast.graph.nodes if id(n) in fast._prefix.node_ids}
    assert ops == {"Conv"}  # only the first convolution precedes the first BN
    gf, gr = fast.gradients(x, y), ref.gradients(x, y)
    for n in gr:
        np.testing.assert_allclose(gf[n], gr[n], rtol=1e-4, atol=1e-6)


def test_changed_statistics_recompile_the_prefix(tmp_path):
    """A checkpoint (or the user) writing new running statistics into the trainer's state:
    the next forward compiles the prefix again with them."""
    fast, ref = _pair(trainable=["fc.*"])
    x, _ = _data()
    fast.predict(x)
    first = fast._prefix.current()
    for tr in (fast, ref):
        tr.state["features.1.running_mean"][...] += 0.5
        tr.state["features.5.running_var"][...] *= 2.0
    assert fast._prefix.current() is not first
    np.testing.assert_allclose(fast.predict(x), ref.predict(x), rtol=1e-4, atol=1e-5)


def test_everything_trainable_compiles_nothing_worth_it():
    """With every tensor trained, no node is frozen (Constants aside): no prefix is built."""
    tr = Trainer(str(HEAD), optimizer=SGD(lr=0.01))
    assert tr._prefix is None


def test_dropout_in_the_frozen_part_is_left_to_the_training_forward():
    """Dropout behaves differently in training: it is never compiled away into the prefix."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Dropout", ["r", "ratio"], ["d"]),
             helper.make_node("Gemm", ["d", "w"], ["y"])]
    g = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.5, np.float32),
                                                                  "ratio")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    tr = Trainer(model.SerializeToString(), loss="mse", trainable=["w"])
    ops = {n.op_type for n in tr.graph.nodes if id(n) in tr._prefix.node_ids}
    assert ops == {"Relu"}
