"""fuse_conv_bias: fold a per-channel constant Add, Sub or Mul after a Conv into the Conv.

Before::

    x -> Conv(W[, B]) -> y -> Add(y, c) -> z        (also Add(c, y), Sub(y, c))
    x -> Conv(W[, B]) -> y -> Mul(y, s) -> z        (also Mul(s, y): ConvNeXt's layer scale)

After::

    x -> Conv(W, B') -> z
    x -> Conv(W', B') -> z

Conditions:
    * the Conv is in the default domain; ``y`` is read by the Add/Sub/Mul only and is not a
      graph output;
    * ``c`` (``s``) is a constant no feed overrides, of the Conv's dtype, and broadcasts per
      channel: right-aligned against ``y``'s rank it is 1 everywhere except axis 1, which is M
      (the output channels) or 1 -- so the op does not change ``y``'s shape;
    * the Conv's bias, when present, is a private constant (one reader, not overridable); for
      Mul, so is its weight (a shared weight is left alone rather than duplicated).

Formula (float64, stored in the model's dtype)::

    B' = B + c.reshape(-1)   (broadcast to M entries; B = 0 when absent);  Sub: B' = B - c
    Mul: W'[m] = W[m] * s[m];  B' = B * s
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph

from ._infra import Pass, PassResult
from ._match import absorb, channel_vector, only_consumer, private_const, set_bias, set_const


class FuseConvBiasPass(Pass):
    name = "fuse_conv_bias"
    level = "basic"

    def run(self, graph: Graph) -> PassResult:
        fused = scaled = 0
        for conv in list(graph.nodes):
            if conv.domain or conv.op_type != "Conv" or len(conv.inputs) < 2:
                continue
            y = conv.outputs[0]
            op = only_consumer(graph, y)
            if op is None or op.domain or op.op_type not in ("Add", "Sub", "Mul") or \
                    len(op.inputs) != 2:
                continue
            if op.inputs[0] is y and op.inputs[1] is not y:
                c, sign = op.inputs[1], -1.0 if op.op_type == "Sub" else 1.0
            elif op.op_type != "Sub" and op.inputs[1] is y and op.inputs[0] is not y:
                c, sign = op.inputs[0], 1.0
            else:
                continue
            w, bias = conv.inputs[1], conv.input(2)
            if not graph.is_constant(c) or w is None or w.shape is None or \
                    not isinstance(w.shape[0], int) or c.dtype != w.dtype:
                continue
            m = w.shape[0]
            if y.shape is None or not channel_vector(np.shape(c.const), len(y.shape), m):
                continue
            if bias is not None and not private_const(graph, bias):
                continue
            k = np.broadcast_to(np.asarray(c.const, np.float64).reshape(-1), (m,))
            b0 = np.zeros(m) if bias is None else np.asarray(bias.const, np.float64)
            if op.op_type == "Mul":
                if not private_const(graph, w):
                    continue
                wd = np.asarray(w.const)
                set_const(graph, w, (wd.astype(np.float64) * k.reshape((-1,) + (1,) * (
                    wd.ndim - 1))).astype(w.dtype))
                if bias is not None:
                    set_bias(graph, conv, (b0 * k).astype(w.dtype))
                scaled += 1
            else:
                set_bias(graph, conv, (b0 + sign * k).astype(w.dtype))
                fused += 1
            absorb(graph, conv, [op])
        removed = graph.remove_unused_initializers() if fused or scaled else 0
        return self.result({"Add folded into Conv bias": fused, "Mul folded into Conv": scaled,
                            "initializers dropped": removed})

    def describe(self, stats):
        n, k = stats.get("Add folded into Conv bias", 0), stats.get("Mul folded into Conv", 0)
        parts = ([f"{n} per-channel Add folded into Conv bias"] if n else []) + (
            [f"{k} per-channel Mul folded into Conv weights"] if k else [])
        return f"{self.name}: " + (", ".join(parts) if parts else "no change")
