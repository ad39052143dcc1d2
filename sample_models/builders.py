"""Deterministic ONNX builders for the convrt benchmark / test models.

Only ``onnx`` and ``numpy`` are needed (no torch).  Every builder returns an
``onnx.ModelProto`` with

* one float32 input ``"input"`` of shape ``("N", C, H, W)`` (symbolic batch),
* one float32 output ``"logits"`` of shape ``("N", num_classes)``,
* seeded random weights (He-normal, so activations stay O(1) even through
  VGG-19 / ResNet-18 and outputs are neither all zeros nor inf),
* BatchNormalization nodes with non-trivial running statistics where the
  corresponding torchvision model has BN (unless ``fold_bn=True``),
* default-domain opset ``opset`` (17 unless given; 11 is the minimum because
  ``Clip`` takes min/max as inputs from opset 11 on) and the lowest IR version
  that opset allows, so older onnxruntime builds can load the files too.

The layouts follow torchvision (``vgg*``, ``resnet18``, ``mobilenet_v2``,
``squeezenet1_1``); node and initializer names follow torchvision's
``state_dict`` names where there is one.  The weights are random, *not*
pretrained, so the logits carry no meaning -- the models are for correctness
comparisons and benchmarks only.

``cached_model(name, **kw)`` builds a model once and stores it under
``$CONVRT_MODEL_CACHE`` (default ``~/.cache/convrt/models``) -- never inside the
repository.  VGG-16 is about 530 MB.

Command line::

    python sample_models/builders.py vgg16 [--bn] [-o PATH] [--opset 17] [--image 224]
    python sample_models/builders.py resnet18 | mobilenet_v2 | squeezenet1_1 | small_vgg_32
    python sample_models/builders.py efficientnet_b0 | mobilenet_v3_large | resnet50 [--image 64]
    python sample_models/builders.py convnext_tiny [--image 64] | yolov8n [--image 320]

prints the path of the written file.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "vgg",
    "small_vgg_32",
    "resnet18",
    "mobilenet_v2",
    "squeezenet1_1",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "resnet50",
    "convnext_tiny",
    "yolov8n",
    "build",
    "cached_model",
    "cache_dir",
    "MODELS",
]

# Bump when a builder's output changes, so stale cache files are not reused.
BUILDER_VERSION = 1

_VGG_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

_BN_EPS = 1e-5


class _Graph:
    """Small helper that accumulates nodes and initializers."""

    def __init__(self, seed: int, opset: int, fold_bn: bool = False):
        if opset < 11:
            raise ValueError(f"opset must be >= 11 (got {opset})")
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.fold_bn = fold_bn
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._consts: dict[tuple, str] = {}

    # -- naming ------------------------------------------------------------
    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def init(self, name: str, arr: np.ndarray) -> str:
        name = self._unique(name)
        self.inits.append(numpy_helper.from_array(np.asarray(arr).copy(order="C"), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        key = (float(value), np.dtype(dtype).str)
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{value}", np.array(value, dtype=dtype))
        return self._consts[key]

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        name = self._unique(name)
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    # -- random parameters -------------------------------------------------
    def _he(self, shape, fan_in: int, gain: float = 2.0) -> np.ndarray:
        std = np.float32(np.sqrt(gain / fan_in))
        return self.rng.standard_normal(shape, dtype=np.float32) * std

    def _small(self, n: int, scale: float = 0.05) -> np.ndarray:
        return (self.rng.standard_normal(n, dtype=np.float32) * np.float32(scale)).astype(np.float32)

    def _bn_params(self, c: int):
        rng = self.rng
        var = rng.uniform(0.5, 2.0, c).astype(np.float32)
        # gamma / sqrt(var) stays in [0.75, 1.25]: non-trivial per channel but
        # the activation scale does not drift through deep nets.
        gamma = (np.sqrt(var + _BN_EPS) * rng.uniform(0.75, 1.25, c)).astype(np.float32)
        beta = self._small(c, 0.1)
        mean = self._small(c, 0.1)
        return gamma, beta, mean, var

    # -- layers --------------------------------------------------------------
    def conv(self, x, cin, cout, k, *, stride=1, pad=0, group=1, bias=True,
             name="conv", gain=2.0, bn=False, bn_name=None, bn_scale=1.0) -> str:
        """Conv (+ BatchNormalization, or BN folded into the conv if fold_bn).

        ``bn_scale`` multiplies the BN weight/bias (used to damp residual
        branches so the activation scale stays O(1))."""
        fan_in = (cin // group) * k * k
        w = self._he((cout, cin // group, k, k), fan_in, gain)
        b = self._small(cout) if bias else None
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        if group != 1:
            attrs["group"] = group
        if bn:
            gamma, beta, mean, var = self._bn_params(cout)
            gamma = (gamma * np.float32(bn_scale)).astype(np.float32)
            beta = (beta * np.float32(bn_scale)).astype(np.float32)
            bn_name = bn_name or f"{name}_bn"
            if self.fold_bn:
                s = gamma / np.sqrt(var + _BN_EPS)
                w = (w * s[:, None, None, None]).astype(np.float32)
                b0 = b if b is not None else np.zeros(cout, np.float32)
                b = ((b0 - mean) * s + beta).astype(np.float32)
                bn = False
        inputs = [x, self.init(f"{name}.weight", w)]
        if b is not None:
            inputs.append(self.init(f"{name}.bias", b))
        y = self.node("Conv", inputs, name, **attrs)
        if bn:
            y = self.node(
                "BatchNormalization",
                [y,
                 self.init(f"{bn_name}.weight", gamma),
                 self.init(f"{bn_name}.bias", beta),
                 self.init(f"{bn_name}.running_mean", mean),
                 self.init(f"{bn_name}.running_var", var)],
                bn_name, epsilon=_BN_EPS, momentum=0.9,
            )
        return y

    def relu(self, x, name="relu") -> str:
        return self.node("Relu", [x], name)

    def relu6(self, x, name="relu6") -> str:
        return self.node("Clip", [x, self.const(0.0), self.const(6.0)], name)

    def maxpool(self, x, k, s, pad=0, ceil=False, name="maxpool") -> str:
        attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4)
        if ceil:
            attrs["ceil_mode"] = 1
        return self.node("MaxPool", [x], name, **attrs)

    def gap(self, x, name="avgpool") -> str:
        return self.node("GlobalAveragePool", [x], name)

    def flatten(self, x, name="flatten") -> str:
        return self.node("Flatten", [x], name, axis=1)

    def add(self, a, b, name="add") -> str:
        return self.node("Add", [a, b], name)

    def dropout(self, x, ratio, name="dropout") -> str:
        # Inference-mode Dropout (no training_mode input => identity), kept in
        # the graph like a training-capable export would.
        if self.opset >= 12:
            return self.node("Dropout", [x, self.const(ratio)], name)
        return self.node("Dropout", [x], name, ratio=float(ratio))

    def gemm(self, x, fin, fout, name="fc", gain=2.0) -> str:
        w = self._he((fout, fin), fin, gain)
        b = self._small(fout)
        return self.node(
            "Gemm", [x, self.init(f"{name}.weight", w), self.init(f"{name}.bias", b)],
            name, alpha=1.0, beta=1.0, transB=1,
        )


def _rename_last_output(g: _Graph, out: str) -> None:
    """Make the last node write "logits" directly instead of adding an Identity."""
    last = g.nodes[-1]
    assert list(last.output) == [out]
    last.output[0] = "logits"


def _finish(g: _Graph, name, in_ch, image, out, num_classes, doc) -> onnx.ModelProto:
    _rename_last_output(g, out)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", in_ch, image, image])
    outp = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])
    graph = helper.make_graph(g.nodes, name, [inp], [outp], g.inits)
    opsets = [helper.make_opsetid("", g.opset)]
    m = helper.make_model(
        graph, opset_imports=opsets, producer_name="convrt.sample_models.builders",
        producer_version=str(BUILDER_VERSION),
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    m.doc_string = doc
    return m


# ---------------------------------------------------------------------------
# VGG
# ---------------------------------------------------------------------------

def _vgg_features(g: _Graph, x: str, cfg, batch_norm: bool, in_ch: int = 3) -> tuple[str, int, int]:
    """torchvision ``make_layers``; returns (output, channels, number of pools)."""
    c, i, pools = in_ch, 0, 0
    for v in cfg:
        if v == "M":
            x = g.maxpool(x, 2, 2, name=f"features.{i}")
            i += 1
            pools += 1
            continue
        conv_i = i
        x = g.conv(x, c, v, 3, pad=1, bias=True, name=f"features.{conv_i}",
                   bn=batch_norm, bn_name=f"features.{conv_i + 1}")
        i += 2 if batch_norm else 1
        x = g.relu(x, name=f"features.{i}")
        i += 1
        c = v
    return x, c, pools


def vgg(depth: int = 16, batch_norm: bool = False, num_classes: int = 1000, image: int = 224,
        opset: int = 17, seed: int = 0, hidden: int = 4096, dropout: bool = True,
        fold_bn: bool = False) -> onnx.ModelProto:
    """torchvision VGG-``depth`` (11, 13, 16, 19), optionally with BatchNorm.

    ``features`` -> Flatten -> Gemm-Relu-Dropout -> Gemm-Relu-Dropout -> Gemm.
    torchvision's ``AdaptiveAvgPool2d((7, 7))`` is an identity at 224x224, and
    the exported graph has no pooling op there; this builder always omits it,
    so at other image sizes the first Gemm takes ``512 * (image // 32) ** 2``
    features.  ``hidden`` (4096 in torchvision) can be lowered to keep test
    models small; ``dropout=False`` leaves the Dropout nodes out (as a default
    eval-mode torch export does).
    """
    if depth not in _VGG_CFGS:
        raise ValueError(f"depth must be one of {sorted(_VGG_CFGS)}")
    if image % 32:
        raise ValueError("image must be a multiple of 32")
    g = _Graph(seed, opset, fold_bn)
    x, c, pools = _vgg_features(g, "input", _VGG_CFGS[depth], batch_norm)
    s = image >> pools
    x = g.flatten(x, name="flatten")
    x = g.gemm(x, c * s * s, hidden, name="classifier.0")
    x = g.relu(x, name="classifier.1")
    if dropout:
        x = g.dropout(x, 0.5, name="classifier.2")
    x = g.gemm(x, hidden, hidden, name="classifier.3")
    x = g.relu(x, name="classifier.4")
    if dropout:
        x = g.dropout(x, 0.5, name="classifier.5")
    x = g.gemm(x, hidden, num_classes, name="classifier.6", gain=1.0)
    name = f"vgg{depth}{'_bn' if batch_norm else ''}"
    return _finish(g, name, 3, image, x, num_classes,
                   f"{name} (torchvision layout, random seeded weights, seed={seed})")


def small_vgg_32(batch_norm: bool = False, num_classes: int = 10, opset: int = 17, seed: int = 0,
                 fold_bn: bool = False) -> onnx.ModelProto:
    """The "small VGG (32x32)" benchmark model.

    conv 64-64-M-128-128-M-256-256-M (3x3, pad 1, each followed by [BN] ReLU),
    Flatten, Gemm(4096 -> num_classes).
    """
    g = _Graph(seed, opset, fold_bn)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, "M"]
    x, c, pools = _vgg_features(g, "input", cfg, batch_norm)
    s = 32 >> pools
    x = g.flatten(x, name="flatten")
    x = g.gemm(x, c * s * s, num_classes, name="classifier", gain=1.0)
    name = f"small_vgg_32{'_bn' if batch_norm else ''}"
    return _finish(g, name, 3, 32, x, num_classes,
                   f"{name} (random seeded weights, seed={seed})")


# ---------------------------------------------------------------------------
# ResNet-18
# ---------------------------------------------------------------------------

def resnet18(num_classes: int = 1000, image: int = 224, opset: int = 17, seed: int = 0,
             fold_bn: bool = False) -> onnx.ModelProto:
    """torchvision ResNet-18: Conv-BN-Relu stem, MaxPool, 4x2 BasicBlocks with
    residual Add, GlobalAveragePool, Flatten, Gemm.  Convs have no bias (as in
    torchvision) unless ``fold_bn=True`` folds each BN into its conv."""
    g = _Graph(seed, opset, fold_bn)
    x = g.conv("input", 3, 64, 7, stride=2, pad=3, bias=False, name="conv1", bn=True, bn_name="bn1")
    x = g.relu(x, name="relu")
    x = g.maxpool(x, 3, 2, pad=1, name="maxpool")
    cin = 64
    for li, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for bi in range(2):
            s = stride if bi == 0 else 1
            p = f"layer{li}.{bi}"
            identity = x
            y = g.conv(x, cin, cout, 3, stride=s, pad=1, bias=False, name=f"{p}.conv1",
                       bn=True, bn_name=f"{p}.bn1")
            y = g.relu(y, name=f"{p}.relu")
            # The residual branch's last BN is damped (bn_scale) so the
            # activation scale does not double at every block.
            y = g.conv(y, cout, cout, 3, pad=1, bias=False, name=f"{p}.conv2",
                       bn=True, bn_name=f"{p}.bn2", bn_scale=0.5)
            if s != 1 or cin != cout:
                identity = g.conv(x, cin, cout, 1, stride=s, bias=False,
                                  name=f"{p}.downsample.0", bn=True, bn_name=f"{p}.downsample.1")
            y = g.add(y, identity, name=f"{p}.add")
            x = g.relu(y, name=f"{p}.relu_1")
            cin = cout
    x = g.gap(x, name="avgpool")
    x = g.flatten(x, name="flatten")
    x = g.gemm(x, 512, num_classes, name="fc", gain=1.0)
    return _finish(g, "resnet18", 3, image, x, num_classes,
                   f"resnet18 (torchvision layout, random seeded weights, seed={seed})")


# ---------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------

def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mobilenet_v2(num_classes: int = 1000, image: int = 224, opset: int = 17, seed: int = 0,
                 width_mult: float = 1.0, fold_bn: bool = False,
                 dropout: bool = True) -> onnx.ModelProto:
    """torchvision MobileNetV2: inverted residual blocks (1x1 expand, 3x3
    depthwise with group=C, 1x1 linear projection), BN after every conv,
    ReLU6 as Clip(x, 0, 6) with min/max inputs, residual Adds,
    GlobalAveragePool, Flatten, Dropout(0.2), Gemm."""
    settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    g = _Graph(seed, opset, fold_bn)
    cin = _make_divisible(32 * width_mult)
    last = _make_divisible(1280 * max(1.0, width_mult))
    x = g.conv("input", 3, cin, 3, stride=2, pad=1, bias=False, name="features.0.0",
               bn=True, bn_name="features.0.1")
    x = g.relu6(x, name="features.0.2")
    fi = 1
    for t, c, n, s in settings:
        cout = _make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = int(round(cin * t))
            p = f"features.{fi}.conv"
            y, li = x, 0
            if t != 1:
                y = g.conv(y, cin, hidden, 1, bias=False, name=f"{p}.{li}.0",
                           bn=True, bn_name=f"{p}.{li}.1")
                y = g.relu6(y, name=f"{p}.{li}.2")
                li += 1
            y = g.conv(y, hidden, hidden, 3, stride=stride, pad=1, group=hidden, bias=False,
                       name=f"{p}.{li}.0", bn=True, bn_name=f"{p}.{li}.1")
            y = g.relu6(y, name=f"{p}.{li}.2")
            li += 1
            y = g.conv(y, hidden, cout, 1, bias=False, name=f"{p}.{li}",
                       bn=True, bn_name=f"{p}.{li + 1}")
            if stride == 1 and cin == cout:
                y = g.add(x, y, name=f"features.{fi}.add")
            x = y
            cin = cout
            fi += 1
    x = g.conv(x, cin, last, 1, bias=False, name=f"features.{fi}.0",
               bn=True, bn_name=f"features.{fi}.1")
    x = g.relu6(x, name=f"features.{fi}.2")
    x = g.gap(x, name="avgpool")
    x = g.flatten(x, name="flatten")
    if dropout:
        x = g.dropout(x, 0.2, name="classifier.0")
    x = g.gemm(x, last, num_classes, name="classifier.1", gain=1.0)
    return _finish(g, "mobilenet_v2", 3, image, x, num_classes,
                   f"mobilenet_v2 (torchvision layout, random seeded weights, seed={seed})")


# ---------------------------------------------------------------------------
# SqueezeNet 1.1
# ---------------------------------------------------------------------------

def squeezenet1_1(num_classes: int = 1000, image: int = 224, opset: int = 17, seed: int = 0,
                  dropout: bool = True) -> onnx.ModelProto:
    """torchvision SqueezeNet 1.1: Conv(3x3/2)-Relu, MaxPool(3, 2, ceil_mode),
    Fire modules (squeeze 1x1 -> expand 1x1 || expand 3x3 -> Concat), final
    1x1 conv + Relu + GlobalAveragePool + Flatten."""
    g = _Graph(seed, opset)

    def fire(x, idx, cin, sq, e1, e3):
        p = f"features.{idx}"
        s = g.relu(g.conv(x, cin, sq, 1, name=f"{p}.squeeze"), name=f"{p}.squeeze_activation")
        a = g.relu(g.conv(s, sq, e1, 1, name=f"{p}.expand1x1"), name=f"{p}.expand1x1_activation")
        b = g.relu(g.conv(s, sq, e3, 3, pad=1, name=f"{p}.expand3x3"),
                   name=f"{p}.expand3x3_activation")
        return g.node("Concat", [a, b], f"{p}.concat", axis=1)

    x = g.conv("input", 3, 64, 3, stride=2, name="features.0")
    x = g.relu(x, name="features.1")
    x = g.maxpool(x, 3, 2, ceil=True, name="features.2")
    x = fire(x, 3, 64, 16, 64, 64)
    x = fire(x, 4, 128, 16, 64, 64)
    x = g.maxpool(x, 3, 2, ceil=True, name="features.5")
    x = fire(x, 6, 128, 32, 128, 128)
    x = fire(x, 7, 256, 32, 128, 128)
    x = g.maxpool(x, 3, 2, ceil=True, name="features.8")
    x = fire(x, 9, 256, 48, 192, 192)
    x = fire(x, 10, 384, 48, 192, 192)
    x = fire(x, 11, 384, 64, 256, 256)
    x = fire(x, 12, 512, 64, 256, 256)
    if dropout:
        x = g.dropout(x, 0.5, name="classifier.0")
    x = g.conv(x, 512, num_classes, 1, name="classifier.1")
    x = g.relu(x, name="classifier.2")
    x = g.gap(x, name="classifier.3")
    x = g.flatten(x, name="flatten")
    return _finish(g, "squeezenet1_1", 3, image, x, num_classes,
                   f"squeezenet1_1 (torchvision layout, random seeded weights, seed={seed})")


# ---------------------------------------------------------------------------
# Modern families (issue #21): EfficientNet-B0, MobileNetV3-Large, ResNet-50
# ---------------------------------------------------------------------------
# These default to ``fold_bn=True``: the legacy torch.onnx exporter in eval mode folds every
# BatchNormalization into the Conv before it (the files people actually run have Conv with bias,
# no BN); ``fold_bn=False`` keeps BN nodes for the fold_batchnorm pass.  Activations are exported
# as the legacy exporter writes them at opset 17: SiLU as Mul(x, Sigmoid(x)), Hardswish as
# HardSwish (opset >= 14), Hardsigmoid as HardSigmoid(alpha=1/6), the SE gate as
# Mul(scale, input) (torchvision's ``scale * input``).


def _silu(g: _Graph, x: str, name: str) -> str:
    return g.node("Mul", [x, g.node("Sigmoid", [x], f"{name}.sigmoid")], f"{name}.mul")


def _act(g: _Graph, x: str, act: str, name: str) -> str:
    if act == "silu":
        return _silu(g, x, name)
    if act == "hardswish":
        if g.opset < 14:
            raise ValueError("HardSwish needs opset >= 14")
        return g.node("HardSwish", [x], name)
    if act == "hardsigmoid":
        return g.node("HardSigmoid", [x], name, alpha=1.0 / 6.0, beta=0.5)
    if act == "sigmoid":
        return g.node("Sigmoid", [x], name)
    return g.relu(x, name=name)


def _squeeze_excitation(g: _Graph, x: str, c: int, sq: int, act: str, gate: str, p: str) -> str:
    """torchvision SqueezeExcitation: GAP -> 1x1 conv (bias) -> act -> 1x1 conv -> gate -> Mul.

    fc2's gain is small so the gate's input stays near 0 and the gate near its midpoint: random
    weights would otherwise saturate it and zero whole channels."""
    s = g.gap(x, name=f"{p}.avgpool")
    s = g.conv(s, c, sq, 1, bias=True, name=f"{p}.fc1")
    s = _act(g, s, act, f"{p}.activation")
    s = g.conv(s, sq, c, 1, bias=True, name=f"{p}.fc2", gain=0.5)
    s = _act(g, s, gate, f"{p}.scale_activation")
    return g.node("Mul", [s, x], f"{p}.mul")


_EFFNET_B0 = [  # expand ratio, kernel, stride, in, out, layers (torchvision _efficientnet_conf)
    (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


def efficientnet_b0(num_classes: int = 1000, image: int = 224, opset: int = 17, seed: int = 0,
                    fold_bn: bool = True, dropout: bool = True) -> onnx.ModelProto:
    """torchvision EfficientNet-B0: Conv-BN-SiLU stem, 16 MBConv blocks (1x1 expand, kxk
    depthwise, squeeze-and-excitation with SiLU and a Sigmoid gate, 1x1 linear projection,
    residual Add where shape allows; stochastic depth is the identity in eval), 1x1 head conv to
    1280 + SiLU, GlobalAveragePool, Flatten, Dropout(0.2), Gemm."""
    g = _Graph(seed, opset, fold_bn)
    x = g.conv("input", 3, 32, 3, stride=2, pad=1, bias=False, name="features.0.0",
               bn=True, bn_name="features.0.1")
    x = _silu(g, x, "features.0.2")
    for si, (t, k, s, cin0, cout, n) in enumerate(_EFFNET_B0, start=1):
        for bi in range(n):
            cin, stride = (cin0, s) if bi == 0 else (cout, 1)
            p = f"features.{si}.{bi}.block"
            hidden = cin * t
            y, li = x, 0
            if t != 1:
                y = g.conv(y, cin, hidden, 1, bias=False, name=f"{p}.{li}.0",
                           bn=True, bn_name=f"{p}.{li}.1")
                y = _silu(g, y, f"{p}.{li}.2")
                li += 1
            y = g.conv(y, hidden, hidden, k, stride=stride, pad=(k - 1) // 2, group=hidden,
                       bias=False, name=f"{p}.{li}.0", bn=True, bn_name=f"{p}.{li}.1")
            y = _silu(g, y, f"{p}.{li}.2")
            li += 1
            y = _squeeze_excitation(g, y, hidden, max(1, cin // 4), "silu", "sigmoid",
                                    f"{p}.{li}")
            li += 1
            res = stride == 1 and cin == cout
            y = g.conv(y, hidden, cout, 1, bias=False, name=f"{p}.{li}.0", bn=True,
                       bn_name=f"{p}.{li}.1", gain=1.0, bn_scale=0.5 if res else 1.0)
            if res:
                y = g.add(y, x, name=f"features.{si}.{bi}.add")
            x = y
    x = g.conv(x, 320, 1280, 1, bias=False, name="features.8.0", bn=True, bn_name="features.8.1")
    x = _silu(g, x, "features.8.2")
    x = g.gap(x, name="avgpool")
    x = g.flatten(x, name="flatten")
    if dropout:
        x = g.dropout(x, 0.2, name="classifier.0")
    x = g.gemm(x, 1280, num_classes, name="classifier.1", gain=1.0)
    return _finish(g, "efficientnet_b0", 3, image, x, num_classes,
                   f"efficientnet_b0 (torchvision layout, random seeded weights, seed={seed})")


_MNV3_LARGE = [  # in, kernel, expanded, out, SE, activation, stride (torchvision)
    (16, 3, 16, 16, False, "relu", 1), (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1), (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1), (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2), (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1), (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1), (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2), (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1)]


def mobilenet_v3_large(num_classes: int = 1000, image: int = 224, opset: int = 17, seed: int = 0,
                       fold_bn: bool = True, dropout: bool = True) -> onnx.ModelProto:
    """torchvision MobileNetV3-Large: Conv-BN-HardSwish stem, 15 inverted residual blocks
    (ReLU or HardSwish; squeeze-and-excitation with ReLU and a HardSigmoid gate), 1x1 conv to
    960 + HardSwish, GlobalAveragePool, Flatten, Gemm(1280) + HardSwish, Dropout(0.2), Gemm.
    Needs opset >= 14 (HardSwish)."""
    g = _Graph(seed, opset, fold_bn)
    x = g.conv("input", 3, 16, 3, stride=2, pad=1, bias=False, name="features.0.0",
               bn=True, bn_name="features.0.1")
    x = _act(g, x, "hardswish", "features.0.2")
    for fi, (cin, k, hidden, cout, se, act, stride) in enumerate(_MNV3_LARGE, start=1):
        p = f"features.{fi}.block"
        y, li = x, 0
        if hidden != cin:
            y = g.conv(y, cin, hidden, 1, bias=False, name=f"{p}.{li}.0",
                       bn=True, bn_name=f"{p}.{li}.1")
            y = _act(g, y, act, f"{p}.{li}.2")
            li += 1
        y = g.conv(y, hidden, hidden, k, stride=stride, pad=(k - 1) // 2, group=hidden,
                   bias=False, name=f"{p}.{li}.0", bn=True, bn_name=f"{p}.{li}.1")
        y = _act(g, y, act, f"{p}.{li}.2")
        li += 1
        if se:
            y = _squeeze_excitation(g, y, hidden, _make_divisible(hidden // 4, 8), "relu",
                                    "hardsigmoid", f"{p}.{li}")
            li += 1
        res = stride == 1 and cin == cout
        y = g.conv(y, hidden, cout, 1, bias=False, name=f"{p}.{li}.0", bn=True,
                   bn_name=f"{p}.{li}.1", gain=1.0, bn_scale=0.5 if res else 1.0)
        if res:
            y = g.add(y, x, name=f"features.{fi}.add")
        x = y
    x = g.conv(x, 160, 960, 1, bias=False, name="features.16.0", bn=True, bn_name="features.16.1")
    x = _act(g, x, "hardswish", "features.16.2")
    x = g.gap(x, name="avgpool")
    x = g.flatten(x, name="flatten")
    x = g.gemm(x, 960, 1280, name="classifier.0")
    x = _act(g, x, "hardswish", "classifier.1")
    if dropout:
        x = g.dropout(x, 0.2, name="classifier.2")
    x = g.gemm(x, 1280, num_classes, name="classifier.3", gain=1.0)
    return _finish(g, "mobilenet_v3_large", 3, image, x, num_classes,
                   f"mobilenet_v3_large (torchvision layout, random seeded weights, seed={seed})")


def resnet50(num_classes: int = 1000, image: int = 224, opset: int = 17, seed: int = 0,
             fold_bn: bool = True) -> onnx.ModelProto:
    """torchvision ResNet-50 (v1.5: the stride on the 3x3 conv): stem as ResNet-18, then
    [3, 4, 6, 3] bottlenecks (1x1 reduce, 3x3, 1x1 expand x4, BN each, residual Add + Relu;
    a 1x1 strided downsample on each stage's first block), GlobalAveragePool, Flatten, Gemm."""
    g = _Graph(seed, opset, fold_bn)
    x = g.conv("input", 3, 64, 7, stride=2, pad=3, bias=False, name="conv1", bn=True, bn_name="bn1")
    x = g.relu(x, name="relu")
    x = g.maxpool(x, 3, 2, pad=1, name="maxpool")
    cin = 64
    for li, (width, n, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)],
                                            start=1):
        cout = width * 4
        for bi in range(n):
            s = stride if bi == 0 else 1
            p = f"layer{li}.{bi}"
            identity = x
            y = g.conv(x, cin, width, 1, bias=False, name=f"{p}.conv1", bn=True,
                       bn_name=f"{p}.bn1")
            y = g.relu(y, name=f"{p}.relu")
            y = g.conv(y, width, width, 3, stride=s, pad=1, bias=False, name=f"{p}.conv2",
                       bn=True, bn_name=f"{p}.bn2")
            y = g.relu(y, name=f"{p}.relu_1")
            y = g.conv(y, width, cout, 1, bias=False, name=f"{p}.conv3", bn=True,
                       bn_name=f"{p}.bn3", bn_scale=0.5)
            if bi == 0:
                identity = g.conv(x, cin, cout, 1, stride=s, bias=False, gain=1.0,
                                  name=f"{p}.downsample.0", bn=True, bn_name=f"{p}.downsample.1")
            y = g.add(y, identity, name=f"{p}.add")
            x = g.relu(y, name=f"{p}.relu_2")
            cin = cout
    x = g.gap(x, name="avgpool")
    x = g.flatten(x, name="flatten")
    x = g.gemm(x, 2048, num_classes, name="fc", gain=1.0)
    return _finish(g, "resnet50", 3, image, x, num_classes,
                   f"resnet50 (torchvision layout, random seeded weights, seed={seed})")


