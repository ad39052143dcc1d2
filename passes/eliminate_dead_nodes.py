"""eliminate_dead_nodes: remove nodes no graph output depends on, and unread initializers.

Before::

    x -> Conv -> y (graph output) ;  x -> Shape -> s (read by nobody) ; init w2 (read by nobody)

After::

    x -> Conv -> y

Conditions:
    A node is live when one of its outputs is a graph output or is read by a live node (ONNX
    inference ops have no side effects); all other nodes go.  Initializers that are no longer
    read, not graph inputs and not graph outputs go too.

Formula:
    Reverse reachability from the graph outputs over producer links.
"""

from __future__ import annotations

from convrt.ir import Graph

from ._infra import Pass, PassResult


class EliminateDeadNodesPass(Pass):
    name = "eliminate_dead_nodes"
    level = "basic"

    def run(self, graph: Graph) -> PassResult:
        live: set[int] = set()
        stack = [v.producer for v in graph.outputs if v.producer is not None]
        while stack:
            node = stack.pop()
            if id(node) in live:
                continue
            live.add(id(node))
            stack.extend(v.producer for v in node.inputs
                         if v is not None and v.producer is not None)
        dead = [n for n in graph.nodes if id(n) not in live]
        for node in reversed(dead):  # consumers first, so outputs are unused when removed
            graph.remove_node(node)
        inits = graph.remove_unused_initializers()
        return self.result({"nodes removed": len(dead), "initializers removed": inits})

    def describe(self, stats):
        if not stats:
            return f"{self.name}: no change"
        return (f"{self.name}: {stats.get('nodes removed', 0)} dead node(s) and "
                f"{stats.get('initializers removed', 0)} unused initializer(s) removed")
