"""Record PyTorch's head-only fine-tuning of torchvision's ResNet-18, for issue #23's oracle
(run by hand, in the venv of ``record_torch_families.py``).

    YOLO_OFFLINE=1 /work/tvvenv/bin/python sample_models/record_resnet18_head.py

The model is the one ``tests/data/torch_families/resnet18.npz`` holds (torchvision
``resnet18(weights=None)`` with every tensor set to ``family_fixtures.weight(name, shape)``,
exported at batch 2, 64x64), fine-tuned the way a PyTorch user freezes a backbone: every
parameter but ``fc.*`` has ``requires_grad_(False)`` and the model is in eval mode (BN uses its
running statistics and never updates them), ``torch.optim.SGD(fc params, lr=1e-4,
momentum=0.9, weight_decay=1e-4)``, mean cross-entropy, three steps on seeded batches.  Writes
``tests/data/resnet18_head.npz``: the three losses, and ``fc.weight`` / ``fc.bias`` after the
steps (256 sampled weight values with their flat indices, the whole bias, max |w| and RMS).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from family_fixtures import input_tensor  # noqa: E402
from record_torch_families import M, _set_weights  # noqa: E402

OUT = HERE.parent / "tests" / "data" / "resnet18_head.npz"
STEPS, BATCH, IMAGE, CLASSES = 3, 2, 64, 1000
LR, MOMENTUM, WEIGHT_DECAY = 1e-4, 0.9, 1e-4
SAMPLES = 256


def batches():
    """The seeded (input, labels) of each step; the test regenerates the same."""
    out = []
    for k in range(STEPS):
        x = input_tensor(f"resnet18_head/step{k}", (BATCH, 3, IMAGE, IMAGE))
        y = np.random.default_rng(100 + k).integers(0, CLASSES, BATCH)
        out.append((x, y))
    return out


def main() -> None:
    torch.manual_seed(0)
    model = M.resnet18(weights=None)
    _set_weights(model)
    model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc."))
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR,
                          momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    losses = []
    for x, y in batches():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for k, v in model.state_dict().items():  # the frozen backbone's BN never moved
        if k in running:
            assert torch.equal(v, running[k]), k
    w = model.fc.weight.detach().numpy().reshape(-1).astype(np.float64)
    idx = np.sort(np.random.default_rng(7).choice(w.size, SAMPLES, replace=False))
    idx[0] = int(np.abs(w).argmax())
    np.savez_compressed(OUT, losses=np.array(losses), w_idx=idx, w_val=w[idx],
                        w_max=np.abs(w).max(), w_rms=np.sqrt(np.mean(w * w)),
                        bias=model.fc.bias.detach().numpy().astype(np.float64))
    print(f"wrote {OUT}: losses {losses}")


if __name__ == "__main__":
    main()
