"""Recompute, with torch, the torch numbers written as literals in the training tests, and check
that they still match.  Run by hand (torch 2.13 CPU; tests never import torch):

    python sample_models/record_finetune_literals.py

It prints each value next to the test's literal and exits 1 if one differs beyond the
tolerance the test uses (or beyond 1e-12 relative for the float64 ones):

* ``tests/test_train_finetune.py``: ``TORCH_CE`` (``F.cross_entropy`` in float64 with class
  weights, ignore_index -100 and label smoothing on the test's seeded logits: the loss and the
  first six gradient entries) and ``test_clipping_and_smoothed_weighted_loss_match_pytorch``'s
  ``torch_losses``, ``torch_norms`` and final ``fc.bias`` (3 steps of SGD(0.1, momentum 0.9) on
  ``finetune_head.onnx``'s weights with BatchNorm in train mode, a weighted smoothed
  cross-entropy and ``clip_grad_norm_(max_norm=0.5)``);
* ``tests/test_train.py``: ``TORCH_AFTER_3`` (torch.optim in float64 after three steps with
  fixed gradients).

The inputs are rebuilt here exactly as the tests build them (numpy seeds), and the model is
``sample_models/export_finetune_head.py``'s module with the weights read back from the
committed ``finetune_head.onnx`` (so the oracle is the very file the tests train).
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from _torch_common import HERE

ROOT = HERE.parent


def finetune_head_module():
    """``Backboned`` with ``finetune_head.onnx``'s initializers, and the recorded batch."""
    from export_finetune_head import Backboned

    model = Backboned()
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
               for t in onnx.load(str(HERE / "finetune_head.onnx")).graph.initializer}
    state = model.state_dict()
    for k in state:
        if not k.endswith("num_batches_tracked"):
            state[k] = weights.pop(k)
    assert not weights, f"initializers the module lacks: {sorted(weights)}"
    model.load_state_dict(state)
    with np.load(HERE / "finetune_head.npz") as z:
        x, y = torch.from_numpy(z["inputs"]), torch.from_numpy(z["labels"])
    return model, x, y


def cross_entropy_cases():
    """The test's TORCH_CE cases, inputs rebuilt from the same seed."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 4)) * 2
    y = np.array([0, 3, -100, 2, 1, 3])
    w = np.array([0.5, 2.0, 1.0, 1.5])
    zs = rng.standard_normal((2, 3, 2, 2))
    ys = np.array([[[0, 2], [1, -100]], [[2, 2], [0, 1]]])
    cases = {
        "weight_smoothing_ignore": (z, y, dict(weight=w, label_smoothing=0.2)),
        "smoothing_only": (z, np.where(y < 0, 1, y), dict(label_smoothing=0.1)),
        "spatial_weight_ignore": (zs, ys, dict(weight=w[:3], label_smoothing=0.05)),
    }
    out = {}
    for name, (logits, labels, kw) in cases.items():
        t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
        if "weight" in kw:
            kw = dict(kw, weight=torch.tensor(kw["weight"], dtype=torch.float64))
        loss = F.cross_entropy(t, torch.tensor(labels), ignore_index=-100, **kw)
        loss.backward()
        out[name] = (loss.item(), t.grad.reshape(-1)[:6].tolist())
    return out


def clipping_run():
    """Full fine-tune, BN in train mode, weighted smoothed CE, clip_grad_norm_(0.5), 3 steps."""
    model, x, y = finetune_head_module()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5])
    losses, norms = [], []
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, weight=weight, label_smoothing=0.1)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5).item())
        opt.step()
        losses.append(loss.item())
    return losses, norms, model.fc.bias.detach().tolist()


def optimizer_runs():
    """test_train.py's TORCH_AFTER_3: three steps with fixed float64 gradients."""
    p0 = [0.5, -1.5, 2.0, 0.25]
    grads = [[0.1, -0.2, 0.3, 0.0], [-0.4, 0.5, 0.05, 1.0], [0.2, 0.2, -0.3, -0.1]]
    makers = {
        "sgd_plain": lambda p: torch.optim.SGD(p, lr=0.1),
        "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9,
                                                     weight_decay=0.01),
        "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
        "adam": lambda p: torch.optim.Adam(p, lr=0.01),
        "adam_wd": lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.9), eps=1e-6,
                                              weight_decay=0.1),
        "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    }
    out = {}
    for name, make in makers.items():
        w = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
        opt = make([w])
        for g in grads:
            w.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        out[name] = w.detach().tolist()
    return out


def _compare(label, got, want, rtol, atol=0.0) -> bool:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    ok = got.shape == want.shape and np.allclose(got, want, rtol=rtol, atol=atol)
    print(f"{'ok  ' if ok else 'DIFF'} {label}: torch {got.tolist()}")
    if not ok:
        print(f"     test literal {want.tolist()}")
    return ok


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    import test_train
    import test_train_finetune as ft

    ok = True
    for name, (loss, grad) in cross_entropy_cases().items():
        want_loss, want_grad = ft.TORCH_CE[name]
        ok &= _compare(f"TORCH_CE[{name}] loss", [loss], [want_loss], 1e-12)
        ok &= _compare(f"TORCH_CE[{name}] grad[:6]", grad, want_grad, 1e-10, 1e-15)
    losses, norms, bias = clipping_run()
    ok &= _compare("clipping torch_losses", losses, ft.CLIP_TORCH_LOSSES, 1e-5)
    ok &= _compare("clipping torch_norms", norms, ft.CLIP_TORCH_NORMS, 1e-5)
    ok &= _compare("clipping fc.bias", bias, ft.CLIP_TORCH_FC_BIAS, 0.0, 1e-6)
    for name, after in optimizer_runs().items():
        ok &= _compare(f"TORCH_AFTER_3[{name}]", after, test_train.TORCH_AFTER_3[name], 1e-12,
                       1e-14)
    print("all literals reproduced" if ok else "some literals differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
