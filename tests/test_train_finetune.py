"""Fine-tuning an exported CNN (issue #23): BatchNorm modes, divergence safety, exact resume.

Oracle for the BatchNorm modes: ``sample_models/finetune_head.{onnx,npz}``, a small pretrained-
style BN network and three SGD steps PyTorch took training only its ``fc`` head, once with the
backbone in eval mode and once in train mode (``sample_models/export_finetune_head.py``); no
torch import here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convrt.errors import InputError, TrainingError
from convrt.train import (SGD, Adam, AdamW, CosineAnnealingLR, CrossEntropyLoss, LinearLR,
                          SequentialLR, StepLR, Trainer)

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "sample_models" / "finetune_head.onnx"
RECORDED = ROOT / "sample_models" / "finetune_head.npz"
HEAD = ["fc.weight", "fc.bias"]


@pytest.fixture(scope="module")
def recorded():
    with np.load(RECORDED) as z:
        return {k: z[k] for k in z.files}


def _exported(tr, tmp_path):
    out = tmp_path / "tuned.onnx"
    tr.export(out)
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _finetune(recorded, **kw):
    tr = Trainer(str(FINETUNE), optimizer=SGD(lr=0.1, momentum=0.9), trainable=HEAD, **kw)
    x, y = recorded["inputs"], recorded["labels"]
    return tr, [tr.step({"input": x}, y) for _ in range(3)]


@pytest.mark.parametrize("mode", ["auto", "eval"])
def test_head_only_finetune_matches_pytorch_eval_backbone(recorded, mode, tmp_path):
    source = {t.name: numpy_helper.to_array(t) for t in onnx.load(FINETUNE).graph.initializer}
    tr, losses = _finetune(recorded, batchnorm=mode)
    assert sorted(tr.bn_eval) and not tr.bn_train  # both BN layers frozen -> eval mode
    np.testing.assert_allclose(losses, recorded["eval_losses"], rtol=1e-4)
    # the train-mode losses differ by far more than the tolerance: the test tells them apart
    assert np.max(np.abs(recorded["eval_losses"] - recorded["train_losses"])) > 1e-2
    exported = _exported(tr, tmp_path)
    for name in ("fc.weight", "fc.bias"):
        np.testing.assert_allclose(exported[name], recorded[f"eval.{name}"], rtol=1e-4,
                                   atol=1e-6, err_msg=name)
    stats = [n for n in exported if n.endswith(("running_mean", "running_var"))]
    assert len(stats) == 4
    for name in stats:  # the backbone's statistics bit for bit as exported, and as PyTorch
        assert np.array_equal(exported[name], source[name]), name
        assert np.array_equal(exported[name], recorded[f"eval.{name}"]), name
    for name in source:  # nothing frozen moved at all
        if name not in HEAD:
            assert np.array_equal(exported[name], source[name]), name


def test_head_only_finetune_train_mode_matches_pytorch_train_backbone(recorded, tmp_path):
    tr, losses = _finetune(recorded, batchnorm="train")
    assert tr.bn_eval == [] and len(tr.bn_train) == 2
    np.testing.assert_allclose(losses, recorded["train_losses"], rtol=1e-4)
    exported = _exported(tr, tmp_path)
    for name in [n for n in exported if n.endswith(("running_mean", "running_var"))] + HEAD:
        np.testing.assert_allclose(exported[name], recorded[f"train.{name}"], rtol=1e-4,
                                   atol=1e-6, err_msg=name)


def test_auto_trains_bn_whose_affine_is_trainable(recorded):
    """A BN layer with a trainable scale or bias stays in train mode under "auto"."""
    tr = Trainer(str(FINETUNE), trainable=HEAD + ["features.5.bias"], optimizer=SGD(lr=0.1))
    bn2 = [n.name for n in tr.graph.nodes if n.op_type == "BatchNormalization"][1]
    assert tr.bn_train == [bn2] and len(tr.bn_eval) == 1
    default = Trainer(str(FINETUNE))  # everything trainable: every BN layer trains
    assert default.bn_eval == [] and len(default.bn_train) == 2


def test_bad_batchnorm_mode():
    with pytest.raises(InputError, match=r"batchnorm='frozen': choose one of auto, train, eval"):
        Trainer(str(FINETUNE), batchnorm="frozen")


# -- divergence safety -----------------------------------------------------------------------
DIGITS = ROOT / "sample_models" / "digits_vgg.onnx"


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


def _snapshot(tr):
    return ({n: a.copy() for n, a in tr.params.items()}, {n: a.copy() for n, a in
                                                           tr.state.items()},
            tr.optimizer.snapshot())


def _assert_kept(tr, snap):
    params, state, (t, opt) = snap
    for d, ref in ((tr.params, params), (tr.state, state)):
        assert d.keys() == ref.keys()
        for n in ref:
            assert np.array_equal(d[n], ref[n]), n
    assert tr.optimizer.t == t and tr.optimizer.state.keys() == opt.keys()
    for n, slots in opt.items():
        for k, a in slots.items():
            assert np.array_equal(tr.optimizer.state[n][k], a), (n, k)


def _all_finite(tr):
    arrays = list(tr.params.values()) + list(tr.state.values())
    arrays += [a for s in tr.optimizer.state.values() for a in s.values()]
    return all(np.isfinite(a).all() for a in arrays)


def test_sgd_lr_1e6_stops_before_keeping_anything_non_finite(digits, tmp_path):
    """The issue's run: loss 2.3 -> 1.8e15 -> NaN.  The NaN step raises, nothing non-finite was
    ever kept, and the exported model holds the last finite tensors."""
    x, y = digits
    tr = Trainer(str(DIGITS), optimizer=SGD(lr=1e6, momentum=0.9))
    losses, snap = [], None
    with pytest.raises(TrainingError, match=r"the loss is (nan|inf) at step \d+; training "
                                            r"stopped|step \d+ would make .* non-finite"):
        for i in range(20):
            snap = _snapshot(tr)
            losses.append(tr.step(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]))
            assert _all_finite(tr), f"non-finite state kept after step {i + 1}"
    assert 1 <= len(losses) < 20 and losses[-1] > 1e6  # it did diverge first
    _assert_kept(tr, snap)
    assert tr.step_count == len(losses)
    out = tmp_path / "diverged.onnx"
    tr.export(out)
    inits = onnx.load(out).graph.initializer
    assert inits and all(np.isfinite(numpy_helper.to_array(t)).all() for t in inits)


def test_adam_lr_1e6_keeps_only_finite_state(digits):
    """Adam's step is bounded by lr, so at lr=1e6 the loss explodes (1e20) without leaving
    float32; whatever happens, each step either keeps finite tensors or raises keeping them."""
    x, y = digits
    tr = Trainer(str(DIGITS), optimizer=Adam(lr=1e6))
    losses = []
    for i in range(12):
        snap = _snapshot(tr)
        try:
            losses.append(tr.step(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]))
        except TrainingError:
            _assert_kept(tr, snap)
            break
        assert _all_finite(tr)
    assert max(losses) > 1e10  # diverged, but nothing non-finite is kept


def test_update_overflow_names_the_weight_and_keeps_everything(recorded, tmp_path):
    """A finite loss and gradients but an update that overflows float32: the weight is named,
    the weights, BN statistics and optimizer slots stay as they were."""
    x, y = recorded["inputs"], recorded["labels"]
    tr = Trainer(str(FINETUNE), optimizer=SGD(lr=3e38, momentum=0.9, weight_decay=10))
    snap = _snapshot(tr)
    with pytest.raises(TrainingError, match=r"step 1 would make the weight '[\w.]+' non-finite "
                                            r"\(Inf\); nothing was updated"):
        tr.step({"input": x}, y)
    _assert_kept(tr, snap)
    assert tr.step_count == 0 and tr.optimizer.state == {}
    tr.optimizer.lr = 0.1  # the trainer is still usable
    assert np.isfinite(tr.step({"input": x}, y)) and tr.step_count == 1


def test_running_statistic_overflow_is_named(recorded):
    """Inputs of 1e20 keep the float64 batch statistics finite but overflow float32
    running_var: the statistic is named and no update is kept."""
    x, y = recorded["inputs"] * np.float32(1e20), recorded["labels"]
    tr = Trainer(str(FINETUNE), optimizer=SGD(lr=0.1), trainable=HEAD, batchnorm="train")
    snap = _snapshot(tr)
    with pytest.raises(TrainingError, match=r"running statistic 'features.1.running_var' "
                                            r"non-finite \(Inf\)"):
        tr.step({"input": x}, y)
    _assert_kept(tr, snap)


def test_evaluate_reports_non_finite_outputs(digits):
    x, y = digits
    tr = Trainer(str(DIGITS))
    bad = x[:50].copy()
    bad[7, 0, 3, 3] = np.nan
    with pytest.raises(TrainingError, match=r"evaluate: the outputs of 1 of 50 samples are "
                                            r"non-finite \(first: sample 7; the inputs hold "
                                            r"NaN/Inf\); no loss or accuracy"):
        tr.evaluate(bad, y[:50])
    assert tr.evaluate(x[:50], y[:50])["accuracy"] >= 0.0  # finite inputs: a result


@pytest.mark.parametrize("make,msg", [
    (lambda: SGD(lr=-0.1), "sgd: learning rate -0.1 must be a finite number >= 0"),
    (lambda: SGD(lr=float("inf")), "sgd: learning rate inf must be a finite number >= 0"),
    (lambda: SGD(lr=float("nan")), "sgd: learning rate nan must be a finite number >= 0"),
    (lambda: SGD(momentum=-5), "sgd: momentum -5 must be a finite number >= 0"),
    (lambda: SGD(weight_decay=-1), "sgd: weight_decay -1 must be a finite number >= 0"),
    (lambda: SGD(dampening=2), r"sgd: dampening 2 must lie in \[0, 1\]"),
    (lambda: SGD(lr="fast"), "sgd: learning rate must be a number, got 'fast'"),
    (lambda: SGD(nesterov=True), "sgd: Nesterov momentum needs momentum > 0 and dampening 0"),
    (lambda: Adam(betas=(0.9, 1.0)), r"adam: beta2 1.0 must lie in \[0, 1\)"),
    (lambda: Adam(betas=(-0.1, 0.9)), r"adam: beta1 -0.1 must lie in \[0, 1\)"),
    (lambda: Adam(betas=0.9), "adam: betas must be a pair, got 0.9"),
    (lambda: Adam(eps=-1e-8), "adam: eps -1e-08 must be a finite number >= 0"),
    (lambda: AdamW(weight_decay=-0.01), "adamw: weight_decay -0.01 must be a finite number"),
])
def test_bad_optimizer_arguments(make, msg):
    with pytest.raises(InputError, match=msg) as e:
        make()
    assert "\n" not in str(e.value)


# -- exact resume ----------------------------------------------------------------------------
def _tensors(tr):
    return {**{f"param:{n}": a for n, a in tr.params.items()},
            **{f"state:{n}": a for n, a in tr.state.items()}}


def _cosine_per_step(opt, n=385):
    """The CLI's default: CosineAnnealingLR over every optimizer step of 4 epochs."""
    return {"scheduler": CosineAnnealingLR(opt, T_max=4 * 6), "scheduler_interval": "step"}


