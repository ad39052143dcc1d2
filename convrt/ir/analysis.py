"""Graph analyses on top of networkx: dependency graph, topological order, cycles, layers.

networkx keeps these few lines honest (cycle reporting, a stable topological sort, the layered
layout for pictures); the executor only calls them once, at plan time.
"""

from __future__ import annotations

import networkx as nx

from ..errors import ModelLoadError
from .core import Graph, Node


def dependency_graph(graph: Graph) -> nx.DiGraph:
    """Node-level DiGraph: an edge p -> n when n reads a value p writes."""
    g = nx.DiGraph()
    g.add_nodes_from(range(len(graph.nodes)))
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and v.producer is not None and id(v.producer) in index:
                g.add_edge(index[id(v.producer)], i)
    return g


def toposort(graph: Graph) -> list[Node]:
    """Nodes in a topological order that keeps the file's order where it can.

    Raises ModelLoadError naming the nodes on a cycle.
    """
    g = dependency_graph(graph)
    try:
        order = list(nx.lexicographical_topological_sort(g))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(g)
        names = " -> ".join(graph.nodes[a].name or graph.nodes[a].op_type for a, _ in cycle)
        raise ModelLoadError(f"{graph.source}: graph has a cycle: {names}") from None
    return [graph.nodes[i] for i in order]


def sort_graph(graph: Graph) -> None:
    """Put ``graph.nodes`` into topological order in place."""
    graph.nodes = toposort(graph)


def layers(graph: Graph) -> list[list[Node]]:
    """Nodes grouped by longest-path depth (for layered drawings)."""
    g = dependency_graph(graph)
    depth: dict[int, int] = {}
    for i in nx.topological_sort(g):
        depth[i] = max((depth[p] + 1 for p in g.predecessors(i)), default=0)
    out: list[list[Node]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for i, d in depth.items():
        out[d].append(graph.nodes[i])
    return out
