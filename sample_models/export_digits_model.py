"""Export ``digits_vgg.onnx``, an untrained VGG-style model for the 8x8 digits
data set (scikit-learn ``load_digits``), used by the training demos.
Run by hand; needs torch:

    python sample_models/export_digits_model.py

Model: input (N, 1, 8, 8) float32 "input" -> conv3x3(1->16, pad 1)-BN-ReLU,
conv3x3(16->16, pad 1)-BN-ReLU, MaxPool2 (4x4), conv3x3(16->32, pad 1)-BN-ReLU,
MaxPool2 (2x2), Flatten, Linear(128->64)-ReLU-Dropout(0.25), Linear(64->10)
-> "logits" (N, 10).

Weights are torch's default random init after torch.manual_seed(0); BN has its
default fresh state (running mean 0, var 1, weight 1, bias 0) because the
model is meant to be trained.  Exported in eval mode with the TorchScript
exporter at opset 13 without constant folding (BatchNormalization nodes kept),
with ``OnnxDropout`` so the Dropout node stays in the graph.
"""

from __future__ import annotations

import onnx
import torch
from torch import nn

from _torch_common import HERE, OnnxDropout, check_against_torch, export, op_counts


class DigitsVGG(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(32 * 2 * 2, 64), nn.ReLU(inplace=True), OnnxDropout(0.25),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def main() -> None:
    torch.manual_seed(0)
    model = DigitsVGG().eval()
    path = HERE / "digits_vgg.onnx"
    m = export(model, torch.zeros(1, 1, 8, 8), path, opset=13)
    onnx.checker.check_model(m, full_check=True)
    counts = op_counts(m)
    print(f"wrote {path} ({path.stat().st_size} bytes), opset {m.opset_import[0].version}, "
          f"IR {m.ir_version}")
    print(f"  nodes per op: {counts} (total {sum(counts.values())})")
    assert counts.get("BatchNormalization") == 3, counts
    assert counts.get("Dropout") == 1, counts
    check_against_torch(model, path, batches=(1, 4), atol=1e-5, image=(1, 8, 8))


if __name__ == "__main__":
    main()
