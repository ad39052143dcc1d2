"""convrt's IR: values, nodes and the graph that owns them.

A :class:`Value` is an SSA edge: produced by at most one node (or a graph input or an
initializer), read by any number of nodes.  Each value keeps its use-list, so passes can ask
"who reads this?" in O(1) and rewire without a graph walk.  Shapes are tuples whose entries are
``int`` (known), ``str`` (a symbolic dim such as a dynamic batch ``"N"``) or ``None`` (unknown).

Mutations go through the helpers here (:meth:`Node.set_input`, :meth:`Graph.replace_all_uses`,
:meth:`Graph.remove_node`...) so use-lists never drift from the node inputs.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import numpy as np

Dim = int | str | None
Shape = tuple[Dim, ...]


class Value:
    """A tensor edge of the graph.

    Attributes:
        name: unique within the graph.
        shape: tuple of dims, or None when even the rank is unknown.
        dtype: a numpy dtype, or None when unknown.
        const: the initializer's data (a numpy array) or None.  A session may *release* a
            constant whose data only lives on in packed form (``release``); reading ``const``
            then restores it (see convrt/weights.py), so every reader keeps working.
        producer: the node writing this value, or None (graph input / initializer).
        uses: (node, input index) pairs reading it.
    """

    __slots__ = ("name", "shape", "dtype", "_const", "_restore", "producer", "uses", "doc")

    def __init__(self, name: str, shape: Shape | None = None, dtype=None, const=None):
        self.name = name
        self.shape = None if shape is None else tuple(shape)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self._const = const
        self._restore = None  # Value -> array, for a released constant (see ``release``)
        self.producer: Node | None = None
        self.uses: list[tuple[Node, int]] = []
        self.doc = ""

    @property
    def const(self):
        """The constant's array (restored first when it was released), or None."""
        c = self._const
        if c is None and self._restore is not None:
            c = self._const = self._restore(self)
        return c

    @const.setter
    def const(self, array) -> None:
        self._const, self._restore = array, None  # new data: an old restore no longer applies

    @property
    def has_const(self) -> bool:
        """Whether this is a constant, without restoring a released one's data."""
        return self._const is not None or self._restore is not None

    @property
    def released(self) -> bool:
        """Whether the data is released (``const`` would restore it)."""
        return self._const is None and self._restore is not None

    def release(self, restore) -> None:
        """Drop the reference to the data; ``restore(value) -> array`` gives it back on the next
        read of ``const``, bit for bit (the caller's promise).  Why: a session whose kernels
        hold a packed copy of a weight need not keep the original resident."""
        self._const, self._restore = None, restore

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.shape}, {self.dtype})"


class Node:
    """One operator application.  ``inputs`` may hold None for an omitted optional input."""

    __slots__ = ("op_type", "domain", "name", "inputs", "outputs", "attrs", "doc")

    def __init__(self, op_type: str, inputs: Iterable[Value | None], outputs: Iterable[Value],
                 attrs: dict[str, Any] | None = None, name: str = "", domain: str = ""):
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.inputs: list[Value | None] = []
        self.outputs: list[Value] = list(outputs)
        self.attrs = dict(attrs or {})
        self.doc = ""
        for v in inputs:
            self.add_input(v)
        for v in self.outputs:
            v.producer = self

    def add_input(self, v: Value | None) -> None:
        self.inputs.append(v)
        if v is not None:
            v.uses.append((self, len(self.inputs) - 1))

    def set_input(self, i: int, v: Value | None) -> None:
        old = self.inputs[i]
        if old is not None:
            old.uses.remove((self, i))
        self.inputs[i] = v
        if v is not None:
            v.uses.append((self, i))

    def input(self, i: int) -> Value | None:
        """The i-th input or None when omitted (also past the end)."""
        return self.inputs[i] if i < len(self.inputs) else None

    def __repr__(self) -> str:
        return f"Node({self.op_type}, {self.name!r})"


