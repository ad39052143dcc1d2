"""Graph analyses: dependency graph, topological order, cycles, layers.

networkx keeps the drawing side honest (the dependency DiGraph, the layered layout for
pictures, a cycle to name in an error).  The topological sort that every load and every pass
run needs is the few lines below instead, and networkx is imported only where it is used: its
import costs every process ~11 MiB of resident memory (measured with benchmarks/memory.py,
issue #22), a tenth of a ResNet-18 session, for a sort a heap does.
"""

from __future__ import annotations

import heapq

from ..errors import ModelLoadError
from .core import Graph, Node


def _edges(graph: Graph) -> list[list[int]]:
    """Per node index, the indices of the nodes reading a value it writes (with repeats)."""
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    succ: list[list[int]] = [[] for _ in graph.nodes]
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and v.producer is not None and id(v.producer) in index:
                succ[index[id(v.producer)]].append(i)
    return succ


def dependency_graph(graph: Graph):
    """Node-level networkx DiGraph: an edge p -> n when n reads a value p writes."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(range(len(graph.nodes)))
    for p, readers in enumerate(_edges(graph)):
        g.add_edges_from((p, i) for i in readers)
    return g


def toposort(graph: Graph) -> list[Node]:
    """Nodes in a topological order that keeps the file's order where it can (Kahn's algorithm
    taking the smallest ready index first: networkx's lexicographical topological sort).

    Raises ModelLoadError naming the nodes on a cycle.
    """
    succ = _edges(graph)
    indegree = [0] * len(succ)
    for readers in succ:
        for i in readers:
            indegree[i] += 1
    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        p = heapq.heappop(ready)
        order.append(p)
        for i in succ[p]:
            indegree[i] -= 1
            if indegree[i] == 0:
                heapq.heappush(ready, i)
    if len(order) < len(succ):
        import networkx as nx

        cycle = nx.find_cycle(dependency_graph(graph))
        names = " -> ".join(graph.nodes[a].name or graph.nodes[a].op_type for a, _ in cycle)
        raise ModelLoadError(f"{graph.source}: graph has a cycle: {names}")
    return [graph.nodes[i] for i in order]


def sort_graph(graph: Graph) -> None:
    """Put ``graph.nodes`` into topological order in place."""
    graph.nodes = toposort(graph)


def layers(graph: Graph) -> list[list[Node]]:
    """Nodes grouped by longest-path depth (for layered drawings)."""
    import networkx as nx

    g = dependency_graph(graph)
    depth: dict[int, int] = {}
    for i in nx.topological_sort(g):
        depth[i] = max((depth[p] + 1 for p in g.predecessors(i)), default=0)
    out: list[list[Node]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for i, d in depth.items():
        out[d].append(graph.nodes[i])
    return out
