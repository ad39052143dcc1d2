"""Graph invariants, checked after every pass in tests (``passes.optimize(..., verify=True)``).

The checks are structural only (no shape inference; ``convrt.ops.infer.infer`` does that):

* every value a node reads is defined *before* it: a graph input, an initializer or an output of
  an earlier node (so ``graph.nodes`` is in topological order and nothing dangles);
* use-lists match the node inputs exactly, in both directions, and ``producer`` links match the
  node outputs; no value is written twice;
* graph outputs are defined; ``graph.values`` maps each live name to its one Value object;
* initializers hold data whose shape/dtype agree with the Value's.

A violation is a bug in a pass, so it raises :class:`IRVerifyError` naming the node and value.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import ConvrtError
from .core import Graph, Node


class IRVerifyError(ConvrtError):
    """An IR invariant does not hold (a pass or a mutation helper misbehaved)."""


def _label(node: Node) -> str:
    return f"node '{node.name or node.op_type}' ({node.op_type})"


def verify(graph: Graph, after: str = "") -> None:
    """Raise IRVerifyError when an invariant of ``graph`` is broken.

    Args:
        graph: the graph to check.
        after: the pass that just ran, for the message.
    """
    where = f"{graph.source}{f' after {after}' if after else ''}"

    def fail(msg: str):
        raise IRVerifyError(f"{where}: {msg}")

    defined = {id(v) for v in graph.inputs}
    for name, v in graph.initializers.items():
        if v.name != name:
            fail(f"initializer key '{name}' holds value '{v.name}'")
        if v.const is None:
            fail(f"initializer '{name}' has no data")
        if not isinstance(v.const, np.ndarray) or tuple(v.const.shape) != tuple(v.shape or ()) \
                or v.const.dtype != v.dtype:
            fail(f"initializer '{name}' data does not match its shape/dtype")
        if v.producer is not None:
            fail(f"initializer '{name}' is also written by {_label(v.producer)}")
        defined.add(id(v))
    for v in graph.inputs:
        if v.producer is not None:
            fail(f"graph input '{v.name}' is also written by {_label(v.producer)}")

    expected_uses: Counter = Counter()
    seen_nodes = set()
    for node in graph.nodes:
        if id(node) in seen_nodes:
            fail(f"{_label(node)} is listed twice")
        seen_nodes.add(id(node))
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                fail(f"{_label(node)} reads '{v.name}' before it is defined (or never)")
            if (node, i) not in v.uses:
                fail(f"{_label(node)} input {i} '{v.name}' is missing from its use-list")
            expected_uses[(id(v), id(node), i)] += 1
        for v in node.outputs:
            if id(v) in defined:
                fail(f"{_label(node)} writes '{v.name}', which is already defined")
            if v.producer is not node:
                fail(f"{_label(node)} writes '{v.name}' but its producer is {v.producer}")
            if v.const is not None:
                fail(f"{_label(node)} writes '{v.name}', which holds constant data")
            defined.add(id(v))

    for v in list(graph.values.values()) + [v for n in graph.nodes for v in n.inputs if v]:
        for node, i in v.uses:
            if id(node) not in seen_nodes:
                fail(f"'{v.name}' lists a use by {_label(node)}, which is not in the graph")
            if i >= len(node.inputs) or node.inputs[i] is not v:
                fail(f"'{v.name}' lists use ({_label(node)}, {i}) but that input is not it")
        counts = Counter((id(v), id(n), i) for n, i in v.uses)
        if any(c > 1 for c in counts.values()):
            fail(f"'{v.name}' has duplicate use-list entries")

    for v in graph.outputs:
        if id(v) not in defined:
            fail(f"graph output '{v.name}' is never defined")
    for v in [*graph.inputs, *graph.initializers.values(), *graph.outputs,
              *(o for n in graph.nodes for o in n.outputs)]:
        if v.name and graph.values.get(v.name) is not v:
            fail(f"graph.values['{v.name}'] is not the value the graph uses")
