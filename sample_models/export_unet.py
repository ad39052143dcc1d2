"""Export ``unet_upsample*.onnx`` and their oracle ``unet_upsample.npz`` (run by hand; needs torch).

    python sample_models/export_unet.py

Model: a small U-Net-like network whose up paths use all three ``nn.Upsample`` flavours a
segmentation model exports, so that convrt's ``Resize`` is checked against PyTorch itself:

    enc1 = conv3x3(3->8)-BN-ReLU                          (H, W)
    enc2 = MaxPool2, conv3x3(8->16)-BN-ReLU               (H/2, W/2)
    mid  = MaxPool2, conv3x3(16->32)-BN-ReLU              (H/4, W/4)
    dec2 = Upsample(2, nearest) (mid), Concat enc2, conv3x3(48->16)-BN-ReLU
    dec1 = Upsample(2, bilinear, align_corners=False) (dec2), Concat enc1, conv3x3(24->8)-BN-ReLU
    side = Upsample(2, bilinear, align_corners=True) (dec2)
    out  = Concat(dec1, side), conv1x1(24->2)

The input is non-square, (N, 3, 32, 48), so an H/W mix-up in the resize shows.  Weights are
seeded (``torch.manual_seed(0)``), He-normal, BatchNorm statistics random (BN is no identity);
eval mode, TorchScript exporter (``dynamo=False``) without constant folding, dynamic batch.
The exporter writes the three upsamples as ``Resize`` with constant scales: nearest as
asymmetric/floor, bilinear as half_pixel and align_corners (torch 2.13).

Files: ``unet_upsample.onnx`` (opset 17), ``unet_upsample_opset11.onnx`` and
``unet_upsample_opset13.onnx`` (the same weights at the Resize-11 and Resize-13 schemas), and
``unet_upsample.npz``: a fixed seeded input ``x`` (1, 3, 32, 48) and torch's output ``y``, an
oracle independent of onnxruntime and convrt.  The script checks each model with
``onnx.checker`` and onnxruntime against torch (batch 1 and 2) before writing the oracle.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from _torch_common import HERE, check_against_torch, export, op_counts, randomize_bn

IMAGE = (3, 32, 48)
OPSETS = {17: "unet_upsample.onnx", 11: "unet_upsample_opset11.onnx",
          13: "unet_upsample_opset13.onnx"}


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SmallUNet(nn.Module):
    def __init__(self, classes: int = 2):
        super().__init__()
        self.enc1 = conv_bn_relu(3, 8)
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(8, 16))
        self.mid = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(16, 32))
        self.up_nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = conv_bn_relu(48, 16)
        self.up_bilinear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = conv_bn_relu(24, 8)
        self.up_corners = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.head = nn.Conv2d(24, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up_nearest(self.mid(e2)), e2], 1))
        d1 = self.dec1(torch.cat([self.up_bilinear(d2), e1], 1))
        return self.head(torch.cat([d1, self.up_corners(d2)], 1))


def build() -> SmallUNet:
    torch.manual_seed(0)
    model = SmallUNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.normal_(0.0, 0.05)
    randomize_bn(model)
    return model.eval()


def main() -> None:
    model = build()
    for opset, name in OPSETS.items():
        path = HERE / name
        m = export(model, torch.zeros(1, *IMAGE), path, opset=opset)
        onnx.checker.check_model(m, full_check=True)
        counts = op_counts(m)
        modes = sorted((a.name, a.s.decode()) for n in m.graph.node if n.op_type == "Resize"
                       for a in n.attribute if a.type == onnx.AttributeProto.STRING)
        print(f"wrote {path} ({path.stat().st_size} bytes), opset {opset}: {counts}")
        print(f"  Resize attributes: {modes}")
        assert counts.get("Resize") == 3, counts
        assert path.stat().st_size < 256 * 1024
        check_against_torch(model, path, batches=(1, 2), atol=1e-5, image=IMAGE)

    x = torch.randn(1, *IMAGE, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        y = model(x)
    npz = HERE / "unet_upsample.npz"
    np.savez(npz, x=x.numpy().astype(np.float32), y=y.numpy().astype(np.float32))
    print(f"wrote {npz}: x {tuple(x.shape)}, y {tuple(y.shape)}, max |y| "
          f"{float(y.abs().max()):.4g}")


if __name__ == "__main__":
    main()
