"""fuse_gemm_activation: Gemm + Relu, or MatMul (+ bias Add) + Relu -> convrt.FusedGemmRelu.

Before::

    a -> Gemm(B, C, alpha, beta, transA, transB) -> y -> Relu -> z
    a -> MatMul(B) -> y -> Add(y, c) -> s -> Relu -> z          (the Add is optional)

After::

    a -> convrt.FusedGemmRelu(B, C, alpha, beta, transA, transB) -> z
    a -> convrt.FusedGemmRelu(B, c) -> z

Conditions:
    * all nodes in the default domain, float32/float64; every intermediate value is read by
      the next node only and is not a graph output;
    * MatMul: both operands are 2-D (Gemm's contract); the bias ``c`` has shape [], [1], [n],
      [1, 1] or [1, n] so the Add keeps ``y``'s shape (n = B's columns, static);
    * a missing C becomes a zero [n] initializer (n static), so the ONNX body is plain Gemm.

Formula:
    z = relu(alpha * op(a) @ op(B) + beta * C), the ReLU applied in the GEMM kernel's epilogue.
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph, Node
from convrt.ops.fused import ensure_function

from ._infra import Pass, PassResult
from ._match import new_const, only_consumer, replace_chain

_F = (np.dtype(np.float32), np.dtype(np.float64))


def _cols(b, trans_b: int):
    if b is None or b.shape is None or len(b.shape) != 2:
        return None
    n = b.shape[0 if trans_b else 1]
    return n if isinstance(n, int) else None


class FuseGemmActivationPass(Pass):
    name = "fuse_gemm_activation"
    level = "extended"

    def run(self, graph: Graph) -> PassResult:
        counts = {"Gemm": 0, "MatMul": 0}
        for mm in list(graph.nodes):
            if mm.domain or mm.op_type not in counts or len(mm.inputs) < 2:
                continue
            y = mm.outputs[0]
            if y.dtype not in _F:
                continue
            nxt = only_consumer(graph, y)
            chain, bias = [mm], None
            if mm.op_type == "MatMul" and nxt is not None and not nxt.domain and \
                    nxt.op_type == "Add" and len(nxt.inputs) == 2:
                bias = nxt.inputs[1] if nxt.inputs[0] is y else nxt.inputs[0]
                if bias is y:
                    continue
                chain.append(nxt)
                nxt = only_consumer(graph, nxt.outputs[0])
            if nxt is None or nxt.domain or nxt.op_type != "Relu":
                continue
            if mm.op_type == "Gemm":
                attrs = dict(mm.attrs)
                a, b, c = mm.input(0), mm.input(1), mm.input(2)
                n = _cols(b, int(attrs.get("transB", 0)))
            else:
                attrs = {}
                a, b, c = mm.inputs[0], mm.inputs[1], bias
                if a is None or a.shape is None or len(a.shape) != 2:
                    continue
                n = _cols(b, 0)
                if n is None:
                    continue
                if c is not None and (c.shape is None or c.dtype != y.dtype or tuple(c.shape)
                                      not in ((), (1,), (n,), (1, 1), (1, n))):
                    continue
            if c is None:
                if n is None:
                    continue
                c = new_const(graph, f"{mm.name or 'gemm'}.bias", np.zeros(n, y.dtype))
            new = Node("FusedGemmRelu", [a, b, c], [nxt.outputs[0]], attrs, name=mm.name,
                       domain="convrt")
            replace_chain(graph, chain + [nxt], new)
            ensure_function(graph, "FusedGemmRelu")
            counts[mm.op_type] += 1
        return self.result({"Gemm+Relu fused": counts["Gemm"],
                            "MatMul(+Add)+Relu fused": counts["MatMul"]})

    def describe(self, stats):
        if not stats:
            return f"{self.name}: no change"
        return f"{self.name}: " + ", ".join(f"{v} {k}" for k, v in stats.items())
