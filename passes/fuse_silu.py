"""fuse_silu: SiLU written as Mul(x, Sigmoid(x)) -> the conv's epilogue, or one elementwise kernel.

Before::

    x -> Conv(W[, B]) -> y -> Sigmoid -> s ;  Mul(y, s) (either operand order) -> z
    v -> Sigmoid -> s ;  Mul(v, s) -> z                      (v not a Conv's private output)

After::

    x -> convrt.FusedConvSilu(W, B) -> z
    v -> convrt.Silu -> z

Conditions:
    * every node is in the default domain; the Mul's two inputs are the Sigmoid's input and the
      Sigmoid's output (a Mul reading two different values, e.g. Mul(a, Sigmoid(b)), is left
      alone: that is a gate, not a SiLU);
    * ``s`` is read by the Mul only and is not a graph output (else the Sigmoid must stay);
    * conv form: ``y`` is read by exactly the Sigmoid and the Mul and is not a graph output; the
      Conv is 2-D (a 4-D weight: the 2-D kernels' epilogues apply SiLU) and float32/float64;
    * standalone form: float32/float64 ``v``, which may have other readers.

Formula:
    z = y * sigmoid(y) = y / (1 + exp(-y)), y = conv(x, W) + B; computed in the conv kernel's
    epilogue (``_epilogue.act_other``) or by ``kernels.elementwise.silu``, both with the
    vectorized float32 exp.  The ONNX definitions (``convrt/ops/fused.py``) are the Sigmoid +
    Mul pair they replace.

EfficientNet-B0 has 49 such SiLUs; before this pass each was a Sigmoid kernel (4.6 ms for the
largest, scalar libm exp) plus a Mul that read both tensors again.
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph, Node
from convrt.ops.fused import ensure_function

from ._infra import Pass, PassResult
from ._match import only_consumer
from .fuse_conv_activation import conv_with_bias

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def silu_mul(graph: Graph, sig: Node) -> Node | None:
    """The Mul that makes ``sig`` (a Sigmoid) a SiLU: it reads the Sigmoid's input and output
    and is the output's only reader; None otherwise."""
    v, s = sig.input(0), sig.outputs[0]
    mul = only_consumer(graph, s)
    if mul is None or mul.domain or mul.op_type != "Mul" or len(mul.inputs) != 2:
        return None
    a, b = mul.inputs
    return mul if {id(a), id(b)} == {id(v), id(s)} and a is not b else None


class FuseSiluPass(Pass):
    name = "fuse_silu"
    level = "extended"

    def run(self, graph: Graph) -> PassResult:
        counts = {"Conv+SiLU": 0, "SiLU": 0}
        for sig in list(graph.nodes):
            if sig.domain or sig.op_type != "Sigmoid" or sig not in graph.nodes:
                continue
            v = sig.input(0)
            if v is None or v.dtype not in DTYPES:
                continue
            mul = silu_mul(graph, sig)
            if mul is None:
                continue
            conv = v.producer
            readers = {id(n) for n, _ in v.uses}
            if conv is not None and not conv.domain and conv.op_type == "Conv" and \
                    conv.outputs[0] is v and v not in graph.outputs and \
                    readers == {id(sig), id(mul)} and len(v.uses) == 2:
                w = conv.input(1)
                ins = conv_with_bias(graph, conv) if w is not None and w.shape is not None \
                    and len(w.shape) == 4 else None
                if ins is not None:
                    new = Node("FusedConvSilu", ins, [mul.outputs[0]], dict(conv.attrs),
                               name=conv.name, domain="convrt")
                    self._replace(graph, [conv, sig, mul], new)
                    counts["Conv+SiLU"] += 1
                    continue
            new = Node("Silu", [v], [mul.outputs[0]], {}, name=sig.name, domain="convrt")
            self._replace(graph, [sig, mul], new)
            counts["SiLU"] += 1
        counts = {k: n for k, n in counts.items() if n}
        if counts:
            graph.remove_unused_initializers()
        return self.result(counts)

    @staticmethod
    def _replace(graph: Graph, chain: list[Node], new: Node) -> None:
        index = max(graph.nodes.index(n) for n in chain)
        graph.add_node(new, index + 1)
        graph.remove_nodes(chain, keep=new.outputs)
        ensure_function(graph, new.op_type)

    def describe(self, stats):
        if not stats:
            return f"{self.name}: no change"
        return f"{self.name}: " + ", ".join(f"{v} {k}" for k, v in stats.items()) + " fused"