def _warmup_then_step_per_epoch(opt):
    """Warmup (LinearLR) then StepLR, stepped per epoch: the lr changes at every epoch."""
    return {"scheduler": SequentialLR(opt, [LinearLR(opt, start_factor=0.25, total_iters=2),
                                            StepLR(opt, step_size=1, gamma=0.5)],
                                      milestones=[2])}


@pytest.mark.parametrize("opt,sched", [
    (lambda: SGD(lr=0.05, momentum=0.9), _cosine_per_step),
    (lambda: Adam(lr=2e-3), _cosine_per_step),
    (lambda: SGD(lr=0.05, momentum=0.9), _warmup_then_step_per_epoch),
    (lambda: AdamW(lr=2e-3), None)])
def test_resume_after_two_epochs_equals_four_straight_bitwise(digits, tmp_path, opt, sched):
    """fit 4 epochs vs fit 2 of 4, checkpoint, a new Trainer (another seed: the checkpoint must
    carry everything) from the checkpoint, fit to 4.  The digits model has Dropout and BN; 385
    samples in batches of 64 leave a one-sample batch that is skipped (6 steps an epoch);
    schedulers per step and per epoch (a SequentialLR's sub-schedulers included), and none."""
    x, y = digits[0][:385], digits[1][:385]

    def make(seed):
        o = opt()
        return Trainer(str(DIGITS), optimizer=o, seed=seed, **(sched(o) if sched else {}))

    straight = make(5)
    assert straight.steps_per_epoch(385, 64) == 6
    lrs = []
    hist = straight.fit(x, y, epochs=4, batch_size=64,
                        on_epoch=lambda *a: lrs.append(straight.optimizer.lr))
    if sched is not None:
        assert len(set(lrs)) == 4  # the schedule did move the learning rate every epoch
    first = make(5)
    assert first.fit(x, y, epochs=4, batch_size=64, until_epoch=2) == hist[:2]
    ck = tmp_path / "ck.npz"
    first.save_checkpoint(ck)
    resumed = make(123)
    resumed.load_checkpoint(ck)
    assert resumed.epoch == 2 and resumed.step_count == first.step_count == 12
    assert resumed.optimizer.lr == first.optimizer.lr == lrs[1]
    assert resumed.fit(x, y, epochs=4, batch_size=64) == hist[2:]
    assert resumed.epoch == straight.epoch == 4 and resumed.step_count == 24
    assert resumed.optimizer.lr == straight.optimizer.lr
    if sched is not None:
        assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    a, b = _tensors(straight), _tensors(resumed)
    assert a.keys() == b.keys() and len(a) > 10
    for n in a:
        assert np.array_equal(a[n], b[n]), n
    # the resumed run did not start over: 2 epochs from the start end elsewhere
    restart = make(5)
    restart.fit(x, y, epochs=2, batch_size=64)
    assert not np.array_equal(restart.params["classifier.3.weight"],
                              resumed.params["classifier.3.weight"])
    # a finished run fits nothing more
    assert resumed.fit(x, y, epochs=4, batch_size=64) == [] and resumed.step_count == 24


