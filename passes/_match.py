"""Small match predicates and rewrite helpers shared by the passes.

Predicates are cheap and side-effect free; the two rewrite helpers keep use-lists, producers
and ``graph.values`` consistent (``convrt.ir.verify`` checks that in tests).
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph, Node, Value

FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def only_consumer(graph: Graph, v: Value | None) -> Node | None:
    """The single node reading ``v`` when ``v`` has exactly one use and is not a graph output."""
    if v is None or len(v.uses) != 1 or v in graph.outputs:
        return None
    return v.uses[0][0]


def private_const(graph: Graph, v: Value | None) -> bool:
    """``v`` is a constant no feed overrides, read by one node only, not a graph output.

    Such a value may be rewritten in place without touching any other node (shared weights
    are left alone rather than duplicated).
    """
    return (graph.is_constant(v) and len(v.uses) == 1 and v not in graph.outputs
            and v.name in graph.initializers)


def producer_is(v: Value | None, op_type: str, domain: str = "") -> Node | None:
    """``v``'s producer when it is ``op_type`` in ``domain`` writing ``v`` as output 0."""
    p = None if v is None else v.producer
    if p is None or p.op_type != op_type or (p.domain or "") != domain or p.outputs[0] is not v:
        return None
    return p


def extra_outputs_unused(graph: Graph, node: Node) -> bool:
    """Outputs after the first are absent, unused and not graph outputs."""
    return all(not v.uses and v not in graph.outputs for v in node.outputs[1:])


def static_shape(v: Value | None) -> tuple[int, ...] | None:
    if v is None or v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return tuple(v.shape)


def channel_vector(shape: tuple[int, ...], rank: int, channels: int) -> bool:
    """A constant of ``shape`` broadcasts per channel (axis 1) over a rank-``rank`` tensor
    with ``channels`` channels, without changing the tensor's shape."""
    if rank < 2 or len(shape) > rank:
        return False
    full = (1,) * (rank - len(shape)) + tuple(shape)
    return full[1] in (1, channels) and all(d == 1 for i, d in enumerate(full) if i != 1)


def set_const(graph: Graph, v: Value, array: np.ndarray) -> None:
    """Replace the data of the private initializer ``v`` (shape may change)."""
    array = np.ascontiguousarray(array)
    v.const, v.shape, v.dtype = array, tuple(array.shape), array.dtype


def new_const(graph: Graph, hint: str, array: np.ndarray) -> Value:
    """A fresh initializer named after ``hint``."""
    name = hint if hint and hint not in graph.values else graph.fresh_name(hint or "const")
    return graph.add_initializer(name, np.ascontiguousarray(array))


def set_bias(graph: Graph, node: Node, array: np.ndarray, index: int = 2) -> None:
    """Give ``node`` (Conv, Gemm) the bias ``array`` at input ``index``: the private
    initializer already there is overwritten, else a new one is attached."""
    old = node.input(index)
    if old is not None:
        set_const(graph, old, array)
        return
    w = node.input(1)
    v = new_const(graph, f"{node.name or (w.name if w is not None else 'node')}.bias", array)
    while len(node.inputs) < index:
        node.add_input(None)
    if len(node.inputs) == index:
        node.add_input(v)
    else:
        node.set_input(index, v)


def absorb(graph: Graph, node: Node, followers: list[Node]) -> None:
    """``node`` takes over the first output of ``followers[-1]``; the followers leave.

    Requires ``node.outputs[0]`` to be read only by ``followers[0]`` and each follower's output
    only by the next one.  ``node`` keeps its position (its consumers all come later).
    """
    out = followers[-1].outputs[0]
    graph.remove_nodes(followers, keep=[out])
    graph.set_output(node, 0, out)


def replace_chain(graph: Graph, chain: list[Node], new: Node) -> Node:
    """Put ``new`` (already writing the chain's final outputs) where the chain's last node was.

    The chain's inner values must have no readers outside the chain.
    """
    index = max(graph.nodes.index(n) for n in chain)
    graph.add_node(new, index + 1)
    graph.remove_nodes(chain, keep=new.outputs)  # new is their producer since it was built
    return new
