"""Pass infrastructure: the Pass base class, PassResult and the fixed-point PassManager.

A pass is a class with a ``name``, a ``level`` ("basic" or "extended") and ``run(graph) ->
PassResult``; it mutates the graph in place through the IR's helpers.  The manager runs an
explicit ordered pipeline repeatedly until no pass changes anything (a fixed point), at most
``max_iterations`` times, and merges the per-iteration results into one PassResult per pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

from convrt.errors import InputError
from convrt.ir import Graph, sort_graph

LEVELS = ("disable", "basic", "extended", "all")
_RANK = {"disable": 0, "basic": 1, "extended": 2, "all": 3}


@dataclass
class PassResult:
    """What one pass did: ``stats`` counts rewrites by kind; ``message`` is one line."""

    name: str
    modified: bool = False
    stats: dict[str, int] = field(default_factory=dict)
    message: str = ""

    def merge(self, other: "PassResult") -> None:
        self.modified |= other.modified
        for k, v in other.stats.items():
            self.stats[k] = self.stats.get(k, 0) + v


class Pass:
    """Base class: subclasses set ``name`` and ``level`` and implement :meth:`run`."""

    name: str = ""
    level: str = "basic"  # the lowest optimization level that runs this pass

    def run(self, graph: Graph) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, stats: dict[str, int]) -> str:
        """A one-line summary of ``stats`` (overridden by passes with nicer wording)."""
        parts = [f"{v} {k}" for k, v in stats.items() if v]
        return f"{self.name}: " + (", ".join(parts) if parts else "no change")

    def result(self, stats: dict[str, int]) -> PassResult:
        stats = {k: int(v) for k, v in stats.items() if v}
        return PassResult(self.name, bool(stats), stats, "")


def verify_hook(graph: Graph, after: str) -> None:
    """The default verify hook: IR invariants, then load-time shape inference on every node."""
    from convrt.ir.verify import verify
    from convrt.ops.infer import infer

    verify(graph, after)
    infer(graph)


def _env_verify() -> bool:
    return os.environ.get("CONVRT_VERIFY_PASSES", "") not in ("", "0")


class PassManager:
    """Run ``passes`` in order, repeatedly, until a fixed point or ``max_iterations``.

    Args:
        passes: Pass instances, in pipeline order.
        max_iterations: bound on pipeline repetitions (each pass runs at most this many times).
        verify: None (the default: on when ``CONVRT_VERIFY_PASSES`` is set), True for
            :func:`verify_hook`, False, or a callable ``(graph, pass_name) -> None`` run after
            every pass that modified the graph.
    """

    def __init__(self, passes: Iterable[Pass], max_iterations: int = 4,
                 verify: bool | Callable[[Graph, str], None] | None = None):
        self.passes = list(passes)
        self.max_iterations = max(1, int(max_iterations))
        if verify is None:
            verify = _env_verify()
        self.verify = verify_hook if verify is True else (verify or None)
        self.iterations = 0

    def run(self, graph: Graph) -> list[PassResult]:
        totals = {p.name: PassResult(p.name) for p in self.passes}
        for it in range(self.max_iterations):
            self.iterations = it + 1
            changed = False
            for p in self.passes:
                res = p.run(graph)
                if res.modified:
                    changed = True
                    if self.verify is not None:
                        self.verify(graph, p.name)
                totals[p.name].merge(res)
            if not changed:
                break
        if any(r.modified for r in totals.values()):
            sort_graph(graph)
            prune_functions(graph)
        for p in self.passes:
            totals[p.name].message = p.describe(totals[p.name].stats)
        return [totals[p.name] for p in self.passes]


def prune_functions(graph: Graph) -> None:
    """Drop convrt-domain function definitions that no node calls any more."""
    used = {(n.domain, n.op_type) for n in graph.nodes}
    for key in [k for k in graph.functions if k[0] == "convrt" and k not in used]:
        del graph.functions[key]
    if not any(k[0] == "convrt" for k in graph.functions) and \
            not any(n.domain == "convrt" for n in graph.nodes):
        graph.opsets.pop("convrt", None)


def select(pipeline: Iterable[type[Pass]], level: str, disabled: Iterable[str] = ()) -> list[Pass]:
    """Instantiate the passes of ``pipeline`` that run at ``level`` and are not ``disabled``.

    Raises InputError for an unknown level or pass name (listing the valid ones).
    """
    if level not in _RANK:
        raise InputError(f"unknown optimization level {level!r}; valid: {', '.join(LEVELS)}")
    classes = list(pipeline)
    names = [c.name for c in classes]
    disabled = tuple(disabled)
    unknown = [d for d in disabled if d not in names]
    if unknown:
        raise InputError(f"unknown pass name(s) {', '.join(map(repr, unknown))}; valid pass "
                         f"names: {', '.join(names)}")
    return [c() for c in classes
            if _RANK[c.level] <= _RANK[level] and c.name not in disabled]
