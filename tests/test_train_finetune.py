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

from convrt.errors import InputError
from convrt.train import SGD, Trainer

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
