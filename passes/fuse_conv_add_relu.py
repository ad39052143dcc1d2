"""fuse_conv_add_relu: Conv + residual Add + Relu (a ResNet block's tail) -> one fused node.

Before::

    x -> Conv(W, B) -> y -> Add(y, r) -> s -> Relu -> z        (or Add(r, y))

After::

    x -> convrt.FusedConvAddRelu(W, B, r) -> z

Conditions:
    * Conv, Add and Relu are in the default domain; ``y`` is read by the Add only, ``s`` by the
      Relu only, and neither is a graph output;
    * the residual ``r`` has exactly ``y``'s shape (no broadcasting: the kernel adds it
      element-wise in its epilogue) and dtype, and is not ``y`` itself;
    * the fused node takes the Relu's place, after ``r``'s producer.

Formula:
    z = relu(conv(x, W) + B + r), computed in the conv kernel's epilogue; the ONNX definition is
    Conv -> Add -> Relu.
"""

from __future__ import annotations

from convrt.ir import Graph, Node
from convrt.ops.fused import ensure_function

from ._infra import Pass, PassResult
from ._match import FLOATS, only_consumer, producer_is, replace_chain
from .fuse_conv_activation import conv_with_bias


def _same_shape(a, b) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(
        d is not None and d == e for d, e in zip(a, b))


class FuseConvAddReluPass(Pass):
    name = "fuse_conv_add_relu"
    level = "extended"

    def run(self, graph: Graph) -> PassResult:
        fused = 0
        for add in list(graph.nodes):
            if add.domain or add.op_type != "Add" or len(add.inputs) != 2:
                continue
            relu = only_consumer(graph, add.outputs[0])
            if relu is None or relu.domain or relu.op_type != "Relu":
                continue
            for i in (0, 1):
                y, r = add.inputs[i], add.inputs[1 - i]
                conv = producer_is(y, "Conv")
                if conv is None or r is None or r is y or only_consumer(graph, y) is not add:
                    continue
                if not _same_shape(y.shape, r.shape) or y.dtype != r.dtype or \
                        y.dtype not in FLOATS:
                    continue
                ins = conv_with_bias(graph, conv)
                if ins is None:
                    continue
                new = Node("FusedConvAddRelu", ins + [r], [relu.outputs[0]], dict(conv.attrs),
                           name=conv.name, domain="convrt")
                replace_chain(graph, [conv, add, relu], new)
                ensure_function(graph, "FusedConvAddRelu")
                fused += 1
                break
        return self.result({"Conv+Add+Relu fused": fused})

    def describe(self, stats):
        n = stats.get("Conv+Add+Relu fused", 0)
        return f"{self.name}: {n} Conv+Add+Relu (residual) fused" if n else \
            f"{self.name}: no change"
