"""fold_constants: evaluate constant subgraphs once and store the results as initializers.

Before::

    Constant(value=[-1, 512]) -> c ; Shape(x: [1, 3, 8, 8]) -> s ; Cast(s, to=FLOAT) -> f
    Reshape(y, c) ; Mul(w_init, k_init) -> w2

After::

    initializers c = [-1, 512], s = [1, 3, 8, 8], f = [1., 3., 8., 8.], w2 = w_init * k_init
    Reshape(y, c)          (the folded nodes are gone; readers read the initializers)

Conditions:
    * every input of the node is a constant no feed can override (``graph.is_constant``), or the
      op knows its output without data (``Shape`` of a statically shaped value);
    * inputs and outputs have static shapes of at most ``convrt.ops.infer.FOLD_LIMIT`` elements;
    * no output of the node is a graph output (its value must keep its producer so it stays
      an output of the ONNX graph) and at least one output is read.

Formula:
    The op's own kernel is run once on the constant inputs (``convrt.ops.infer.infer`` does the
    evaluation at load time: this pass only turns its folded results into initializers), so
    folding has exactly the semantics of running the node (Cast, Shape, Gather, Concat,
    Reshape/Unsqueeze shape chains, arithmetic on constants...).
"""

from __future__ import annotations

from convrt.ir import Graph
from convrt.ops.infer import infer

from ._infra import Pass, PassResult


class FoldConstantsPass(Pass):
    name = "fold_constants"
    level = "basic"

    def run(self, graph: Graph) -> PassResult:
        env, infos = infer(graph)
        folded, by_op = 0, {}
        for ni in infos:
            node = ni.node
            if not ni.folded or any(v in graph.outputs for v in node.outputs):
                continue
            used = [v for v in node.outputs if v.uses]
            if not used or any(env.get(v.name) is None or env[v.name].value is None
                               for v in used):
                continue
            graph.fold_node(node, {v.name: env[v.name].value for v in used})
            folded += 1
            by_op[node.op_type] = by_op.get(node.op_type, 0) + 1
        removed = graph.remove_unused_initializers() if folded else 0
        return self.result({"nodes folded": folded, "initializers dropped": removed,
                            **{f"op:{k}": v for k, v in by_op.items()}})

    def describe(self, stats):
        n = stats.get("nodes folded", 0)
        if not n:
            return f"{self.name}: no change"
        ops = ", ".join(f"{v} {k[3:]}" for k, v in stats.items() if k.startswith("op:"))
        return f"{self.name}: {n} constant node(s) folded into initializers ({ops})"
