"""Export ``untrained_bn.onnx``, a fresh BatchNorm CNN straight from PyTorch's legacy exporter,
and record three PyTorch training steps of it in ``untrained_bn.npz`` (the oracle of
``tests/test_train_aliases.py``).  Run by hand; needs torch:

    python sample_models/export_untrained_bn.py

Model: input (8, 3, 16, 16) float32 "input" -> conv3x3(3->8, pad 1)-BN-ReLU-MaxPool2,
conv3x3(8->16, pad 1)-BN-ReLU-MaxPool2, Flatten, Linear(256->5) -> "logits" (8, 5).

Why untouched: unlike ``export_digits_model.py`` this script does NOT undo the exporter's
initializer de-duplication.  Exported fresh (eval mode, ``dynamo=False``, no constant folding),
the BatchNorms' weight/running_var (ones) and bias/running_mean (zeros) and the conv biases
(zero-initialized here, as many init schemes do) are equal, so the exporter keeps one tensor and
re-creates the rest as ``Identity`` outputs of it.  That is the file a user hands to
``convrt.train.Trainer``, and the trainer must untie it itself.

The npz holds ``inputs`` (8, 3, 16, 16) float32, ``labels`` (8,) int64, ``losses`` (3,) float64
(the cross-entropy before each step) and, keyed by PyTorch's ``state_dict`` names, every
parameter and BN running statistic after three steps of ``SGD(lr=0.1, momentum=0.9)`` in train
mode (BN momentum 0.1) on that one batch.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from torch import nn

from _torch_common import HERE, check_against_torch, op_counts

LR, MOMENTUM, STEPS = 0.1, 0.9, 3


class UntrainedBN(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(16 * 4 * 4, num_classes)
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def main() -> None:
    torch.manual_seed(0)
    model = UntrainedBN().eval()
    x = torch.randn(8, 3, 16, 16)
    y = torch.randint(0, 5, (8,), dtype=torch.int64)
    trained = copy.deepcopy(model)

    path = HERE / "untrained_bn.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=False,
                      opset_version=17, input_names=["input"], output_names=["logits"])
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    counts = op_counts(m)
    print(f"wrote {path} ({path.stat().st_size} bytes), opset {m.opset_import[0].version}; "
          f"nodes per op: {counts}")
    assert counts.get("Identity", 0) >= 6, "the exporter no longer aliases; the oracle is moot"
    check_against_torch(model, path, batches=(8,), atol=1e-5, image=(3, 16, 16))

    trained.train()
    opt = torch.optim.SGD(trained.parameters(), lr=LR, momentum=MOMENTUM)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(trained(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    state = {k: v.detach().numpy().copy() for k, v in trained.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    npz = HERE / "untrained_bn.npz"
    np.savez(npz, inputs=x.numpy(), labels=y.numpy(), losses=np.array(losses, np.float64),
             **state)
    print(f"wrote {npz} ({npz.stat().st_size} bytes): losses {losses}, {len(state)} tensors")


if __name__ == "__main__":
    main()
