"""fold_batchnorm: fold inference BatchNormalization into the preceding Conv or Gemm.

Before::

    x -> Conv(W, B) -> y -> BatchNormalization(scale, bias, mean, var, eps) -> z
    x -> Gemm(W, C, alpha, beta, transB) -> y -> BatchNormalization(...) -> z
    x -> MaxPool -> y -> BatchNormalization(...) -> z          (no Conv/Gemm producer)

After::

    x -> Conv(W', B') -> z
    x -> Gemm(W', C', alpha, beta=1, transB) -> z
    x -> MaxPool -> y -> convrt.ChannelAffine(a, b) -> z      (one fused per-channel affine)

Conditions:
    * BN parameters (scale, bias, mean, var) are constants no feed overrides; ``training_mode``
      is 0 (opset 14+); the extra training outputs (opset < 14) are unread.
    * Into a producer: ``y`` is read by the BN only and is not a graph output; the producer's
      weight (and bias, when present) are private constants (one reader, not overridable):
      shared weights are left alone rather than duplicated; Conv is in the default domain (any
      ``group``: the output channel is W's axis 0 either way); Gemm's output channels are
      W's axis 0 when ``transB`` else axis 1.
    * Otherwise (no foldable producer) the BN becomes ``ChannelAffine``, whose scale/shift are
      shaped ``[C, 1, ...]`` so its ONNX definition is a broadcasting Mul + Add.

Formula (float64, stored in the model's dtype)::

    a = scale / sqrt(var + eps);   b = bias - mean * a
    Conv:  W'[m] = W[m] * a[m];    B' = B * a + b            (B = 0 when absent)
    Gemm:  W'[:, n] = W[:, n] * a[n] (W'[n, :] with transB);  C' = beta * C * a + b, beta' = 1
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph, Node
from convrt.ops.fused import ensure_function
from convrt.ops.params import as_channel_param, bn_affine

from ._infra import Pass, PassResult
from ._match import (FLOATS, absorb, extra_outputs_unused, new_const, only_consumer,
                     private_const, replace_chain, set_bias, set_const,
                     static_shape)


def _bn_params(graph: Graph, bn: Node):
    """(a, b) in float64 when ``bn`` is a foldable inference BN, else None."""
    if bn.domain or bn.op_type != "BatchNormalization" or len(bn.inputs) != 5:
        return None
    if int(bn.attrs.get("training_mode", 0)) != 0 or int(bn.attrs.get("spatial", 1)) != 1:
        return None
    if not extra_outputs_unused(graph, bn):
        return None
    params = bn.inputs[1:5]
    if not all(graph.is_constant(v) for v in params):
        return None
    x = bn.inputs[0]
    if x is None or x.dtype not in FLOATS:
        return None
    s, b, m, v = (np.asarray(p.const) for p in params)
    if not (s.ndim == b.ndim == m.ndim == v.ndim == 1 and s.shape == b.shape == m.shape ==
            v.shape):
        return None
    return bn_affine(s, b, m, v, bn.attrs.get("epsilon", 1e-5))


def _fold_into_conv(graph: Graph, conv: Node, a, b) -> bool:
    w, bias = conv.input(1), conv.input(2)
    if not private_const(graph, w) or (bias is not None and not private_const(graph, bias)):
        return False
    W = np.asarray(w.const)
    if W.ndim < 3 or W.shape[0] != a.shape[0]:
        return False
    dt = W.dtype
    b0 = np.zeros(a.shape) if bias is None else np.asarray(bias.const, np.float64)
    set_const(graph, w, (W.astype(np.float64) * a.reshape((-1,) + (1,) * (W.ndim - 1)))
              .astype(dt))
    set_bias(graph, conv, (b0 * a + b).astype(dt))
    return True


def _fold_into_gemm(graph: Graph, gemm: Node, a, b) -> bool:
    w, c = gemm.input(1), gemm.input(2)
    if not private_const(graph, w) or (c is not None and not private_const(graph, c)):
        return False
    W = np.asarray(w.const)
    trans_b = int(gemm.attrs.get("transB", 0))
    if W.ndim != 2 or W.shape[0 if trans_b else 1] != a.shape[0]:
        return False
    dt = W.dtype
    scale = a[:, None] if trans_b else a[None, :]
    new_w = (W.astype(np.float64) * scale).astype(dt)
    beta = float(gemm.attrs.get("beta", 1.0))
    if c is not None:
        C = np.asarray(c.const, np.float64)
        try:
            new_c = beta * C * a + b
            out = static_shape(gemm.outputs[0])
            if out is not None:
                if np.broadcast_shapes(new_c.shape, out) != out:
                    return False
        except ValueError:
            return False
        set_const(graph, c, new_c.astype(dt))
    else:
        set_bias(graph, gemm, b.astype(dt))
    set_const(graph, w, new_w)
    gemm.attrs["beta"] = 1.0
    return True


class FoldBatchNormPass(Pass):
    name = "fold_batchnorm"
    level = "basic"

    def run(self, graph: Graph) -> PassResult:
        into = {"Conv": 0, "Gemm": 0}
        affine = 0
        for bn in list(graph.nodes):
            ab = _bn_params(graph, bn)
            if ab is None:
                continue
            a, b = ab
            x = bn.inputs[0]
            p = x.producer
            if p is not None and not p.domain and p.op_type in into and p.outputs[0] is x \
                    and only_consumer(graph, x) is bn:
                fold = _fold_into_conv if p.op_type == "Conv" else _fold_into_gemm
                if fold(graph, p, a, b):
                    absorb(graph, p, [bn])
                    into[p.op_type] += 1
                    continue
            if x.shape is None or len(x.shape) < 2:
                continue
            rank, dt = len(x.shape), x.dtype
            scale = new_const(graph, f"{bn.name or 'bn'}.scale",
                              as_channel_param(a, rank, dt))
            shift = new_const(graph, f"{bn.name or 'bn'}.shift",
                              as_channel_param(b, rank, dt))
            new = Node("ChannelAffine", [x, scale, shift], [bn.outputs[0]],
                       name=bn.name, domain="convrt")
            replace_chain(graph, [bn], new)
            ensure_function(graph, "ChannelAffine")
            affine += 1
        removed = graph.remove_unused_initializers() if (affine or any(into.values())) else 0
        return self.result({"into Conv": into["Conv"], "into Gemm": into["Gemm"],
                            "to ChannelAffine": affine, "initializers dropped": removed})

    def describe(self, stats):
        conv, gemm = stats.get("into Conv", 0), stats.get("into Gemm", 0)
        aff = stats.get("to ChannelAffine", 0)
        if not (conv or gemm or aff):
            return f"{self.name}: no change"
        parts = []
        if conv:
            parts.append(f"{conv} BatchNormalization folded into Conv")
        if gemm:
            parts.append(f"{gemm} into Gemm")
        if aff:
            parts.append(f"{aff} turned into ChannelAffine (no Conv/Gemm to fold into)")
        return f"{self.name}: " + ", ".join(parts)
