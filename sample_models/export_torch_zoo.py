"""Export torchvision-structured models from torch into the model cache (run by hand).

    python sample_models/export_torch_zoo.py [--models vgg16_bn resnet18 ...]
                                             [--opsets 13 17] [--out DIR]

Writes ``torch-<model>-opset<N>.onnx`` for VGG-16-BN, ResNet-18, MobileNetV2
and SqueezeNet 1.1 at opsets 13 and 17 into ``$CONVRT_MODEL_CACHE`` (default
``~/.cache/convrt/models``) -- never into the repository (VGG-16-BN is
~550 MB).  The modules are hand-written copies of torchvision's architectures
(torchvision is not used), with seeded random weights (He-normal, random BN
running stats; torch.manual_seed(0)), input (N, 3, 224, 224) "input" with a
dynamic batch dim, output "logits".  Exported with the TorchScript exporter
(``dynamo=False``) in eval mode with ``do_constant_folding=False`` so the
BatchNormalization nodes are kept.  Dropout layers are plain ``nn.Dropout``
(so, as in a normal torchvision export, they vanish from the graph).  Each
file is checked with ``onnx.checker`` and compared with torch in onnxruntime
at batch 1 and 2.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import onnx
import torch
from torch import nn

from _torch_common import HERE, check_against_torch, export, op_counts, randomize_bn

sys.path.insert(0, str(HERE))
from builders import cache_dir  # noqa: E402  (onnx/numpy only)


# ---------------------------------------------------------------------------
# VGG-16-BN (torchvision.models.vgg16_bn)
# ---------------------------------------------------------------------------

class VGG(nn.Module):
    CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
             512, 512, 512, "M", 512, 512, 512, "M"]

    def __init__(self, cfg=CFG16, batch_norm=True, num_classes=1000, dropout=0.5):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU(inplace=True))
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ---------------------------------------------------------------------------
# ResNet-18 (torchvision.models.resnet18)
# ---------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            setattr(self, f"layer{i}", nn.Sequential(
                BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes, 1)))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# ---------------------------------------------------------------------------
# MobileNetV2 (torchvision.models.mobilenet_v2)
# ---------------------------------------------------------------------------

def _make_divisible(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, k=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]

    def __init__(self, num_classes=1000, width_mult=1.0):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU6(cin, self.last_channel, k=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------
# SqueezeNet 1.1 (torchvision.models.squeezenet1_1)
# ---------------------------------------------------------------------------

class Fire(nn.Module):
    def __init__(self, inplanes, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Conv2d(512, num_classes, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


# ---------------------------------------------------------------------------

def _init(model: nn.Module) -> nn.Module:
    """He-normal weights, small random biases, random BN stats (activations O(1))."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.05)
    randomize_bn(model)
    with torch.no_grad():
        # Damp residual branches (as builders.resnet18 does) so the scale
        # does not double at every block.
        for m in model.modules():
            if isinstance(m, BasicBlock):
                m.bn2.weight.mul_(0.5)
                m.bn2.bias.mul_(0.5)
    return model.eval()


ZOO = {
    "vgg16_bn": lambda: VGG(batch_norm=True),
    "resnet18": ResNet18,
    "mobilenet_v2": MobileNetV2,
    "squeezenet1_1": SqueezeNet11,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=sorted(ZOO), default=list(ZOO))
    ap.add_argument("--opsets", nargs="+", type=int, default=[13, 17])
    ap.add_argument("--out", type=pathlib.Path, default=None, help="default: the model cache")
    ap.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    a = ap.parse_args(argv)
    out = a.out or cache_dir()
    out.mkdir(parents=True, exist_ok=True)

    for name in a.models:
        torch.manual_seed(0)
        model = _init(ZOO[name]())
        for opset in a.opsets:
            path = out / f"torch-{name}-opset{opset}.onnx"
            t0 = time.time()
            m = export(model, torch.zeros(1, 3, 224, 224), path, opset=opset)
            onnx.checker.check_model(str(path), full_check=True)
            counts = op_counts(m)
            print(f"{name} opset {opset}: wrote {path} ({path.stat().st_size / 1e6:.1f} MB, "
                  f"{time.time() - t0:.1f} s)")
            print(f"  nodes per op: {counts}")
            if name != "squeezenet1_1":
                assert counts.get("BatchNormalization", 0) > 0, "BN nodes were folded away"
            del m
            if not a.no_check:
                # atol scaled for 224x224 deep nets; logits are O(1).
                check_against_torch(model, path, batches=(1, 2), atol=1e-4, image=(3, 224, 224))
    return 0


if __name__ == "__main__":
    sys.exit(main())