# ---------------------------------------------------------------------------
# ConvNeXt-tiny (torchvision) and YOLOv8n (ultralytics), issue #21
# ---------------------------------------------------------------------------
# As the legacy exporter writes them at opset 17: LayerNorm2d as Transpose -> LayerNormalization
# -> Transpose, nn.Linear on a 4-D tensor as MatMul + Add, nn.GELU() as Div(x, sqrt 2) -> Erf ->
# Add 1 -> Mul x -> Mul 0.5, nn.SiLU as Sigmoid + Mul, torch.chunk / split as Split (sizes as an
# input from opset 13), nn.Upsample(scale_factor=2) as Resize(nearest, asymmetric, floor).

_CONVNEXT_TINY = [(96, 192, 3), (192, 384, 3), (384, 768, 9), (768, None, 3)]
_LN_EPS = 1e-6


def _layer_norm(g: _Graph, x: str, c: int, name: str) -> str:
    """nn.LayerNorm(c, eps=1e-6) over the last axis, with non-trivial affine parameters."""
    w = g.rng.uniform(0.75, 1.25, c).astype(np.float32)
    return g.node("LayerNormalization", [x, g.init(f"{name}.weight", w),
                                         g.init(f"{name}.bias", g._small(c, 0.1))],
                  name, axis=-1, epsilon=_LN_EPS)