def test_cli_resume_of_an_interrupted_run_is_exact(digits, tmp_path, monkeypatch, capsys):
    """``--epochs 4`` interrupted (Ctrl-C) right after epoch 2's checkpoint, then ``--resume``
    with ``--epochs 4``: the exported model equals an uninterrupted 4-epoch run's, bitwise."""
    from convrt.cli import main as cli_main

    data = tmp_path / "d.npz"
    np.savez(data, x=digits[0][:300], y=digits[1][:300])
    common = ["train", str(DIGITS), "--data", str(data), "--epochs", "4", "--batch-size", "32",
              "--no-progress"]
    straight = tmp_path / "straight.onnx"
    assert cli_main(common + ["-o", str(straight)]) == 0
    ck, resumed = tmp_path / "ck.npz", tmp_path / "resumed.onnx"
    save = Trainer.save_checkpoint

    def save_then_interrupt(self, path):
        save(self, path)
        if self.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_interrupt)
    assert cli_main(common + ["--checkpoint", str(ck), "-o", str(resumed)]) == 130
    assert not resumed.exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert cli_main(common + ["--resume", str(ck), "-o", str(resumed)]) == 0
    out = capsys.readouterr().out
    assert "epoch 3:" in out and "epoch 4:" in out and "epoch 1:" not in out
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(straight).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(resumed).graph.initializer}
    assert a.keys() == b.keys()
    for n in a:
        assert np.array_equal(a[n], b[n]), n


