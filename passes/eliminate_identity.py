"""eliminate_identity: remove Identity, inference-mode Dropout and unit-window pooling nodes.

Before::

    a -> Conv -> x -> Identity -> y -> Relu          a -> Gemm -> x -> Dropout -> y (output)

After::

    a -> Conv -> x -> Relu                           a -> Gemm -> y (output)

Conditions:
    * Dropout: its mask output is absent or unread (and not a graph output); ``training_mode``
      is absent or a constant false (opset >= 12; ``ratio`` does not matter at inference).
    * When ``y`` is not a graph output, its readers read ``x`` instead.
    * When ``y`` is a graph output, the graph must keep the name ``y``: ``x``'s producer is made
      to write ``y`` instead, which needs ``x`` to be written by a node (not a graph input or
      initializer) and not to be a graph output itself; otherwise the node stays.

    * Max/AveragePool: kernel 1 x 1, strides 1, no pads and one output (PyTorch writes one for
      AdaptiveAvgPool2d(7) on a 7 x 7 map: VGG at 224^2).

Formula:
    Identity(x) = x; Dropout(x, training_mode=False) = (x, ones_like(x, bool));
    Pool over a 1 x 1 window with stride 1 and no padding = x.
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph, Node

from ._infra import Pass, PassResult
from ._match import extra_outputs_unused


def _inference_dropout(graph: Graph, node: Node) -> bool:
    if not extra_outputs_unused(graph, node):
        return False
    if int(node.attrs.get("is_test", 1)) == 0:  # opset < 7 training flag
        return False
    tm = node.input(2)
    if tm is None:
        return True
    return graph.is_constant(tm) and not bool(np.asarray(tm.const).reshape(-1)[0])


def _unit_pool(node: Node) -> bool:
    a = node.attrs
    ones = all(int(v) == 1 for v in list(a.get("kernel_shape", [0])) + list(a.get("strides", [])))
    no_pad = all(int(v) == 0 for v in a.get("pads", [])) and a.get("auto_pad", "NOTSET") in (
        "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")
    return ones and no_pad and len(node.outputs) == 1 and int(a.get("storage_order", 0)) == 0


class EliminateIdentityPass(Pass):
    name = "eliminate_identity"
    level = "basic"

    def run(self, graph: Graph) -> PassResult:
        counts = {"Identity": 0, "Dropout": 0, "MaxPool": 0, "AveragePool": 0}
        for node in list(graph.nodes):
            if node.domain or node.op_type not in counts or not node.inputs:
                continue
            if node.op_type == "Dropout" and not _inference_dropout(graph, node):
                continue
            if node.op_type.endswith("Pool") and not _unit_pool(node):
                continue
            x, y = node.inputs[0], node.outputs[0]
            if x is None:
                continue
            if y not in graph.outputs:
                graph.replace_all_uses(y, x)
                graph.remove_node(node)
            else:
                p = x.producer
                if p is None or x in graph.outputs or x in graph.inputs:
                    continue
                graph.remove_node(node)  # y stays in graph.values: it is a graph output
                graph.replace_all_uses(x, y)
                graph.set_output(p, p.outputs.index(x), y)
                if y.shape is None:
                    y.shape = x.shape
                if y.dtype is None:
                    y.dtype = x.dtype
            counts[node.op_type] += 1
        return self.result({f"{k} removed": v for k, v in counts.items()})

    def describe(self, stats):
        if not stats:
            return f"{self.name}: no change"
        return f"{self.name}: " + " and ".join(
            f"{v} {k.split()[0]}" for k, v in stats.items()) + " removed"
