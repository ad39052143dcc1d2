"""Model summaries for `convrt inspect`: per-node shapes, parameters and MACs, and totals.

MACs are multiply-accumulates at batch 1 (symbolic dims are taken as 1); FLOPs = 2 x MACs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from .ir import Graph
from .ops.infer import infer, node_label
from .ops.registry import TensorInfo


@dataclass
class NodeSummary:
    name: str
    op: str
    inputs: list
    outputs: list
    params: int
    macs: int


@dataclass
class Summary:
    model: str
    nodes: list[NodeSummary]

    @property
    def params(self) -> int:
        return sum(n.params for n in self.nodes)

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)


def _fmt_shape(shape) -> str:
    return "?" if shape is None else "[" + ",".join("?" if d is None else str(d)
                                                     for d in shape) + "]"


def summarize(graph: Graph) -> Summary:
    """Per-node shapes (as inferred, symbolic dims kept), parameter counts and MACs."""
    feeds = {v.name: TensorInfo(tuple(d if isinstance(d, int) else 1 for d in v.shape),
                                v.dtype) for v in graph.runtime_inputs() if v.shape is not None}
    _, infos = infer(graph, feeds)
    rows = []
    for ni in infos:
        node = ni.node
        params = sum(int(np.prod(v.shape)) for v in node.inputs
                     if v is not None and graph.is_constant(v) and v.shape is not None)
        rows.append(NodeSummary(
            node_label(node), node.op_type if not node.domain else f"{node.domain}.{node.op_type}",
            [_fmt_shape(v.shape) for v in node.inputs if v is not None and
             not graph.is_constant(v)],
            [_fmt_shape(v.shape) for v in node.outputs], params, int(ni.result.flops)))
    return Summary(graph.source, rows)


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.1f}P"


def render_table(s: Summary) -> str:
    head = ("node", "op", "inputs -> outputs", "params", "MACs")
    rows = [(n.name, n.op, f"{' '.join(n.inputs)} -> {' '.join(n.outputs)}", _human(n.params),
             _human(n.macs)) for n in s.nodes]
    widths = [min(max(len(r[i]) for r in rows + [head]), 60) for i in range(5)]
    line = "  ".join("{:<%d}" % w for w in widths[:3]) + "  {:>%d}  {:>%d}" % tuple(widths[3:])
    out = [line.format(*head), "  ".join("-" * w for w in widths)]
    out += [line.format(*(c[:60] for c in r)) for r in rows]
    out.append(f"total: {len(s.nodes)} nodes, {s.params:,} parameters, {s.macs:,} MACs "
               f"(= {2 * s.macs / 1e9:.3f} GFLOPs at batch 1; FLOPs = 2 x MACs)")
    return "\n".join(out)


def render_json(s: Summary) -> str:
    return json.dumps({"model": s.model, "nodes": [asdict(n) for n in s.nodes],
                       "total_params": s.params, "total_macs": s.macs}, indent=1)
