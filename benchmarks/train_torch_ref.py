"""A PyTorch twin of a VGG-style ONNX graph, for the training benchmarks (needs torch).

``TorchTwin(model)`` runs the ONNX graph node by node with torch's functional ops, holding the
float initializers as ``nn.Parameter`` and the BatchNormalization running statistics as buffers:
the same weights as the ONNX file, trained the way ``module.train()`` would (BN on batch
statistics with momentum ``1 - onnx_momentum``, Dropout active).  Dropout masks can be supplied
per node (``masks={node name: bool array}``) so a gradient comparison sees the same mask as
convrt.  Ops: Conv, BatchNormalization, Relu, MaxPool, AveragePool, GlobalAveragePool, Flatten,
Reshape, Gemm, MatMul, Add, Dropout, Constant, Identity.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn


def _attrs(n):
    return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}


def _pad_args(pads):
    """ONNX pads (t, l, b, r) -> (symmetric padding or None, explicit F.pad tuple or None)."""
    t, l, b, r = pads
    if t == b and l == r:
        return (t, l), None
    return (0, 0), (l, r, t, b)


class TorchTwin(nn.Module):
    def __init__(self, model: onnx.ModelProto, dtype=torch.float32):
        super().__init__()
        self.model = model
        self.inits = {}
        state = set()
        for n in model.graph.node:
            if n.op_type == "BatchNormalization":
                state.update(n.input[3:5])
        self.params = nn.ParameterDict()
        self._names = {}
        for t in model.graph.initializer:
            a = numpy_helper.to_array(t)
            key = f"p{len(self._names)}"
            self._names[t.name] = key
            if a.dtype.kind == "f" and t.name not in state:
                self.params[key] = nn.Parameter(torch.tensor(a, dtype=dtype))
            elif a.dtype.kind == "f":
                self.register_buffer(key, torch.tensor(a, dtype=dtype))
            else:
                self.inits[t.name] = torch.tensor(a)
        self.masks = {}

    def tensor(self, name):
        key = self._names.get(name)
        if key is None:
            return self.inits[name]
        return self.params[key] if key in self.params else getattr(self, key)

    def named_onnx_parameters(self):
        inv = {v: k for k, v in self._names.items()}
        return {inv[k]: p for k, p in self.params.items()}

    def running_stats(self):
        return {n: getattr(self, k) for n, k in self._names.items()
                if k not in self.params and hasattr(self, k) and isinstance(getattr(self, k),
                                                                             torch.Tensor)}

    def forward(self, x):
        env = {self.model.graph.input[0].name: x}

        def get(name):
            return env[name] if name in env else self.tensor(name)

        for n in self.model.graph.node:
            a = _attrs(n)
            ins = [get(i) if i else None for i in n.input]
            op = n.op_type
            if op == "Conv":
                sym, explicit = _pad_args(a.get("pads", [0, 0, 0, 0]))
                xin = F.pad(ins[0], explicit) if explicit else ins[0]
                y = F.conv2d(xin, ins[1], ins[2] if len(ins) > 2 else None,
                             stride=a.get("strides", [1, 1]), padding=sym,
                             dilation=a.get("dilations", [1, 1]), groups=a.get("group", 1))
            elif op == "BatchNormalization":
                y = F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], training=self.training,
                                 momentum=1.0 - a.get("momentum", 0.9),
                                 eps=a.get("epsilon", 1e-5))
            elif op == "Relu":
                y = F.relu(ins[0])
            elif op == "MaxPool":
                sym, explicit = _pad_args(a.get("pads", [0, 0, 0, 0]))
                assert explicit is None
                y = F.max_pool2d(ins[0], a["kernel_shape"], a.get("strides", [1, 1]), sym,
                                 a.get("dilations", [1, 1]), ceil_mode=bool(a.get("ceil_mode")))
            elif op == "AveragePool":
                sym, explicit = _pad_args(a.get("pads", [0, 0, 0, 0]))
                y = F.avg_pool2d(ins[0], a["kernel_shape"], a.get("strides", [1, 1]), sym,
                                 ceil_mode=bool(a.get("ceil_mode")),
                                 count_include_pad=bool(a.get("count_include_pad", 0)))
            elif op == "GlobalAveragePool":
                y = ins[0].mean(dim=(2, 3), keepdim=True)
            elif op == "Flatten":
                y = torch.flatten(ins[0], a.get("axis", 1))
            elif op == "Reshape":
                y = ins[0].reshape([int(v) for v in ins[1]])
            elif op == "Gemm":
                A = ins[0].T if a.get("transA") else ins[0]
                B = ins[1].T if a.get("transB") else ins[1]
                y = a.get("alpha", 1.0) * (A @ B)
                if len(ins) > 2:
                    y = y + a.get("beta", 1.0) * ins[2]
            elif op == "MatMul":
                y = ins[0] @ ins[1]
            elif op == "Add":
                y = ins[0] + ins[1]
            elif op == "Identity":
                y = ins[0]
            elif op == "Constant":
                y = torch.tensor(numpy_helper.to_array(a["value"]))
            elif op == "Dropout":
                ratio = float(ins[1]) if len(ins) > 1 and ins[1] is not None else \
                    a.get("ratio", 0.5)
                if not self.training:
                    y = ins[0]
                elif n.name in self.masks:
                    m = torch.tensor(self.masks[n.name], dtype=ins[0].dtype)
                    y = ins[0] * m / (1.0 - ratio)
                else:
                    y = F.dropout(ins[0], ratio, training=True)
            else:
                raise NotImplementedError(op)
            env[n.output[0]] = y
        return env[self.model.graph.output[0].name]


def as_numpy(t):
    return t.detach().cpu().numpy()


__all__ = ["TorchTwin", "as_numpy", "np"]
