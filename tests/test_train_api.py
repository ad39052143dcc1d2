"""The PyTorch-habit training API (issue #23): scheduler objects, optimizer param groups,
``freeze``, and the CLI's ``--freeze``, ``--val`` and progress bar.

Oracles, no torch import here: ``sample_models/train_api_schedules.json`` holds
``torch.optim.lr_scheduler``'s learning rates for each scheduler spec, and
``sample_models/train_api_groups.npz`` three steps of torch.optim with param groups on
``finetune_head.onnx`` (both written by ``sample_models/record_train_api.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from convrt.cli import main as cli_main
from convrt.errors import InputError, TrainingError
from convrt.train import (SGD, Adam, AdamW, CosineAnnealingLR, ExponentialLR, LinearLR,
                          MultiStepLR, SequentialLR, StepLR, Trainer)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
FINETUNE = SAMPLES / "finetune_head.onnx"
DIGITS = SAMPLES / "digits_vgg.onnx"
SCHEDULES = json.loads((SAMPLES / "train_api_schedules.json").read_text())
KINDS = {c.__name__: c for c in (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR,
                                 LinearLR, SequentialLR)}


@pytest.fixture(scope="module")
def batch():
    with np.load(SAMPLES / "finetune_head.npz") as z:
        return z["inputs"], z["labels"]


@pytest.fixture(scope="module")
def torch_groups():
    with np.load(SAMPLES / "train_api_groups.npz") as z:
        return {k: z[k] for k in z.files}


def build(opt, spec):
    kw = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "SequentialLR":
        kw["schedulers"] = [build(opt, s) for s in spec["schedulers"]]
    return KINDS[spec["kind"]](opt, **kw)


def two_groups():
    opt = SGD(lr=0.1)
    opt.set_param_groups([{"params": ["a"]}, {"params": ["b"], "lr": 0.02}])
    return opt


# -- schedulers ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(SCHEDULES))
def test_scheduler_matches_torch(case):
    """Both groups' learning rates at epoch 0 and after each step(), as torch's."""
    spec, want = SCHEDULES[case]["spec"], SCHEDULES[case]["lrs"]
    opt = two_groups()
    sched = build(opt, spec)
    got = [sched.get_last_lr()]
    for _ in range(len(want) - 1):
        sched.step()
        got.append(sched.get_last_lr())
    # torch multiplies the previous value (chainable form), convrt uses the closed form: equal
    # to rounding
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert len({round(a, 12) for a, _ in want}) > 2  # the case does move the rate


def test_cosine_and_warmup_closed_forms():
    """Independent of torch: the documented formulas at a few points."""
    opt = SGD(lr=0.3)
    cos = CosineAnnealingLR(opt, T_max=8, eta_min=0.01)
    seen = [opt.lr]
    for _ in range(8):
        cos.step()
        seen.append(opt.lr)
    assert seen[0] == 0.3 and seen[8] == pytest.approx(0.01, abs=1e-15)
    assert seen[4] == pytest.approx((0.3 + 0.01) / 2, rel=1e-14)  # halfway: the mean
    assert seen[2] == pytest.approx(0.01 + 0.29 * (1 + np.sqrt(0.5)) / 2, rel=1e-14)
    opt = SGD(lr=1.0)
    warm = LinearLR(opt, start_factor=0.25, total_iters=3)
    assert opt.lr == 0.25
    for want in (0.5, 0.75, 1.0, 1.0):
        warm.step()
        assert opt.lr == pytest.approx(want, rel=1e-15)


def test_scheduler_state_round_trips_exactly():
    spec = SCHEDULES["three_phases"]["spec"]
    a_opt = two_groups()
    a = build(a_opt, spec)
    for _ in range(4):
        a.step()
    saved = json.loads(json.dumps(a.state_dict()))
    b_opt = two_groups()
    b = build(b_opt, spec)
    b.load_state_dict(saved)
    assert b.last_epoch == 4 and b.get_last_lr() == a.get_last_lr()
    for _ in range(6):  # bitwise the same afterwards
        a.step()
        b.step()
        assert a.get_last_lr() == b.get_last_lr()
    with pytest.raises(TrainingError, match="holds a SequentialLR scheduler's state, the trainer "
                                            "has a StepLR"):
        StepLR(SGD(lr=0.1), 2).load_state_dict(saved)
    # a SequentialLR whose second phase differs: refused before any sub-scheduler changes
    c_opt = two_groups()
    c = SequentialLR(c_opt, [LinearLR(c_opt, 0.5, total_iters=2), ExponentialLR(c_opt, 0.5),
                             ExponentialLR(c_opt, 0.9)], milestones=[2, 6])
    with pytest.raises(TrainingError, match="holds a StepLR scheduler's state, the trainer has "
                                            "a ExponentialLR"):
        c.load_state_dict(saved)
    assert c.last_epoch == 0 and [s.last_epoch for s in c.schedulers][0] == 0
    assert c.get_last_lr() == [0.05, 0.01]


@pytest.mark.parametrize("make,msg", [
    (lambda o: StepLR(o, step_size=0), "StepLR: step_size must be an integer >= 1, got 0"),
    (lambda o: StepLR(o, step_size=2.5), "StepLR: step_size must be an integer >= 1, got 2.5"),
    (lambda o: CosineAnnealingLR(o, T_max=0), "CosineAnnealingLR: T_max must be an integer"),
    (lambda o: LinearLR(o, start_factor=0.0), r"LinearLR: start_factor 0.0 must lie in \(0, 1\]"),
    (lambda o: LinearLR(o, end_factor=1.5), r"LinearLR: end_factor 1.5 must lie in \[0, 1\]"),
    (lambda o: MultiStepLR(o, [5, 2]), r"MultiStepLR: milestones must increase, got \[5, 2\]"),
    (lambda o: ExponentialLR(o, gamma=float("nan")), "ExponentialLR: gamma nan must lie in"),
    (lambda o: SequentialLR(o, [StepLR(o, 2), StepLR(o, 3)], milestones=[]),
     "SequentialLR: 2 schedulers need 1 milestones, got 0"),
    (lambda o: SequentialLR(o, [StepLR(SGD(), 2), StepLR(o, 3)], milestones=[2]),
     "SequentialLR: every scheduler must belong to its optimizer"),
    (lambda o: StepLR("sgd", 2), "StepLR: needs a convrt.train optimizer, got str"),
])
def test_bad_scheduler_arguments(make, msg):
    with pytest.raises(InputError, match=msg) as e:
        make(SGD(lr=0.1))
    assert "\n" not in str(e.value)


def test_trainer_refuses_a_foreign_scheduler_and_a_bad_interval():
    with pytest.raises(InputError, match="scheduler must be a convrt.train scheduler built on the "
                                         "trainer's optimizer"):
        Trainer(str(FINETUNE), optimizer=SGD(lr=0.1), scheduler=StepLR(SGD(lr=0.1), 2))
    with pytest.raises(InputError, match="scheduler_interval='batch': choose 'epoch' or 'step'"):
        Trainer(str(FINETUNE), scheduler_interval="batch")


def test_fit_steps_the_scheduler_per_epoch_or_per_step(batch):
    x, y = batch  # 8 samples, batches of 4: 2 optimizer steps an epoch
    for interval, steps in (("epoch", 3), ("step", 6)):
        opt = SGD(lr=0.1)
        tr = Trainer(str(FINETUNE), optimizer=opt, trainable=["fc.*"],
                     scheduler=ExponentialLR(opt, gamma=0.5), scheduler_interval=interval)
        seen = []
        tr.fit(x, y, epochs=3, batch_size=4, on_batch=lambda *a: seen.append(opt.lr))
        assert tr.scheduler.last_epoch == steps and opt.lr == pytest.approx(0.1 * 0.5 ** steps)
        if interval == "epoch":  # the lr used by each step: constant within an epoch
            assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
        else:  # on_batch runs after the step and the scheduler's step
            assert seen == pytest.approx([0.1 * 0.5 ** k for k in range(1, 7)])


# -- param groups ----------------------------------------------------------------------------
def ndim_le_1(name, a):
    return a.ndim <= 1


CASES = {  # mirrors GROUP_CASES in sample_models/record_train_api.py
    "sgd": (lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
            [{"params": ["fc.*"], "lr": 0.05}, {"params": [ndim_le_1], "weight_decay": 0.0}],
            None, 0.5),
    "adam": (lambda: Adam(lr=0.01, weight_decay=0.01),
             [{"params": "features.0.*", "lr": 0.002, "betas": (0.8, 0.99)},
              {"params": ndim_le_1, "weight_decay": 0.0}], None, None),
    "adamw": (lambda: AdamW(lr=0.01, weight_decay=0.1),
              [{"params": ["fc.weight"], "weight_decay": 0.5},
               {"params": [ndim_le_1], "weight_decay": 0.0, "lr": 0.02}], None, None),
    "sgd_freeze": (lambda: SGD(lr=0.1, momentum=0.9), [{"params": ["fc.*"], "lr": 0.05}],
                   ["features.0.*"], None),
}


def _run_groups(case, batch, groups=True):
    make, param_groups, freeze, gamma = CASES[case]
    opt = make()
    sched = StepLR(opt, step_size=1, gamma=gamma) if gamma else None
    tr = Trainer(str(FINETUNE), optimizer=opt, freeze=freeze, scheduler=sched, batchnorm="eval",
                 param_groups=param_groups if groups else None)
    losses = []
    for _ in range(3):
        losses.append(tr.step({"input": batch[0]}, batch[1]))
        if sched is not None:
            sched.step()  # per optimizer step, as the recording did
    return tr, losses


@pytest.mark.parametrize("case", sorted(CASES))
def test_param_groups_match_torch(case, batch, torch_groups):
    tr, losses = _run_groups(case, batch)
    np.testing.assert_allclose(losses, torch_groups[f"{case}.losses"], rtol=1e-5)
    tensors = {**tr.params, **tr.state}
    names = [k.split(".", 1)[1] for k in torch_groups if k.startswith(case + ".")
             and not k.endswith(".losses")]
    assert len(names) == 14
    for n in names:
        want = torch_groups[f"{case}.{n}"]
        got = tensors.get(n, tr.graph.initializers[n].const)  # frozen: the file's tensor
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=n)
    # the groups matter: without them the run ends far outside the tolerance
    plain, _ = _run_groups(case, batch, groups=False)
    assert max(np.max(np.abs(plain.params[n] - tr.params[n])) for n in tr.params) > 1e-3


def test_groups_first_match_wins_and_the_rest_keep_the_defaults():
    opt = SGD(lr=0.1, momentum=0.9, weight_decay=1e-4)
    tr = Trainer(str(FINETUNE), optimizer=opt, param_groups=[
        {"params": ["fc.*"], "lr": 1e-2}, {"params": ["*.bias"], "weight_decay": 0.0}])
    g = opt.param_groups
    assert [x["params"] for x in g] == [
        ["fc.weight", "fc.bias"],
        ["features.0.bias", "features.1.bias", "features.4.bias", "features.5.bias"],
        ["features.0.weight", "features.1.weight", "features.4.weight", "features.5.weight"]]
    assert [(x["lr"], x["weight_decay"]) for x in g] == [(1e-2, 1e-4), (0.1, 0.0), (0.1, 1e-4)]
    assert all(x["momentum"] == 0.9 for x in g)
    with pytest.raises(TrainingError, match=r"different learning rates \[0.01, 0.1, 0.1\]"):
        opt.lr  # noqa: B018 (the property raises)
    opt.lr = 0.5  # sets every group's
    assert tr.optimizer.lr == 0.5


def test_groups_built_after_a_scheduler_start_at_its_epoch():
    """A scheduler built before the Trainer split the optimizer applies to the new groups."""
    opt = SGD(lr=0.1)
    warm = LinearLR(opt, start_factor=0.1, total_iters=2)
    Trainer(str(FINETUNE), optimizer=opt, scheduler=warm,
            param_groups=[{"params": ["fc.*"], "lr": 1.0}])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.01)
    warm.step()
    warm.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 0.1])


@pytest.mark.parametrize("groups,exc,msg", [
    ([{"params": ["head.*"], "lr": 1.0}], TrainingError,
     r"finetune_head.onnx: param group 0: 'head.\*' matches no trainable initializer$"),
    ([{"params": ["fc.*"]}, {"params": ["fc.bias"], "lr": 0.5}], TrainingError,
     "param group 1 gets no parameter: every match is in an earlier group"),
    ([{"params": ["fc.*"], "lrr": 0.5}], InputError,
     r"sgd: param group 0: unknown option 'lrr' \(options: lr, momentum, dampening"),
    ([{"params": ["fc.*"], "lr": -1}], InputError,
     "sgd param group 0: learning rate -1 must be a finite number >= 0"),
    ([{"lr": 0.5}], InputError, "param group 0 has no 'params'"),
    ({"params": ["fc.*"]}, InputError, "param_groups must be a list of dicts"),
    ([{"params": [3]}], InputError, "a selector must be a name, a glob pattern or a callable"),
])
def test_bad_param_groups(groups, exc, msg):
    with pytest.raises(exc, match=msg) as e:
        Trainer(str(FINETUNE), optimizer=SGD(lr=0.1), param_groups=groups)
    assert "\n" not in str(e.value)


def test_param_groups_and_scheduler_resume_bitwise(batch, tmp_path):
    """2 + 2 epochs with groups and a per-epoch warmup+cosine equal 4 straight, bitwise; a
    checkpoint refuses a trainer with another scheduler, changing nothing."""
    x, y = batch

    def make(seed, sched=True, head="fc.*"):
        opt = AdamW(lr=1e-2)
        s = SequentialLR(opt, [LinearLR(opt, 0.2, total_iters=1), CosineAnnealingLR(opt, 3)],
                         milestones=[1]) if sched else None
        return Trainer(str(FINETUNE), optimizer=opt, seed=seed, scheduler=s, param_groups=[
            {"params": [head], "lr": 5e-2}, {"params": [ndim_le_1], "weight_decay": 0.0}])

    straight = make(0)
    hist = straight.fit(x, y, epochs=4, batch_size=4)
    first = make(0)
    first.fit(x, y, epochs=4, batch_size=4, until_epoch=2)
    ck = tmp_path / "ck.npz"
    first.save_checkpoint(ck)
    resumed = make(7)
    resumed.load_checkpoint(ck)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == \
        [g["lr"] for g in first.optimizer.param_groups]
    assert resumed.fit(x, y, epochs=4, batch_size=4) == hist[2:]
    for n in straight.params:
        assert np.array_equal(straight.params[n], resumed.params[n]), n
    for other, msg in ((make(0, sched=False), "written with scheduler SequentialLR, this "
                                              "trainer has None"),
                       (make(0, head="fc.weight"), "ck.npz: the checkpoint's 3 param groups "
                                                   "hold other parameters than this "
                                                   "optimizer's 3")):
        before = {n: a.copy() for n, a in other.params.items()}
        lrs = [g["lr"] for g in other.optimizer.param_groups]
        with pytest.raises(TrainingError, match=msg):
            other.load_checkpoint(ck)
        assert all(np.array_equal(before[n], other.params[n]) for n in before)
        assert other.optimizer.t == 0 and other.epoch == 0
        assert [g["lr"] for g in other.optimizer.param_groups] == lrs
        if other.scheduler is not None:
            assert other.scheduler.last_epoch == 0


# -- freeze ----------------------------------------------------------------------------------
def test_freeze_is_the_complement_of_trainable():
    tr = Trainer(str(FINETUNE), freeze=["features.*"])
    assert sorted(tr.params) == ["fc.bias", "fc.weight"] and len(tr.bn_eval) == 2
    tr = Trainer(str(FINETUNE), trainable=["features.[05].*", "fc.*"], freeze="*.bias")
    assert sorted(tr.params) == ["fc.weight", "features.0.weight", "features.5.weight"]
    with pytest.raises(TrainingError, match=r"freeze pattern 'backbone.\*' matches no "
                                            r"trainable initializer$"):
        Trainer(str(FINETUNE), freeze=["backbone.*"])
    with pytest.raises(TrainingError, match=r"freeze pattern '\*.running_\*' matches no "
                                            r"trainable initializer$"):
        Trainer(str(FINETUNE), freeze=["*.running_*"])
    with pytest.raises(TrainingError, match="freeze 'features.1.running_mean' is not a "
                                            "trainable float initializer"):
        Trainer(str(FINETUNE), freeze=["features.1.running_mean"])
    with pytest.raises(TrainingError, match="nothing to train"):
        Trainer(str(FINETUNE), freeze=["*"])


# -- CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


def _inits(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_cli_freeze_and_val(digits, tmp_path, capsys):
    x, y = digits
    data, val = tmp_path / "d.npz", tmp_path / "v.npz"
    np.savez(data, x=x[:200], y=y[:200])
    np.savez(val, x=x[1500:1560], y=y[1500:1560])
    out = tmp_path / "t.onnx"
    assert cli_main(["train", str(DIGITS), "--data", str(data), "--val", str(val), "--epochs",
                     "1", "--no-progress", "--freeze", "features.*", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"200 samples, 60 held out ({val})" in text
    assert "3 frozen BatchNorm layers in eval mode" in text and "held-out accuracy" in text
    before, after = _inits(DIGITS), _inits(out)
    changed = sorted(n for n in before if not np.array_equal(before[n], after[n]))
    assert changed and all(n.startswith("classifier.") for n in changed), changed


def test_cli_progress_bar_shows_accuracy(digits, tmp_path, capsys):
    pytest.importorskip("tqdm")
    data = tmp_path / "d.npz"
    np.savez(data, x=digits[0][:128], y=digits[1][:128])
    assert cli_main(["train", str(DIGITS), "--data", str(data), "--epochs", "1", "--batch-size",
                     "32", "-o", str(tmp_path / "t.onnx")]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "acc=" in err and "loss=" in err, err


@pytest.mark.parametrize("case", ["freeze_nothing", "val_shape", "val_targets", "val_dtype",
                                  "val_empty", "val_missing_y", "val_labels"])
def test_cli_bad_freeze_and_val_one_line(digits, tmp_path, capsys, case):
    x, y = digits[0][:100], digits[1][:100]
    data, val = tmp_path / "d.npz", tmp_path / "v.npz"
    np.savez(data, x=x, y=y)
    extra = ["--val", str(val)]
    vx, vy = x[:20], y[:20]
    want = {"freeze_nothing": "freeze pattern 'head.*' matches no trainable initializer",
            "val_shape": f"{val}: x has samples of shape [1, 8, 9], the training data {data} "
                         "has [1, 8, 8]",
            "val_targets": f"{val}: y has targets of shape [10], the training data",
            "val_dtype": f"{val}: y is float32, the training data {data} has int64 targets",
            "val_empty": f"{val}: the held-out set has no samples",
            "val_missing_y": f"{val}: needs arrays 'x' and 'y', has ['x']",
            "val_labels": "label 12 out of range for the model's 10 classes"}[case]
    if case == "freeze_nothing":
        extra = ["--freeze", "features.*", "--freeze", "head.*"]
    elif case == "val_shape":
        vx = np.zeros((20, 1, 8, 9), np.float32)
    elif case == "val_targets":
        vy = np.eye(10, dtype=np.int64)[vy]
    elif case == "val_dtype":
        vy = vy.astype(np.float32)
    elif case == "val_empty":
        vx, vy = vx[:0], vy[:0]
    elif case == "val_labels":
        vy = vy.copy()
        vy[3] = 12
    if case == "val_missing_y":
        np.savez(val, x=vx)
    else:
        np.savez(val, x=vx, y=vy)
    out = tmp_path / "t.onnx"
    rc = cli_main(["train", str(DIGITS), "--data", str(data), "--epochs", "1", "--no-progress",
                   "-o", str(out)] + extra)
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("convrt: error: ") and want in err, err
    assert not out.exists()


def test_cli_val_and_val_split_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", str(DIGITS), "--data", "digits", "--val", "v.npz", "--val-split",
                  "0.1", "-o", str(tmp_path / "t.onnx")])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
