"""fuse_conv_add_relu: Conv + residual Add (+ Relu) -> one fused node.

Before::

    x -> Conv(W, B) -> y -> Add(y, r) -> s -> Relu -> z        (ResNet block tail; or Add(r, y))
    x -> Conv(W, B) -> y -> Add(y, r) -> s                     (MobileNetV2: no activation)
    x -> Conv(W, B) -> y -> Sum(y, r) -> s -> Relu -> z        (old model zoo: ResNet-50)

After::

    x -> convrt.FusedConvAddRelu(W, B, r) -> z
    x -> convrt.FusedConvAdd(W, B, r) -> s

Conditions:
    * Conv, Add (or a Sum of exactly two inputs) and Relu are in the default domain; ``y`` is read by the Add only and is not a
      graph output; with a Relu, ``s`` is read by the Relu only and is not a graph output
      (otherwise the Add alone is fused and the Relu stays);
    * the residual ``r`` has exactly ``y``'s shape (no broadcasting: the kernel adds it
      element-wise in its epilogue) and dtype, and is not ``y`` itself;
    * the fused node takes the Relu's place, after ``r``'s producer.

    * a Conv whose output already feeds an activation is left to fuse_conv_activation, which
      runs after this pass (a Conv + Relu + Add chain is not this pattern anyway).

Formula:
    z = relu(conv(x, W) + B + r) (or without relu), computed in the conv kernel's epilogue; the
    ONNX definition is Conv -> Add (-> Relu).
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
        counts = {"Conv+Add+Relu fused": 0, "Conv+Add fused": 0}
        for add in list(graph.nodes):
            if add.domain or add.op_type not in ("Add", "Sum") or len(add.inputs) != 2:
                continue
            relu = only_consumer(graph, add.outputs[0])
            if relu is not None and (relu.domain or relu.op_type != "Relu" or
                                     add.outputs[0] in graph.outputs):
                relu = None
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
                op = "FusedConvAdd" if relu is None else "FusedConvAddRelu"
                tail = [add] if relu is None else [add, relu]
                new = Node(op, ins + [r], [tail[-1].outputs[0]], dict(conv.attrs),
                           name=conv.name, domain="convrt")
                replace_chain(graph, [conv] + tail, new)
                ensure_function(graph, op)
                counts["Conv+Add fused" if relu is None else "Conv+Add+Relu fused"] += 1
                break
        return self.result(counts)

    def describe(self, stats):
        parts = [f"{n} {k.split()[0]}" for k, n in stats.items() if n]
        return f"{self.name}: " + " and ".join(parts) + " (residual) fused" if parts else \
            f"{self.name}: no change"
