"""Export ``small_vgg.onnx`` and its oracle ``small_vgg.npz`` (run by hand; needs torch).

    python sample_models/export_small_vgg.py

Model: conv3x3(3->32)-BN-ReLU, conv3x3(32->32)-BN-ReLU, MaxPool2,
conv3x3(32->64)-BN-ReLU, conv3x3(64->64)-BN-ReLU, MaxPool2,
conv3x3(64->128)-BN-ReLU, MaxPool2, Flatten, Linear(2048->256)-ReLU-Dropout(0.5),
Linear(256->10); input (N, 3, 32, 32) "input", output (N, 10) "logits".

Weights are seeded (torch.manual_seed(0)), He-normal so the logits are O(1);
BatchNorm running stats / affine params are random (BN is not an identity).
Exported in eval mode with the TorchScript exporter at opset 13 without
constant folding, so the BatchNormalization nodes stay in the graph; the
Dropout layer uses ``OnnxDropout`` so an (inference-mode) ``Dropout`` node is
kept too.  ``small_vgg.npz`` holds a fixed seeded input ``x`` (1, 3, 32, 32)
and torch's output ``y`` for it: an oracle independent of onnxruntime/convrt.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from _torch_common import HERE, OnnxDropout, check_against_torch, export, op_counts, randomize_bn


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallVGG(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(3, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
            *conv_bn_relu(64, 128), nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(128 * 4 * 4, 256), nn.ReLU(inplace=True), OnnxDropout(0.5),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def build() -> SmallVGG:
    torch.manual_seed(0)
    model = SmallVGG()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.normal_(0.0, 0.05)
        last = model.classifier[-1]
        nn.init.kaiming_normal_(last.weight, nonlinearity="linear")
    randomize_bn(model)
    return model.eval()


def main() -> None:
    model = build()
    onnx_path = HERE / "small_vgg.onnx"
    npz_path = HERE / "small_vgg.npz"

    m = export(model, torch.zeros(1, 3, 32, 32), onnx_path, opset=13)
    onnx.checker.check_model(m, full_check=True)
    counts = op_counts(m)
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes), opset "
          f"{m.opset_import[0].version}, IR {m.ir_version}")
    print(f"  nodes per op: {counts} (total {sum(counts.values())})")
    assert counts.get("BatchNormalization") == 5, counts
    assert counts.get("Dropout") == 1, counts
    assert onnx_path.stat().st_size < 5 * 2**20

    check_against_torch(model, onnx_path, batches=(1, 4), atol=1e-5)

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        y = model(x)
    np.savez(npz_path, x=x.numpy().astype(np.float32), y=y.numpy().astype(np.float32))
    print(f"wrote {npz_path}: x {tuple(x.shape)}, y {tuple(y.shape)} = {np.round(y.numpy(), 4).tolist()}")


if __name__ == "__main__":
    main()