def _layer_norm_2d(g: _Graph, x: str, c: int, name: str) -> str:
    """torchvision LayerNorm2d: permute to NHWC, LayerNorm over C, permute back."""
    x = g.node("Transpose", [x], f"{name}.permute", perm=[0, 2, 3, 1])
    x = _layer_norm(g, x, c, name)
    return g.node("Transpose", [x], f"{name}.permute_1", perm=[0, 3, 1, 2])


def _linear(g: _Graph, x: str, fin: int, fout: int, name: str, gain: float = 2.0) -> str:
    """nn.Linear on a rank > 2 tensor: MatMul by the transposed weight, then Add the bias."""
    w = g._he((fout, fin), fin, gain)
    y = g.node("MatMul", [x, g.init(f"{name}.weight_t", np.ascontiguousarray(w.T))],
               f"{name}.matmul")
    return g.node("Add", [y, g.init(f"{name}.bias", g._small(fout))], f"{name}.add")


def _gelu_erf(g: _Graph, x: str, name: str) -> str:
    """nn.GELU() as the legacy exporter writes it (opset < 20)."""
    u = g.node("Div", [x, g.const(np.sqrt(2.0))], f"{name}.div")
    e = g.node("Erf", [u], f"{name}.erf")
    p = g.node("Add", [e, g.const(1.0)], f"{name}.add")
    m = g.node("Mul", [x, p], f"{name}.mul")
    return g.node("Mul", [m, g.const(0.5)], f"{name}.mul_1")


