"""Fetching any value of the original model: `sess.run(["<intermediate>", "logits"], feeds)`.

Why a separate compile per fetch set: the optimizer folds BatchNormalization into the Conv
before it, fuses Conv+Relu(+MaxPool), drops Identities; the values those nodes produced no
longer exist in the optimized graph.  Passes never fuse across a graph output, so a copy of the
*unoptimized* graph with the requested values added as outputs, optimized and planned, computes
exactly those values (and fuses everything else as usual).  That compile happens once per fetch
set; the last ``MAX_FETCH_SETS`` are kept.  The plain ``run(None, ...)`` path never comes here.

The unoptimized graph comes from the session (weights.py ``reloader``): a model given as a path is
loaded again on the first fetch; for bytes or a ModelProto it is a structural copy made before
optimization (:func:`copy_graph`): new Value/Node objects, but the weight arrays are shared with
the optimized graph (passes never write into an initializer's array; they add new ones), so the
cost is the Python objects of the graph and the weights the passes replaced.
"""

from __future__ import annotations

import difflib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .compiler import optimize
from .errors import InputError
from .ir import Graph, Value, copy_graph
from .ops.registry import TensorInfo
from .runtime.plan import Plan, plan_key

MAX_FETCH_SETS = 4  # fetch sets whose compiled graph is kept (each: folded weights + plans)
MAX_PLANS_PER_SET = 4  # input-shape sets planned per fetch set


@dataclass(frozen=True)
class ValueInfo:
    """One fetchable value (``InferenceSession.get_values()``).

    Attributes:
        name: its name in the original model (what ``run`` accepts).
        op: the op type of the node producing it ("input" for a graph input).
        shape: inferred shape, a list (str for a symbolic dim, None for an unknown one).
        dtype: numpy dtype name ("float32").
    """

    name: str
    op: str
    shape: list
    dtype: str


def list_values(graph: Graph) -> list[ValueInfo]:
    """Graph inputs, then every node output in topological order."""
    out = []
    for v in graph.runtime_inputs():
        out.append(_info(v, "input"))
    for node in graph.nodes:
        op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        out += [_info(v, op) for v in node.outputs if v.name]
    return out


def _info(v: Value, op: str) -> ValueInfo:
    shape = None if v.shape is None else list(v.shape)
    return ValueInfo(v.name, op, shape, "?" if v.dtype is None else str(v.dtype))


class FetchCache:
    """Compiled fetch sets of one session: names -> (optimized graph copy, plans by shapes)."""

    def __init__(self, load_original, level: str, disabled: tuple, budget, threads: int):
        """``load_original()`` loads the unoptimized graph again, on the first fetch only: a
        copy kept from the start would hold every weight the optimizer replaced (BN folding
        rewrites each conv's weights), a second copy of the model for every session."""
        self._load = load_original
        self._graph: Graph | None = None
        self._level, self._disabled = level, disabled
        self._budget, self._threads = budget, threads
        self._sets: OrderedDict[tuple, tuple[Graph, dict]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetchable: dict[str, Value] | None = None

    @property
    def graph(self) -> Graph:
        """The unoptimized graph; never mutated (copied per fetch set)."""
        if self._graph is None:
            with self._lock:
                if self._graph is None:
                    self._graph = self._load()
        return self._graph

    def fetchable(self) -> dict[str, Value]:
        """name -> Value: the graph inputs and every node output."""
        if self._fetchable is None:
            d = {v.name: v for v in self.graph.runtime_inputs()}
            d.update((v.name, v) for n in self.graph.nodes for v in n.outputs if v.name)
            self._fetchable = d
        return self._fetchable

    def check(self, names: list[str]) -> None:
        """An InputError for the first name that is not a value of the model (one line)."""
        known = self.fetchable()
        for n in names:
            if n not in known:
                close = difflib.get_close_matches(str(n), list(known), n=4, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                raise InputError(f"{self.graph.source}: unknown value {n!r}{hint} "
                                 f"(sess.get_values() lists all {len(known)})")

    def plan(self, names: tuple, infos: dict[str, TensorInfo]) -> Plan:
        """The plan computing the graph outputs followed by ``names`` (compiled once)."""
        key = plan_key(infos)
        with self._lock:
            entry = self._sets.get(names)
            if entry is None:
                entry = self._sets[names] = (self._compile(names), {})
                if len(self._sets) > MAX_FETCH_SETS:
                    self._sets.popitem(last=False)
            else:
                self._sets.move_to_end(names)
            graph, plans = entry
            plan = plans.get(key)
            if plan is None:
                plan = Plan(graph, infos, self._budget, self._threads)
                if len(plans) >= MAX_PLANS_PER_SET:
                    plans.pop(next(iter(plans)))
                plans[key] = plan
        return plan

    def _compile(self, names: tuple) -> Graph:
        """A copy of the unoptimized graph with ``names`` appended as outputs, optimized."""
        g = copy_graph(self.graph)
        g.outputs = g.outputs + [g.values[n] for n in names]
        optimize(g, self._level, self._disabled)
        return g