class Graph:
    """A model's main graph plus what is needed to write it back (opsets, IR version)."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.values: dict[str, Value] = {}
        self.opsets: dict[str, int] = {"": 13}
        self.ir_version = 8
        self.producer_name = ""
        # the ONNX model's descriptive fields, for InferenceSession.get_modelmeta()
        self.domain = self.doc_string = self.graph_doc_string = ""
        self.model_version = 0
        self.metadata_props: dict[str, str] = {}
        self.source = "<model>"  # file name or "<bytes>": used in error messages
        # model-local functions kept for export: (domain, name) -> ir.Function (plain data)
        self.functions: dict[tuple[str, str], Any] = {}
        # where the initializers' bytes lie in the model file (onnx_io/origin.py), for reading
        # a released weight again; None when not loaded from a file
        self.origin: Any = None
        self._fresh = itertools.count()

    # -- construction ---------------------------------------------------------------
    def value(self, name: str, shape: Shape | None = None, dtype=None) -> Value:
        """The value called ``name``, created on first mention."""
        v = self.values.get(name)
        if v is None:
            v = self.values[name] = Value(name, shape, dtype)
        return v

    def fresh_name(self, hint: str) -> str:
        while True:
            name = f"{hint}__{next(self._fresh)}"
            if name not in self.values:
                return name

    def add_initializer(self, name: str, array: np.ndarray) -> Value:
        v = self.value(name, array.shape, array.dtype)
        v.shape, v.dtype, v.const = tuple(array.shape), array.dtype, array
        self.initializers[name] = v
        return v

    def add_node(self, node: Node, index: int | None = None) -> Node:
        self.nodes.insert(len(self.nodes) if index is None else index, node)
        for v in node.outputs:
            self.values.setdefault(v.name, v)
        return node

    # -- queries ----------------------------------------------------------------------
    @property
    def opset(self) -> int:
        return self.opsets.get("", self.opsets.get("ai.onnx", 1))

    def is_constant(self, v: Value | None) -> bool:
        """True when ``v`` holds data no feed can override (IR < 4 lists initializers as inputs)."""
        return v is not None and v.has_const and v not in self.inputs

    def runtime_inputs(self) -> list[Value]:
        """Graph inputs a user feeds (initializers listed as inputs are optional overrides)."""
        return [v for v in self.inputs if not v.has_const]

    def consumers(self, v: Value) -> list[Node]:
        return [n for n, _ in v.uses]

    # -- mutation ---------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every reader of ``old`` (and the graph outputs) read ``new`` instead."""
        for node, i in list(old.uses):
            node.set_input(i, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_node(self, node: Node) -> None:
        """Drop ``node``; its outputs must be unused by then."""
        for i in range(len(node.inputs)):
            node.set_input(i, None)
        self.nodes.remove(node)
        for v in node.outputs:
            v.producer = None
            if not v.uses and v not in self.outputs:
                self.values.pop(v.name, None)

    def remove_nodes(self, nodes: list[Node], keep: Iterable[Value] = ()) -> None:
        """Drop ``nodes`` together (a matched chain), in one pass over ``self.nodes``.

        Their inputs are released first, so values read only inside the group may go; every
        other output must be unused and not a graph output by then, except those in ``keep``,
        which stay with their producer as is (a node added in the group's place writes them).
        """
        ids, kept = {id(n) for n in nodes}, {id(v) for v in keep}
        for n in nodes:
            for i in range(len(n.inputs)):
                n.set_input(i, None)
        for n in nodes:
            for v in n.outputs:
                if id(v) in kept:
                    continue
                assert not v.uses and v not in self.outputs, f"{v.name} is still used"
                v.producer = None
                if self.values.get(v.name) is v:
                    del self.values[v.name]
        self.nodes = [n for n in self.nodes if id(n) not in ids]

    def set_output(self, node: Node, i: int, v: Value) -> None:
        """Make ``v`` the ``i``-th output of ``node`` (a fused node taking over the value its
        chain wrote).  The value it replaces must be unused and not a graph output: it loses
        its producer and leaves ``values``."""
        old = node.outputs[i]
        assert not old.uses and old not in self.outputs, f"{old.name} is still used"
        if self.values.get(old.name) is old:
            del self.values[old.name]
        old.producer = None
        node.outputs[i] = v
        v.producer = node

    def fold_node(self, node: Node, arrays: dict[str, np.ndarray]) -> None:
        """Replace ``node`` by constants: each output with readers becomes an initializer
        holding ``arrays[name]``; the unused ones leave ``values``."""
        for i in range(len(node.inputs)):
            node.set_input(i, None)
        self.nodes.remove(node)
        for v in node.outputs:
            v.producer = None
            if v.uses:
                self.add_initializer(v.name, arrays[v.name])
            elif self.values.get(v.name) is v:
                del self.values[v.name]

    def remove_unused_initializers(self) -> int:
        dead = [n for n, v in self.initializers.items() if not v.uses and v not in self.outputs
                and v not in self.inputs]
        for n in dead:
            del self.initializers[n]
            self.values.pop(n, None)
        return len(dead)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"


def copy_graph(graph: Graph) -> Graph:
    """A structural copy of ``graph``: fresh Values and Nodes, the same constant arrays.

    For compiling a variant of a graph (more outputs, a prefix of it) without touching the
    original: passes never write into an initializer's array (they add new ones), so sharing
    the weights is safe and costs nothing."""
    g = Graph(graph.name)
    for attr in ("opsets", "metadata_props", "functions"):
        setattr(g, attr, dict(getattr(graph, attr)))
    for attr in ("ir_version", "producer_name", "domain", "doc_string", "graph_doc_string",
                 "model_version", "source"):
        setattr(g, attr, getattr(graph, attr))
    vals: dict[int, Value] = {}

    def cp(v: Value | None) -> Value | None:
        if v is None:
            return None
        n = vals.get(id(v))
        if n is None:
            n = vals[id(v)] = Value(v.name, v.shape, v.dtype, v.const)
            n.doc = v.doc
            g.values[v.name] = n
        return n

    for name, v in graph.initializers.items():
        g.initializers[name] = cp(v)
    g.inputs = [cp(v) for v in graph.inputs]
    for node in graph.nodes:
        new = Node(node.op_type, [cp(v) for v in node.inputs], [cp(v) for v in node.outputs],
                   node.attrs, node.name, node.domain)
        new.doc = node.doc
        g.nodes.append(new)
    g.outputs = [cp(v) for v in graph.outputs]
    for name, v in graph.values.items():  # values no node touches (unused inputs...)
        g.values.setdefault(name, cp(v))
    return g
