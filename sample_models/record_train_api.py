"""Record torch's learning-rate schedules and param-group training for
``tests/test_train_api.py`` (run by hand; torch 2.13 CPU; tests never import torch):

    python sample_models/record_train_api.py

Writes two small fixtures next to this script:

* ``train_api_schedules.json``: for each case, a scheduler ``spec`` (torch's class names and
  arguments; ``SequentialLR`` nests specs) and ``lrs``, the learning rates of two param groups
  (initial lr 0.1 and 0.02) at epoch 0 (right after construction) and after each
  ``scheduler.step()`` (``get_last_lr()``), from ``torch.optim.lr_scheduler``;
* ``train_api_groups.npz``: three steps of torch.optim with param groups on
  ``finetune_head.onnx``'s weights (the module of ``export_finetune_head.py``, cross-entropy on
  the recorded batch) with BatchNorm in eval mode: in train mode a conv bias before BatchNorm
  has a gradient of exactly zero, whose float rounding noise Adam would scale up to full
  ``lr``-sized steps, different in every implementation.  It holds ``<case>.losses`` and
  ``<case>.<name>`` for every ``state_dict`` entry after the steps.  The groups follow convrt's rule (the first group whose
  selector matches takes a parameter; the rest form a last group with the optimizer's own
  options); the cases are in ``GROUP_CASES`` below, mirrored by the test.
"""

from __future__ import annotations

import fnmatch
import json
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from _torch_common import HERE
from record_finetune_literals import finetune_head_module

SCHEDULES = {
    "step": ({"kind": "StepLR", "step_size": 3, "gamma": 0.5}, 12),
    "multistep": ({"kind": "MultiStepLR", "milestones": [2, 5, 9], "gamma": 0.3}, 12),
    "exponential": ({"kind": "ExponentialLR", "gamma": 0.8}, 10),
    "cosine": ({"kind": "CosineAnnealingLR", "T_max": 10, "eta_min": 0.001}, 25),
    "linear_warmup": ({"kind": "LinearLR", "start_factor": 0.1, "total_iters": 4}, 8),
    "linear_decay": ({"kind": "LinearLR", "start_factor": 1.0, "end_factor": 0.2,
                      "total_iters": 5}, 8),
    "warmup_cosine": ({"kind": "SequentialLR", "milestones": [3], "schedulers": [
        {"kind": "LinearLR", "start_factor": 0.1, "total_iters": 3},
        {"kind": "CosineAnnealingLR", "T_max": 7}]}, 12),
    "three_phases": ({"kind": "SequentialLR", "milestones": [2, 6], "schedulers": [
        {"kind": "LinearLR", "start_factor": 0.5, "total_iters": 2},
        {"kind": "StepLR", "step_size": 2, "gamma": 0.5},
        {"kind": "ExponentialLR", "gamma": 0.9}]}, 12),
}

# (optimizer, its options, groups: (selector, options) with selector a glob or "ndim<=1",
#  names frozen, StepLR gamma stepped after every optimizer step or None)
GROUP_CASES = {
    "sgd": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
            [("fc.*", {"lr": 0.05}), ("ndim<=1", {"weight_decay": 0.0})], None, 0.5),
    "adam": ("Adam", {"lr": 0.01, "weight_decay": 0.01},
             [("features.0.*", {"lr": 0.002, "betas": (0.8, 0.99)}),
              ("ndim<=1", {"weight_decay": 0.0})], None, None),
    "adamw": ("AdamW", {"lr": 0.01, "weight_decay": 0.1},
              [("fc.weight", {"weight_decay": 0.5}),
               ("ndim<=1", {"weight_decay": 0.0, "lr": 0.02})], None, None),
    "sgd_freeze": ("SGD", {"lr": 0.1, "momentum": 0.9},
                   [("fc.*", {"lr": 0.05})], "features.0.*", None),
}


def torch_scheduler(opt, spec):
    kw = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "SequentialLR":
        kw["schedulers"] = [torch_scheduler(opt, s) for s in spec["schedulers"]]
    return getattr(torch.optim.lr_scheduler, spec["kind"])(opt, **kw)


def record_schedules():
    out = {}
    for name, (spec, epochs) in SCHEDULES.items():
        params = [torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)]
        opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.1},
                               {"params": [params[1]], "lr": 0.02}], lr=0.1)
        with warnings.catch_warnings():  # SequentialLR's step(0) is deprecated API inside torch
            warnings.simplefilter("ignore")
            sched = torch_scheduler(opt, spec)
            lrs = [sched.get_last_lr()]
            for _ in range(epochs):
                opt.step()
                sched.step()
                lrs.append(sched.get_last_lr())
        out[name] = {"spec": spec, "lrs": lrs}
        print(f"{name}: {[round(a, 6) for a, _ in lrs]}")
    return out


def _matches(selector, name, p):
    return p.ndim <= 1 if selector == "ndim<=1" else fnmatch.fnmatchcase(name, selector)


def record_groups():
    arrays = {}
    for case, (kind, opts, groups, freeze, gamma) in GROUP_CASES.items():
        model, x, y = finetune_head_module()
        model.eval()  # BatchNorm with its running statistics (see the docstring)
        named = [(n, p) for n, p in model.named_parameters()
                 if not (freeze and fnmatch.fnmatchcase(n, freeze))]
        for n, p in model.named_parameters():
            p.requires_grad_(any(n == m for m, _ in named))
        taken, torch_groups = set(), []
        for selector, extra in groups:
            mine = [p for n, p in named if n not in taken and _matches(selector, n, p)]
            taken.update(n for n, p in named if _matches(selector, n, p))
            torch_groups.append({"params": mine, **extra})
        rest = [p for n, p in named if n not in taken]
        if rest:
            torch_groups.append({"params": rest})
        opt = getattr(torch.optim, kind)(torch_groups, **opts)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma) if gamma else None
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
        arrays[f"{case}.losses"] = np.array(losses)
        for k, v in model.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                arrays[f"{case}.{k}"] = v.detach().numpy().copy()
        print(f"{case}: groups of {[len(g['params']) for g in torch_groups]}, losses {losses}")
    return arrays


def main() -> None:
    path = HERE / "train_api_schedules.json"
    path.write_text(json.dumps(record_schedules(), indent=1) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    npz = HERE / "train_api_groups.npz"
    np.savez(npz, **record_groups())
    print(f"wrote {npz} ({npz.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