def convnext_tiny(num_classes: int = 1000, image: int = 224, opset: int = 17, seed: int = 0,
                  layer_scale: float = 0.1) -> onnx.ModelProto:
    """torchvision ConvNeXt-tiny: 4x4/4 stem conv + LayerNorm2d; stages of [3, 3, 9, 3] CNBlocks
    (7x7 depthwise conv -> Transpose to NHWC -> LayerNorm -> Linear 4x -> GELU -> Linear ->
    Transpose back -> Mul by the layer scale [C, 1, 1] -> Add the block input; stochastic depth
    is the identity in eval) with LayerNorm2d + 2x2/2 conv between stages; GlobalAveragePool,
    LayerNorm2d, Flatten, Gemm.  ``layer_scale``: the scale's mean (torchvision starts at 1e-6,
    trained weights are far larger; 0.1 lets the random blocks change the result).  Opset >= 17
    (LayerNormalization)."""
    if opset < 17:
        raise ValueError("convnext_tiny needs opset >= 17 (LayerNormalization)")
    g = _Graph(seed, opset)
    x = g.conv("input", 3, 96, 4, stride=4, name="features.0.0", gain=1.0)
    x = _layer_norm_2d(g, x, 96, "features.0.1")
    fi = 1
    for cin, cout, n in _CONVNEXT_TINY:
        for bi in range(n):
            p = f"features.{fi}.{bi}"
            y = g.conv(x, cin, cin, 7, pad=3, group=cin, name=f"{p}.block.0", gain=1.0)
            y = g.node("Transpose", [y], f"{p}.block.1", perm=[0, 2, 3, 1])
            y = _layer_norm(g, y, cin, f"{p}.block.2")
            y = _linear(g, y, cin, 4 * cin, f"{p}.block.3")
            y = _gelu_erf(g, y, f"{p}.block.4")
            y = _linear(g, y, 4 * cin, cin, f"{p}.block.5", gain=1.0)
            y = g.node("Transpose", [y], f"{p}.block.6", perm=[0, 3, 1, 2])
            scale = (g.rng.uniform(0.5, 1.5, (cin, 1, 1)) * layer_scale).astype(np.float32)
            y = g.node("Mul", [g.init(f"{p}.layer_scale", scale), y], f"{p}.mul")
            x = g.add(y, x, name=f"{p}.add")
        fi += 1
        if cout is not None:
            x = _layer_norm_2d(g, x, cin, f"features.{fi}.0")
            x = g.conv(x, cin, cout, 2, stride=2, name=f"features.{fi}.1", gain=1.0)
            fi += 1
    x = g.gap(x, name="avgpool")
    x = _layer_norm_2d(g, x, 768, "classifier.0")
    x = g.flatten(x, name="classifier.1")
    x = g.gemm(x, 768, num_classes, name="classifier.2", gain=1.0)
    return _finish(g, "convnext_tiny", 3, image, x, num_classes,
                   f"convnext_tiny (torchvision layout, random seeded weights, seed={seed})")


