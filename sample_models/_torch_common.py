"""Shared helpers for the torch export scripts in this directory (run by hand).

torch is NOT a dependency of convrt: only the scripts ``export_*.py`` import
this module, and their outputs are committed.  Tests never import torch.
"""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent


class _EvalDropout(torch.autograd.Function):
    """Identity in eval mode that exports as an ONNX ``Dropout`` node.

    The TorchScript exporter drops ``nn.Dropout`` in eval mode (it becomes
    nothing), but the sample models should keep their Dropout nodes so the
    runtime's handling of them (identity at inference, masking in training)
    is exercised.  The exported node is ``Dropout(x, ratio)`` with no
    ``training_mode`` input, i.e. an inference-mode identity by ONNX's
    definition.
    """

    @staticmethod
    def forward(ctx, x, p):  # noqa: D401
        return x.clone()

    @staticmethod
    def symbolic(g, x, p):
        ratio = g.op("Constant", value_t=torch.tensor(p, dtype=torch.float32))
        return g.op("Dropout", x, ratio)


class OnnxDropout(nn.Dropout):
    """``nn.Dropout`` whose eval-mode export keeps a ``Dropout`` node."""

    def forward(self, x):
        if self.training:
            return F.dropout(x, self.p, True, self.inplace)
        return _EvalDropout.apply(x, self.p)


def randomize_bn(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Give every BatchNorm non-trivial running stats and affine params.

    gamma / sqrt(var) stays within [0.75, 1.25] per channel so activations do
    not blow up or vanish through the network, while mean, var, gamma and beta
    are all far from the identity defaults (0, 1, 1, 0).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                var = torch.empty(c).uniform_(0.5, 2.0, generator=generator)
                m.running_var.copy_(var)
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                m.weight.copy_(torch.sqrt(var + m.eps) * torch.empty(c).uniform_(0.75, 1.25, generator=generator))
                m.bias.copy_(torch.randn(c, generator=generator) * 0.1)


def export(model: nn.Module, x: torch.Tensor, path, opset: int = 13) -> onnx.ModelProto:
    """Export with the TorchScript exporter, no constant folding, dynamic batch."""
    model.eval()
    torch.onnx.export(
        model, (x,), str(path),
        dynamo=False,
        opset_version=opset,
        do_constant_folding=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )
    model_proto = onnx.load(str(path))
    if undo_initializer_dedup(model_proto):
        onnx.save(model_proto, str(path))
    return model_proto


def undo_initializer_dedup(model: onnx.ModelProto) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer.

    In eval mode the TorchScript exporter merges initializers with equal
    values (e.g. a fresh BN's weight and running_var, both all-ones) and
    re-creates the duplicates as ``Identity`` nodes.  For a model that is
    meant to be trained that is wrong (the parameters must stay independent),
    and it hides parameters behind nodes, so each such Identity is turned
    back into its own initializer.  Returns the number of nodes replaced.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    keep, replaced = [], 0
    for node in g.node:
        if (node.op_type == "Identity" and node.input[0] in inits
                and node.output[0] not in graph_outputs):
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            g.initializer.append(t)
            replaced += 1
        else:
            keep.append(node)
    if replaced:
        del g.node[:]
        g.node.extend(keep)
    return replaced


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def check_against_torch(model: nn.Module, path, batches=(1, 4), atol: float = 1e-5,
                        image=(3, 32, 32), seed: int = 1) -> float:
    """Run ``path`` in onnxruntime for each batch size and compare with torch.

    Returns the largest absolute difference; raises if above ``atol``.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in batches:
        x = torch.randn((n, *image), generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == ref.shape, (got.shape, ref.shape)
        diff = float(np.max(np.abs(got - ref)))
        print(f"  onnxruntime vs torch, batch {n}: shape {got.shape}, max |diff| = {diff:.3g}")
        if not diff <= atol:
            raise AssertionError(f"onnxruntime differs from torch by {diff} (> {atol}) at batch {n}")
        worst = max(worst, diff)
    return worst