# -- bad input -------------------------------------------------------------------------------
def test_trainable_glob_patterns(recorded):
    tr = Trainer(str(FINETUNE), trainable=["fc.*"], optimizer=SGD(lr=0.1))
    assert sorted(tr.params) == sorted(HEAD) and len(tr.bn_eval) == 2
    tr = Trainer(str(FINETUNE), trainable=["features.[05].*", "fc.bias"])
    assert sorted(tr.params) == ["fc.bias", "features.0.bias", "features.0.weight",
                                 "features.5.bias", "features.5.weight"]
    with pytest.raises(TrainingError, match=r"finetune_head.onnx: trainable pattern 'head\.\*' "
                                            r"matches no float initializer$"):
        Trainer(str(FINETUNE), trainable=["fc.weight", "head.*"])
    with pytest.raises(InputError, match="trainable entries must be strings, got 3"):
        Trainer(str(FINETUNE), trainable=[3])


def test_soft_labels_are_refused_in_one_line(recorded):
    x, y = recorded["inputs"], recorded["labels"]
    tr = Trainer(str(FINETUNE), trainable=HEAD)
    onehot = np.eye(5, dtype=np.float32)[y]
    with pytest.raises(TrainingError, match=r"cross_entropy: the targets have the logits' shape "
                                            r"\[8, 5\]: soft labels .* are not supported; pass "
                                            r"class indices \(argmax over axis 1\)"):
        tr.step({"input": x}, onehot)
    with pytest.raises(TrainingError, match=r"soft labels \(one-hot or probability rows\), "
                                            r"which are not supported"):
        tr.fit(x, onehot, epochs=1)
    with pytest.raises(TrainingError, match=r"class indices; the targets are non-integer floats"):
        tr.fit(x, y + 0.5, epochs=1)
    with pytest.raises(TrainingError, match=r"label 5 out of range for the model's 5 classes"):
        tr.fit(x, np.where(y == 0, 5, y), epochs=1)
    with pytest.raises(TrainingError, match=r"label -1 is negative"):
        tr.fit(x, np.where(y == 0, -1, y), epochs=1)
    assert tr.step_count == 0


