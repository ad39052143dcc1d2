"""Export ``finetune_head.onnx``, a small "pretrained" BatchNorm CNN, and record PyTorch
fine-tuning its head in ``finetune_head.npz`` (the oracle of ``tests/test_train_finetune.py``).
Run by hand; needs torch:

    python sample_models/export_finetune_head.py

Model: input (8, 3, 16, 16) float32 "input" -> conv3x3(3->8, pad 1)-BN-ReLU-MaxPool2,
conv3x3(8->16, pad 1)-BN-ReLU, GlobalAveragePool, Flatten, Linear(16->5) "fc" -> "logits".
The BatchNorms get non-trivial running statistics and affine parameters (``randomize_bn``), as a
pretrained backbone has, so eval-mode and train-mode BatchNorm give clearly different losses.

Why: head-only fine-tuning the way a PyTorch user does it freezes the backbone *and* puts it in
eval mode (stored statistics, never updated).  The npz holds ``inputs``, ``labels`` and two runs
of ``SGD(lr=0.1, momentum=0.9)`` over three steps on that batch, training only ``fc``:

* ``eval_losses`` / ``eval.<name>``: backbone in eval mode (what ``batchnorm="auto"`` must do);
* ``train_losses`` / ``train.<name>``: backbone in train mode (``batchnorm="train"``: batch
  statistics, running statistics updated with momentum 0.1).

``<name>`` is every ``state_dict`` entry after the three steps (PyTorch's names, which the
export keeps).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from torch import nn

from _torch_common import HERE, check_against_torch, op_counts, randomize_bn

LR, MOMENTUM, STEPS = 0.1, 0.9, 3


class Backboned(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.features(x)))


def finetune(model, x, y, backbone_train: bool):
    model = copy.deepcopy(model)
    for p in model.features.parameters():
        p.requires_grad_(False)
    model.eval()
    model.features.train(backbone_train)
    opt = torch.optim.SGD(model.fc.parameters(), lr=LR, momentum=MOMENTUM)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    return np.array(losses, np.float64), state


def main() -> None:
    torch.manual_seed(0)
    model = Backboned()
    randomize_bn(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(8, 3, 16, 16) * 2 + 0.5  # off the BN statistics: batch stats differ
    y = torch.randint(0, 5, (8,), dtype=torch.int64)

    path = HERE / "finetune_head.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    print(f"wrote {path} ({path.stat().st_size} bytes); nodes per op: {op_counts(m)}")
    check_against_torch(model, path, batches=(8,), atol=1e-5, image=(3, 16, 16))

    arrays = {"inputs": x.numpy(), "labels": y.numpy()}
    for kind, train in (("eval", False), ("train", True)):
        losses, state = finetune(model, x, y, train)
        arrays[f"{kind}_losses"] = losses
        arrays.update({f"{kind}.{k}": v for k, v in state.items()})
        print(f"{kind}-mode backbone: losses {losses.tolist()}")
    npz = HERE / "finetune_head.npz"
    np.savez(npz, **arrays)
    print(f"wrote {npz} ({npz.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
