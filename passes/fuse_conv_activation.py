"""fuse_conv_activation: Conv(+bias) followed by an activation -> one convrt.FusedConv* node.

Before::

    x -> Conv(W[, B]) -> y -> Relu | LeakyRelu(alpha) | Clip(min, max) | Sigmoid | Tanh
                             | HardSigmoid(alpha, beta) | HardSwish -> z

After::

    x -> convrt.FusedConvRelu(W, B) -> z       (FusedConvLeakyRelu(alpha), FusedConvClip(W, B,
                                                min, max), FusedConvSigmoid, FusedConvTanh,
                                                FusedConvHardSigmoid(alpha, beta),
                                                FusedConvHardSwish)

Conditions:
    * the Conv and the activation are in the default domain; ``y`` is read by the activation
      only and is not a graph output;
    * Clip: opset >= 11 (bounds are inputs), each bound absent or a scalar constant no feed
      overrides (ReLU6 = Clip(0, 6)), float dtype;
    * the Conv's bias may be absent (a zero bias is added) or anything the Conv accepts;
    * HardSigmoid / HardSwish: a 2-D Conv (4-D weight), float32/float64 (only the 2-D kernels'
      epilogues apply them; ``ops.fused.EPILOGUE_2D_ONLY``).

Formula:
    z = act(conv(x, W) + B), computed in the conv kernel's epilogue; the ONNX definition of each
    fused op (``convrt/ops/fused.py``) is exactly the Conv + activation pair it replaces.
"""

from __future__ import annotations

import numpy as np

from convrt.activations import ONNX_OPS, fused_attrs
from convrt.ir import Graph, Node
from convrt.ops.fused import CONV_ACTIVATIONS, EPILOGUE_2D_ONLY, ensure_function

from ._infra import Pass, PassResult
from ._match import FLOATS, new_const, only_consumer, replace_chain


def conv_with_bias(graph: Graph, conv: Node) -> list | None:
    """[X, W, B] for a fused conv (a zero bias initializer when the Conv has none)."""
    x, w, b = conv.input(0), conv.input(1), conv.input(2)
    if x is None or w is None or w.shape is None or not isinstance(w.shape[0], int) or \
            w.dtype not in FLOATS:
        return None
    if b is None:
        b = new_const(graph, f"{conv.name or w.name}.bias", np.zeros(w.shape[0], w.dtype))
    return [x, w, b]


def _clip_bounds(graph: Graph, act: Node, dtype) -> list | None:
    if graph.opset < 11:
        return None
    out = []
    for i, fill in ((1, np.finfo(dtype).min), (2, np.finfo(dtype).max)):
        v = act.input(i)
        if v is None:
            v = new_const(graph, f"{act.name or 'clip'}.{'min' if i == 1 else 'max'}",
                          np.array(fill, dtype))
        elif not graph.is_constant(v) or np.size(v.const) != 1 or v.dtype != dtype:
            return None
        out.append(v)
    return out


class FuseConvActivationPass(Pass):
    name = "fuse_conv_activation"
    level = "extended"

    def run(self, graph: Graph) -> PassResult:
        counts: dict[str, int] = {}
        for conv in list(graph.nodes):
            if conv.domain or conv.op_type != "Conv":
                continue
            y = conv.outputs[0]
            act = only_consumer(graph, y)
            if act is None or act.domain or act.op_type not in CONV_ACTIVATIONS or \
                    act.inputs[0] is not y or y.dtype not in FLOATS:
                continue
            if ONNX_OPS[act.op_type][0] in EPILOGUE_2D_ONLY:
                w = conv.input(1)
                if w is None or w.shape is None or len(w.shape) != 4 or \
                        y.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
                    continue
            extra = []
            if act.op_type == "Clip":
                if any(v is y for v in act.inputs[1:]):
                    continue
                extra = _clip_bounds(graph, act, y.dtype)
                if extra is None:
                    continue
            ins = conv_with_bias(graph, conv)
            if ins is None:
                continue
            op = CONV_ACTIVATIONS[act.op_type]
            attrs = dict(conv.attrs) | fused_attrs(act.op_type, act.attrs)
            new = Node(op, ins + extra, [act.outputs[0]], attrs, name=conv.name,
                       domain="convrt")
            replace_chain(graph, [conv, act], new)
            ensure_function(graph, op)
            counts[act.op_type] = counts.get(act.op_type, 0) + 1
        if counts:
            graph.remove_unused_initializers()
        return self.result({f"Conv+{k}": v for k, v in counts.items()})

    def describe(self, stats):
        if not stats:
            return f"{self.name}: no change"
        n = sum(stats.values())
        return f"{self.name}: {n} Conv+activation fused (" + ", ".join(
            f"{v} {k}" for k, v in stats.items()) + ")"