@pytest.mark.parametrize("case", ["label_out_of_range", "soft_labels", "nan_input",
                                  "pattern_matches_nothing", "bad_lr"])
def test_cli_bad_input_one_line_nonzero_exit(digits, tmp_path, capsys, case):
    from convrt.cli import main as cli_main

    x, y = digits[0][:100].copy(), digits[1][:100].copy()
    extra = []
    want = {"label_out_of_range": "label 10 out of range for the model's 10 classes",
            "soft_labels": "look like soft labels (one-hot or probability rows)",
            "nan_input": "x holds NaN/Inf in 1 samples (first at sample 4)",
            "pattern_matches_nothing": "trainable pattern 'head.*' matches no float initializer",
            "bad_lr": "sgd: learning rate -1.0 must be a finite number >= 0"}[case]
    if case == "label_out_of_range":
        y[50] = 10
    elif case == "soft_labels":
        y = np.eye(10, dtype=np.float32)[y]
    elif case == "nan_input":
        x[4, 0, 2, 2] = np.nan
    elif case == "pattern_matches_nothing":
        extra = ["--trainable", "classifier.*", "--trainable", "head.*"]
    else:
        extra = ["--lr", "-1"]
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    out = tmp_path / "t.onnx"
    rc = cli_main(["train", str(DIGITS), "--data", str(data), "--epochs", "1", "--no-progress",
                   "-o", str(out)] + extra)
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("convrt: error: ") and want in err, err
    assert not out.exists()


