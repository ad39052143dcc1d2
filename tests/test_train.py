"""convrt.train: losses, optimizers, a short digits run, export, checkpoints, bad input, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convrt
from convrt.cli import main as cli_main
from convrt.errors import InputError, TrainingError
from convrt.train import SGD, Adam, AdamW, Trainer, cross_entropy, mse

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_vgg.onnx"


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


# -- losses ----------------------------------------------------------------------------------
def _sce_reference(logits, labels):
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["x", "y"], ["loss"], reduction="mean")
    g = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, list(logits.shape)),
        helper.make_tensor_value_info("y", TensorProto.INT64, list(labels.shape))],
        [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return float(ReferenceEvaluator(m).run(None, {"x": logits, "y": labels})[0])


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2, 3)])
def test_cross_entropy_matches_onnx_reference(shape):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(shape) * 3).astype(np.float32)
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:]).astype(np.int64)
    loss, grad = cross_entropy(logits, labels)
    assert loss == pytest.approx(_sce_reference(logits, labels), rel=1e-6)
    # gradient: (softmax - onehot) / count, checked by central differences in float64
    x64 = logits.astype(np.float64)
    i = (1, 2) + (0,) * (len(shape) - 2)
    e = np.zeros_like(x64)
    e[i] = 1e-6
    fd = (cross_entropy(x64 + e, labels)[0] - cross_entropy(x64 - e, labels)[0]) / 2e-6
    assert grad[i] == pytest.approx(fd, rel=1e-4)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32)
    loss, grad = cross_entropy(logits, np.array([0, 2]))
    assert loss == pytest.approx(np.log(3) / 2, rel=1e-6)
    assert np.all(np.isfinite(grad))


def test_mse_matches_numpy():
    rng = np.random.default_rng(1)
    p, t = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 3))
    loss, grad = mse(p, t)
    assert loss == pytest.approx(np.mean((p.astype(np.float64) - t) ** 2), rel=1e-7)
    np.testing.assert_allclose(grad, 2 * (p - t) / p.size, rtol=1e-6)


# -- optimizers ------------------------------------------------------------------------------
P0 = np.array([0.5, -1.5, 2.0, 0.25])
GRADS = [np.array([0.1, -0.2, 0.3, 0.0]), np.array([-0.4, 0.5, 0.05, 1.0]),
         np.array([0.2, 0.2, -0.3, -0.1])]
# Parameters after these three steps, from torch.optim 2.13 in float64 (the same p.grad values);
# recomputed and checked by sample_models/record_finetune_literals.py.
TORCH_AFTER_3 = {
    "sgd_plain": [0.51, -1.55, 1.995, 0.16],
    "sgd_momentum_wd": [0.5260953895, -1.5524181784999997, 1.9281085679999999,
                        0.06869869974999995],
    "sgd_nesterov": [0.53601, -1.60472, 1.94028, -0.0020000000000000165],
    "sgd_dampening": [0.5105000000000001, -1.5314999999999999, 1.96325, 0.152],
    "adam": [0.49669677234642673, -1.4998515828128194, 1.9823462588954315, 0.23747096637505255],
    "adam_wd": [0.4936731514425841, -1.4927006744357822, 1.9752919580479924,
                0.22694567542162594],
    "adamw": [0.4952126668096792, -1.495371649159298, 1.9763800801678835, 0.23672915749318302],
}
OPTS = {
    "sgd_plain": lambda: SGD(lr=0.1),
    "sgd_momentum_wd": lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
    "sgd_dampening": lambda: SGD(lr=0.1, momentum=0.5, dampening=0.3),
    "adam": lambda: Adam(lr=0.01),
    "adam_wd": lambda: Adam(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
    "adamw": lambda: AdamW(lr=0.01, weight_decay=0.1),
}


def _reference(kind, steps):
    """Hand-derived updates (PyTorch's documented algorithms) in numpy."""
    p = P0.copy()
    buf = m = v = None
    for t, g in enumerate(steps, start=1):
        if kind.startswith("sgd"):
            mom, damp, wd = {"sgd_plain": (0, 0, 0), "sgd_momentum_wd": (0.9, 0, 0.01),
                             "sgd_nesterov": (0.9, 0, 0), "sgd_dampening": (0.5, 0.3, 0)}[kind]
            g = g + wd * p
            if mom:
                buf = g.copy() if buf is None else mom * buf + (1 - damp) * g
                g = g + mom * buf if kind == "sgd_nesterov" else buf
            p = p - 0.1 * g
        else:
            b1, b2, eps, wd = (0.8, 0.9, 1e-6, 0.1) if kind == "adam_wd" else (0.9, 0.999,
                                                                                 1e-8, 0.1)
            if kind == "adam":
                wd = 0.0
            if kind == "adamw":
                p = p * (1 - 0.01 * wd)
            else:
                g = g + wd * p
            m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
            v = (1 - b2) * g * g if v is None else b2 * v + (1 - b2) * g * g
            mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            p = p - 0.01 * mhat / (np.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("kind", sorted(OPTS))
def test_optimizer_matches_reference_and_torch(kind):
    opt = OPTS[kind]()
    params = {"w": P0.copy()}
    for g in GRADS:
        opt.step(params, {"w": g})
    np.testing.assert_allclose(params["w"], _reference(kind, GRADS), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(params["w"], TORCH_AFTER_3[kind], rtol=1e-12, atol=1e-14)


# -- training --------------------------------------------------------------------------------
def test_short_digits_run_learns_and_exports(digits, tmp_path):
    x, y = digits
    tr = Trainer(str(DIGITS), loss="cross_entropy",
                 optimizer=SGD(lr=0.05, momentum=0.9), seed=0)
    rng = np.random.default_rng(0)
    first = last = None
    for epoch in range(2):
        losses = []
        for i in range(0, 1280, 64):
            idx = rng.permutation(len(x))[:64]
            losses.append(tr.step(x[idx], y[idx]))
        first = np.mean(losses) if first is None else first
        last = np.mean(losses[-5:])
    assert last < 0.5 * first, (first, last)
    held = tr.evaluate(x[1500:], y[1500:])
    assert held["accuracy"] > 0.8
    # BN running statistics moved away from their fresh state
    assert not np.allclose(tr.state["features.1.running_var"], 1.0)

    out = tmp_path / "trained.onnx"
    tr.export(out)
    m = onnx.load(out)
    onnx.checker.check_model(m)
    ours = tr.predict(x[:100])
    ref = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"input": x[:100]})[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    assert np.array_equal(ours.argmax(1), ref.argmax(1))
    sess = convrt.InferenceSession(str(out))
    np.testing.assert_allclose(sess.run(None, {"input": x[:100]})[0], ref, rtol=1e-4, atol=1e-4)


def test_batchnorm_running_stats_follow_pytorch(digits):
    x, y = digits
    # batchnorm="train": with only the conv weight trainable, "auto" would freeze this BN layer
    tr = Trainer(str(DIGITS), optimizer=SGD(lr=0.0), trainable=["features.0.weight"],
                 batchnorm="train")
    w, b = tr.params["features.0.weight"], tr.graph.initializers["features.0.bias"].const
    tr.step(x[:32], y[:32])
    conv = convrt.InferenceSession(
        helper.make_model(helper.make_graph(
            [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "c",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 1, 8, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]),
            opset_imports=[helper.make_opsetid("", 13)])).run(None, {"x": x[:32]})[0]
    z = conv.astype(np.float64)
    mean, var_unbiased = z.mean(axis=(0, 2, 3)), z.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(tr.state["features.1.running_mean"], 0.1 * mean, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(tr.state["features.1.running_var"], 0.9 + 0.1 * var_unbiased,
                               rtol=1e-4)


def test_trainable_subset_and_gradients_do_not_update(digits):
    x, y = digits
    tr = Trainer(str(DIGITS), optimizer=SGD(lr=0.1), trainable=["classifier.3.weight"])
    before = {n: a.copy() for n, a in tr.state.items()}
    g = tr.gradients(x[:16], y[:16])
    assert list(g) == ["classifier.3.weight"] and g["classifier.3.weight"].shape == (10, 64)
    assert all(np.array_equal(before[n], tr.state[n]) for n in before)
    w0 = tr.params["classifier.3.weight"].copy()
    tr.step(x[:16], y[:16])
    assert not np.array_equal(w0, tr.params["classifier.3.weight"])


def test_checkpoint_round_trip(digits, tmp_path):
    x, y = digits
    a = Trainer(str(DIGITS), optimizer=Adam(lr=1e-3), seed=3)
    for i in range(3):
        a.step(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32])
    ck = tmp_path / "ck.npz"
    a.save_checkpoint(ck)
    b = Trainer(str(DIGITS), optimizer=Adam(lr=1e-3), seed=99)
    b.load_checkpoint(ck)
    assert b.step_count == 3
    la, lb = a.step(x[200:264], y[200:264]), b.step(x[200:264], y[200:264])
    assert la == lb  # same weights, BN state, Adam moments and dropout RNG
    for n in a.params:
        np.testing.assert_array_equal(a.params[n], b.params[n])
    c = Trainer(str(DIGITS), optimizer=SGD(lr=0.1), trainable=["classifier.3.weight"])
    with pytest.raises(TrainingError, match="do not match"):
        c.load_checkpoint(ck)


# -- bad input -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trainer():
    return Trainer(str(DIGITS), optimizer=SGD(lr=0.01))


def test_label_out_of_range(trainer, digits):
    x, _ = digits
    with pytest.raises(TrainingError, match="label 10 out of range for 10 classes"):
        trainer.step(x[:4], np.array([0, 1, 10, 2]))


def test_feed_label_batch_mismatch(trainer, digits):
    x, y = digits
    with pytest.raises(TrainingError, match="batch of 3 targets for a prediction batch of 4"):
        trainer.step(x[:4], y[:3])


def test_bad_feed(trainer):
    with pytest.raises(InputError, match="rank 3"):
        trainer.step(np.zeros((4, 8, 8), np.float32), np.zeros(4, np.int64))


def test_unknown_loss():
    with pytest.raises(TrainingError, match="unknown loss 'hinge'"):
        Trainer(str(DIGITS), loss="hinge")


def test_unknown_trainable():
    with pytest.raises(TrainingError, match="'nope' is not an initializer"):
        Trainer(str(DIGITS), trainable=["nope"])


def test_op_without_backward_rule_is_named():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Gather", ["c", "i"], ["p"], name="the_gather", axis=1),
             helper.make_node("Flatten", ["p"], ["y"], name="flat")]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w"),
         numpy_helper.from_array(np.array([1], np.int64), "i")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(TrainingError, match=r"no backward rule for node 'the_gather' "
                                            r"\(Gather\)"):
        Trainer(m)


def test_nan_input_stops_without_updating(digits):
    x, y = digits
    tr = Trainer(str(DIGITS), optimizer=SGD(lr=0.1))
    w0 = tr.params["classifier.3.weight"].copy()
    bad = x[:8].copy()
    bad[3, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="input 'input' holds NaN \\(first at sample 3\\); "
                                         "training needs finite inputs"):
        tr.step(bad, y[:8])
    assert np.array_equal(w0, tr.params["classifier.3.weight"])
    assert tr.step_count == 0


# -- CLI -------------------------------------------------------------------------------------
def test_cli_trains_npz_and_reports_errors(digits, tmp_path, capsys):
    x, y = digits
    data = tmp_path / "d.npz"
    np.savez(data, x=x[:200], y=y[:200])
    out = tmp_path / "t.onnx"
    rc = cli_main(["train", str(DIGITS), "--data", str(data), "--epochs", "1",
                   "--optimizer", "adam", "--no-progress", "-o", str(out)])
    assert rc == 0 and out.exists()
    text = capsys.readouterr().out
    assert "held-out accuracy" in text and "wrote" in text
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x[:10])
    rc = cli_main(["train", str(DIGITS), "--data", str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "needs arrays 'x' and 'y'" in err