def _yconv(g: _Graph, x: str, c1: int, c2: int, k: int = 1, s: int = 1, name: str = "") -> str:
    """ultralytics Conv with its BatchNorm fused (as exported): Conv(bias) + SiLU."""
    y = g.conv(x, c1, c2, k, stride=s, pad=k // 2, name=f"{name}.conv")
    return _silu(g, y, f"{name}.act")


def _split(g: _Graph, x: str, sizes: list[int], axis: int, name: str) -> list[str]:
    name = g._unique(name)
    outs = [f"{name}_output_{i}" for i in range(len(sizes))]
    if g.opset >= 13:
        ins = [x, g.init(f"{name}.split", np.array(sizes, np.int64))]
        g.nodes.append(helper.make_node("Split", ins, outs, name=name, axis=axis))
    else:
        g.nodes.append(helper.make_node("Split", [x], outs, name=name, axis=axis, split=sizes))
    return outs


def _c2f(g: _Graph, x: str, c1: int, c2: int, n: int, shortcut: bool, p: str) -> str:
    """C2f: cv1 (1x1 to 2c), Split in two, n Bottlenecks on the last piece (3x3, 3x3, + input
    when ``shortcut``), Concat of every piece, cv2 (1x1)."""
    c = c2 // 2
    ys = _split(g, _yconv(g, x, c1, 2 * c, 1, name=f"{p}.cv1"), [c, c], 1, f"{p}.split")
    for i in range(n):
        y = _yconv(g, ys[-1], c, c, 3, name=f"{p}.m.{i}.cv1")
        y = _yconv(g, y, c, c, 3, name=f"{p}.m.{i}.cv2")
        ys.append(g.add(ys[-1], y, name=f"{p}.m.{i}.add") if shortcut else y)
    y = g.node("Concat", ys, f"{p}.concat", axis=1)
    return _yconv(g, y, (2 + n) * c, c2, 1, name=f"{p}.cv2")


def _sppf(g: _Graph, x: str, c1: int, c2: int, p: str) -> str:
    y = [_yconv(g, x, c1, c1 // 2, 1, name=f"{p}.cv1")]
    for i in range(3):
        y.append(g.maxpool(y[-1], 5, 1, pad=2, name=f"{p}.m" if i == 0 else f"{p}.m_{i}"))
    return _yconv(g, g.node("Concat", y, f"{p}.concat", axis=1), 2 * c1, c2, 1, name=f"{p}.cv2")


def _upsample(g: _Graph, x: str, name: str) -> str:
    scales = g.init(f"{name}.scales", np.array([1, 1, 2, 2], np.float32))
    return g.node("Resize", [x, "", scales], name, coordinate_transformation_mode="asymmetric",
                  cubic_coeff_a=-0.75, mode="nearest", nearest_mode="floor")


def _anchors(image: int, strides=(8, 16, 32)):
    """ultralytics make_anchors (offset 0.5): cell centres in grid units, row-major per level,
    as [1, 2, A] anchors and [1, A] strides."""
    pts, st = [], []
    for s in strides:
        h = w = image // s
        sy, sx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        pts.append(np.stack([sx.reshape(-1), sy.reshape(-1)]))
        st.append(np.full(h * w, s))
    return (np.concatenate(pts, 1)[None].astype(np.float32),
            np.concatenate(st)[None].astype(np.float32))


def yolov8n(image: int = 320, batch: int = 1, num_classes: int = 80, opset: int = 17,
            seed: int = 0) -> onnx.ModelProto:
    """ultralytics YOLOv8n (depth 0.33, width 0.25) as ``model.export(format="onnx")`` writes it
    (static shapes, BatchNorm fused): backbone Conv(3x3/2) x2, C2f, ... , SPPF; PAN head with
    Resize-nearest upsampling and Concat; Detect head (per level two branches of Conv 3x3 x2 +
    1x1 conv: 64 box-distribution and ``num_classes`` class channels), flattened and joined
    into [batch, 4 + num_classes, A] (A = 2100 at 320x320), DFL (Reshape, Transpose, Softmax,
    a fixed 1x1 conv with weights 0..15), dist2bbox (Slice, Sub, Add, Div, Concat) times the
    strides, class Sigmoid.  Input "images" [batch, 3, image, image], output "output0"."""
    if opset < 11 or image % 32:
        raise ValueError("yolov8n needs opset >= 11 and an image size divisible by 32")
    g = _Graph(seed, opset)
    x = _yconv(g, "images", 3, 16, 3, 2, name="model.0")
    x = _yconv(g, x, 16, 32, 3, 2, name="model.1")
    x = _c2f(g, x, 32, 32, 1, True, "model.2")
    x = _yconv(g, x, 32, 64, 3, 2, name="model.3")
    p3 = _c2f(g, x, 64, 64, 2, True, "model.4")
    x = _yconv(g, p3, 64, 128, 3, 2, name="model.5")
    p4 = _c2f(g, x, 128, 128, 2, True, "model.6")
    x = _yconv(g, p4, 128, 256, 3, 2, name="model.7")
    x = _c2f(g, x, 256, 256, 1, True, "model.8")
    p5 = _sppf(g, x, 256, 256, "model.9")
    x = g.node("Concat", [_upsample(g, p5, "model.10"), p4], "model.11", axis=1)
    h4 = _c2f(g, x, 384, 128, 1, False, "model.12")
    x = g.node("Concat", [_upsample(g, h4, "model.13"), p3], "model.14", axis=1)
    o3 = _c2f(g, x, 192, 64, 1, False, "model.15")
    x = g.node("Concat", [_yconv(g, o3, 64, 64, 3, 2, name="model.16"), h4], "model.17", axis=1)
    o4 = _c2f(g, x, 192, 128, 1, False, "model.18")
    x = g.node("Concat", [_yconv(g, o4, 128, 128, 3, 2, name="model.19"), p5], "model.20",
               axis=1)
    o5 = _c2f(g, x, 384, 256, 1, False, "model.21")
    reg, no = 16, 4 * 16 + num_classes
    c2, c3 = max(16, 64 // 4, reg * 4), max(64, min(num_classes, 100))
    flat = []
    for i, (f, c) in enumerate([(o3, 64), (o4, 128), (o5, 256)]):
        p = "model.22"
        b = _yconv(g, f, c, c2, 3, name=f"{p}.cv2.{i}.0")
        b = _yconv(g, b, c2, c2, 3, name=f"{p}.cv2.{i}.1")
        b = g.conv(b, c2, 4 * reg, 1, name=f"{p}.cv2.{i}.2", gain=1.0)
        k = _yconv(g, f, c, c3, 3, name=f"{p}.cv3.{i}.0")
        k = _yconv(g, k, c3, c3, 3, name=f"{p}.cv3.{i}.1")
        k = g.conv(k, c3, num_classes, 1, name=f"{p}.cv3.{i}.2", gain=1.0)
        y = g.node("Concat", [b, k], f"{p}.concat_{i}", axis=1)
        shape = g.init(f"{p}.shape_{i}", np.array([batch, no, -1], np.int64))
        flat.append(g.node("Reshape", [y, shape], f"{p}.reshape_{i}"))
    x = g.node("Concat", flat, "model.22.concat", axis=2)
    box, cls = _split(g, x, [4 * reg, num_classes], 1, "model.22.split")
    a = (image // 8) ** 2 + (image // 16) ** 2 + (image // 32) ** 2
    d = g.node("Reshape", [box, g.init("model.22.dfl.shape", np.array([batch, 4, reg, a],
                                                                        np.int64))],
               "model.22.dfl.reshape")
    d = g.node("Transpose", [d], "model.22.dfl.transpose", perm=[0, 2, 1, 3])
    d = g.node("Softmax", [d], "model.22.dfl.softmax", axis=1)
    w = g.init("model.22.dfl.conv.weight", np.arange(reg, dtype=np.float32).reshape(1, reg, 1, 1))
    d = g.node("Conv", [d, w], "model.22.dfl.conv", kernel_shape=[1, 1])
    d = g.node("Reshape", [d, g.init("model.22.dfl.shape_1", np.array([batch, 4, a], np.int64))],
               "model.22.dfl.reshape_1")

    def piece(lo, hi, name):
        ins = [d] + [g.init(f"{name}.{k}", np.array([v], np.int64))
                     for k, v in (("starts", lo), ("ends", hi), ("axes", 1))]
        return g.node("Slice", ins, name)

    lt, rb = piece(0, 2, "model.22.slice"), piece(2, 4, "model.22.slice_1")
    anchors, strides = _anchors(image)
    anc = g.init("model.22.anchors", anchors)
    x1y1 = g.node("Sub", [anc, lt], "model.22.sub")
    x2y2 = g.node("Add", [anc, rb], "model.22.add")
    cxy = g.node("Div", [g.node("Add", [x1y1, x2y2], "model.22.add_1"), g.const(2.0)],
                 "model.22.div")
    wh = g.node("Sub", [x2y2, x1y1], "model.22.sub_1")
    box = g.node("Concat", [cxy, wh], "model.22.concat_3", axis=1)
    box = g.node("Mul", [box, g.init("model.22.strides", strides)], "model.22.mul")
    g.node("Concat", [box, g.node("Sigmoid", [cls], "model.22.sigmoid")], "model.22.concat_4",
           axis=1)
    g.nodes[-1].output[0] = "output0"
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, image, image])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 4 + num_classes, a])
    graph = helper.make_graph(g.nodes, "yolov8n", [inp], [out], g.inits)
    opsets = [helper.make_opsetid("", g.opset)]
    m = helper.make_model(graph, opset_imports=opsets, producer_name="convrt.sample_models.builders",
                          producer_version=str(BUILDER_VERSION),
                          ir_version=helper.find_min_ir_version_for(opsets))
    m.doc_string = f"yolov8n (ultralytics layout, random seeded weights, seed={seed})"
    return m


# ---------------------------------------------------------------------------
# Registry, cache, CLI
# ---------------------------------------------------------------------------

def _vgg_named(depth: int, bn: bool):
    def f(**kw):
        kw.setdefault("batch_norm", bn)
        return vgg(depth=depth, **kw)
    f.__name__ = f"vgg{depth}{'_bn' if bn else ''}"
    return f


MODELS = {
    "vgg": vgg,
    **{f"vgg{d}": _vgg_named(d, False) for d in _VGG_CFGS},
    **{f"vgg{d}_bn": _vgg_named(d, True) for d in _VGG_CFGS},
    "small_vgg_32": small_vgg_32,
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "squeezenet1_1": squeezenet1_1,
    "efficientnet_b0": efficientnet_b0,
    "mobilenet_v3_large": mobilenet_v3_large,
    "resnet50": resnet50,
    "convnext_tiny": convnext_tiny,
    "yolov8n": yolov8n,
}


def build(name: str, **kw) -> onnx.ModelProto:
    """Build the model registered as ``name`` (see ``MODELS``)."""
    try:
        fn = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return fn(**kw)


def cache_dir() -> pathlib.Path:
    env = os.environ.get("CONVRT_MODEL_CACHE")
    d = pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "convrt" / "models"
    return d.expanduser()


def _cache_key(name: str, kw: dict) -> str:
    parts = [name] + [f"{k}={kw[k]}" for k in sorted(kw)] + [f"v{BUILDER_VERSION}"]
    return "-".join(str(p).replace("/", "_").replace(" ", "") for p in parts)


def _save(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() >= 2**31 - 1:
        raise ValueError("model exceeds the 2 GB protobuf limit; external data is not supported "
                         "by these builders")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def cached_model(name: str, **kw) -> pathlib.Path:
    """Build ``name`` once and store it in :func:`cache_dir`; return its path.

    The file name encodes the builder arguments and ``BUILDER_VERSION``, so
    different settings never collide.  Weights are stored inline (VGG-16 is
    ~530 MB, well below protobuf's 2 GB limit).
    """
    path = cache_dir() / f"{_cache_key(name, kw)}.onnx"
    if not path.exists():
        _save(build(name, **kw), path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build a convrt sample ONNX model.")
    ap.add_argument("model", choices=sorted(MODELS), help="model name (vgg16, resnet18, ...)")
    ap.add_argument("--bn", action="store_true", help="VGG: add BatchNormalization after convs")
    ap.add_argument("--depth", type=int, help="for 'vgg': 11, 13, 16 or 19")
    ap.add_argument("--hidden", type=int, help="VGG: classifier width (default 4096)")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--image", type=int, help="input height/width (default 224; 32 for small_vgg_32)")
    ap.add_argument("--num-classes", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fold-bn", action="store_true", help="fold BN into the preceding conv")
    ap.add_argument("-o", "--output", type=pathlib.Path,
                    help="output path (default: the model cache, see cached_model)")
    a = ap.parse_args(argv)

    kw: dict = {}
    if a.opset != 17:
        kw["opset"] = a.opset
    if a.seed != 0:
        kw["seed"] = a.seed
    if a.num_classes is not None:
        kw["num_classes"] = a.num_classes
    if a.image is not None:
        if a.model == "small_vgg_32":
            ap.error("small_vgg_32 has a fixed 32x32 input")
        kw["image"] = a.image
    if a.fold_bn:
        if a.model in ("squeezenet1_1", "convnext_tiny", "yolov8n"):
            ap.error("squeezenet1_1 has no BatchNormalization")
        kw["fold_bn"] = True
    if a.bn:
        if not (a.model.startswith("vgg") or a.model == "small_vgg_32"):
            ap.error("--bn only applies to VGG models")
        kw["batch_norm"] = True
    if a.hidden is not None:
        if not a.model.startswith("vgg"):
            ap.error("--hidden only applies to VGG models")
        kw["hidden"] = a.hidden
    if a.depth is not None:
        if a.model != "vgg":
            ap.error("--depth only applies to 'vgg'")
        kw["depth"] = a.depth

    if a.output is not None:
        path = _save(build(a.model, **kw), a.output)
    else:
        path = cached_model(a.model, **kw)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