def test_cli_trainable_pattern_trains_the_head_only(digits, tmp_path, capsys):
    from convrt.cli import main as cli_main

    data = tmp_path / "d.npz"
    np.savez(data, x=digits[0][:200], y=digits[1][:200])
    out = tmp_path / "head.onnx"
    assert cli_main(["train", str(DIGITS), "--data", str(data), "--epochs", "1",
                     "--no-progress", "--trainable", "classifier.*", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 trainable tensors" in text and "3 frozen BatchNorm layers in eval mode" in text
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(DIGITS).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    changed = sorted(n for n in before if not np.array_equal(before[n], after[n]))
    assert changed and all(n.startswith("classifier.") for n in changed), changed


# -- PyTorch habits: class weights, ignore_index, label smoothing, gradient clipping --------
# torch 2.13 ``F.cross_entropy`` in float64 on these inputs (rng 3): loss and the first six
# gradient entries, recomputed and checked by sample_models/record_finetune_literals.py.
CE_RNG = np.random.default_rng(3)
CE_Z = CE_RNG.standard_normal((6, 4)) * 2
CE_Y = np.array([0, 3, -100, 2, 1, 3])
CE_W = np.array([0.5, 2.0, 1.0, 1.5])
CE_ZS = CE_RNG.standard_normal((2, 3, 2, 2))
CE_YS = np.array([[[0, 2], [1, -100]], [[2, 2], [0, 1]]])
TORCH_CE = {
    "weight_smoothing_ignore": (2.5029023873794385, [
        0.0303580095850864, -0.015374875292501743, -0.0039637441433664, -0.011019390149218242,
        0.04920394680322843, 0.06984432229998043]),
    "smoothing_only": (1.8910441661161403, [
        0.00540437494950301, -0.0041504331798105955, 0.002047605914902156,
        -0.003301547684594504, 0.03546846600241204, 0.05951012585630721]),
    "spatial_weight_ignore": (1.9882396393042294, [
        -0.046651158388625706, 0.03370412032097921, 0.19997549834920378, 0.0,
        0.008787874019500621, 0.05097175584574451]),
}


@pytest.mark.parametrize("case", sorted(TORCH_CE))
def test_cross_entropy_options_match_torch(case):
    z, y, loss_fn = {
        "weight_smoothing_ignore": (CE_Z, CE_Y, CrossEntropyLoss(weight=CE_W,
                                                                 label_smoothing=0.2)),
        "smoothing_only": (CE_Z, np.where(CE_Y < 0, 1, CE_Y),
                           CrossEntropyLoss(label_smoothing=0.1)),
        "spatial_weight_ignore": (CE_ZS, CE_YS, CrossEntropyLoss(weight=CE_W[:3],
                                                                 label_smoothing=0.05)),
    }[case]
    loss, grad = loss_fn(z, y)
    want_loss, want_grad = TORCH_CE[case]
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(grad.reshape(-1)[:6], want_grad, rtol=1e-10, atol=1e-15)
    if case == "weight_smoothing_ignore":
        assert not grad[2].any()  # the ignored sample gets no gradient


CLIP_TORCH_LOSSES = [1.5875365734100342, 1.5435553789138794, 1.4648754596710205]
CLIP_TORCH_NORMS = [0.8969241380691528, 0.8630170822143555, 0.7968131899833679]
CLIP_TORCH_FC_BIAS = [0.20501556992530823, 0.24801477789878845, -0.16702376306056976,
                      -0.25438249111175537, -0.12034870684146881]


def test_clipping_and_smoothed_weighted_loss_match_pytorch(recorded):
    """Full fine-tune (BN in train mode) with ``clip_grad_norm_(max_norm=0.5)`` and
    ``CrossEntropyLoss(weight=[1, 2, .5, 1, 1.5], label_smoothing=0.1)``, SGD(0.1, 0.9): torch
    2.13's losses, total gradient norms and final fc.bias on the finetune_head batch
    (``CLIP_TORCH_*``, recomputed and checked by sample_models/record_finetune_literals.py; the
    norms exceed 0.5, so every step clips)."""
    tr = Trainer(str(FINETUNE), optimizer=SGD(lr=0.1, momentum=0.9), batchnorm="train",
                 clip_grad_norm=0.5, loss=CrossEntropyLoss(weight=[1.0, 2.0, 0.5, 1.0, 1.5],
                                                           label_smoothing=0.1))
    losses, norms = [], []
    for _ in range(3):
        losses.append(tr.step({"input": recorded["inputs"]}, recorded["labels"]))
        norms.append(tr.last_grad_norm)
    np.testing.assert_allclose(losses, CLIP_TORCH_LOSSES, rtol=1e-5)
    np.testing.assert_allclose(norms, CLIP_TORCH_NORMS, rtol=1e-5)
    np.testing.assert_allclose(tr.params["fc.bias"], CLIP_TORCH_FC_BIAS, atol=1e-6)
    assert tr.evaluate({"input": recorded["inputs"]}, recorded["labels"])["accuracy"] >= 0


@pytest.mark.parametrize("make,msg", [
    (lambda: Trainer(str(FINETUNE), clip_grad_norm=0), "clip_grad_norm 0 must be a finite"),
    (lambda: Trainer(str(FINETUNE), clip_grad_norm=float("inf")), "clip_grad_norm inf must"),
    (lambda: CrossEntropyLoss(label_smoothing=1.5),
     r"label_smoothing 1.5 must lie in \[0, 1\]"),
    (lambda: CrossEntropyLoss(weight=[1, -1]),
     "weight must be a 1-D array of finite non-negative numbers"),
])
def test_bad_loss_and_clipping_arguments(make, msg):
    with pytest.raises(InputError, match=msg):
        make()


def test_fit_accepts_ignore_index_labels(recorded):
    x, y = recorded["inputs"], recorded["labels"].copy()
    y[3] = -100
    tr = Trainer(str(FINETUNE), trainable=HEAD, loss=CrossEntropyLoss(), optimizer=SGD(lr=0.1))
    ref = Trainer(str(FINETUNE), trainable=HEAD, optimizer=SGD(lr=0.1))
    keep = y != -100
    # one batch (frozen BN: samples independent): the ignored sample drops out of the mean as
    # if it were not there
    [got] = tr.fit(x, y, epochs=1, batch_size=8)
    assert got == pytest.approx(ref.step({"input": x[keep]}, y[keep]), rel=1e-6)
    np.testing.assert_allclose(tr.params["fc.weight"], ref.params["fc.weight"], rtol=1e-5,
                               atol=1e-7)
    with pytest.raises(TrainingError, match="label -100 is negative"):
        ref.fit(x, y, epochs=1)
