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


# -- pass report and pictures -------------------------------------------------------------------
def render_report(report, nodes_before: int, nodes_after: int) -> str:
    """The optimizer's report: node counts, then one line per pass that changed something."""
    if not report:
        return f"optimization: disabled ({nodes_before} nodes)"
    diff = nodes_after - nodes_before
    out = [f"optimization: {nodes_before} -> {nodes_after} nodes ({diff:+d})"]
    out += [f"  {r.message}" for r in report if r.modified]
    idle = [r.name for r in report if not r.modified]
    if idle:
        out.append(f"  unchanged: {', '.join(idle)}")
    return "\n".join(out)


def _esc(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _shape_text(v) -> str:
    if v is None or v.shape is None:
        return "?"
    return "×".join("?" if d is None else str(d) for d in v.shape)


def _node_text(graph: Graph, node) -> tuple[str, str]:
    """(title line, detail line) for a node box: op (+ kernel size), output shape."""
    op = node.op_type
    w = node.input(1) if "Conv" in op else None
    if w is not None and w.shape is not None and len(w.shape) >= 3:
        op += " " + "×".join(str(d) for d in w.shape[2:])
    return op, _shape_text(node.outputs[0] if node.outputs else None)


_COLORS = (("Conv", "#cfe2ff"), ("Gemm", "#e5d4ff"), ("MatMul", "#e5d4ff"),
           ("Pool", "#d3f0d8"), ("Relu", "#ffe0c2"), ("Sigmoid", "#ffe0c2"),
           ("Tanh", "#ffe0c2"), ("Clip", "#ffe0c2"), ("Softmax", "#ffe0c2"),
           ("Normalization", "#fff3b0"), ("Affine", "#fff3b0"), ("Add", "#f9d0d9"),
           ("Mul", "#f9d0d9"), ("Concat", "#f9d0d9"))


def _color(op: str) -> str:
    return next((c for key, c in _COLORS if key in op), "#eeeeee")


def render_dot(graph: Graph) -> str:
    """The graph in Graphviz DOT (``dot -Tsvg``): one box per node, inputs/outputs as ovals."""
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];']
    ids = {id(n): f"n{i}" for i, n in enumerate(graph.nodes)}
    for i, v in enumerate(graph.runtime_inputs()):
        lines.append(f'  in{i} [label="{v.name}\\n{_shape_text(v)}", shape=oval, '
                     f'fillcolor="#ffffff"];')
    inputs = {id(v): f"in{i}" for i, v in enumerate(graph.runtime_inputs())}
    for n in graph.nodes:
        title, detail = _node_text(graph, n)
        dom = "convrt." if n.domain == "convrt" else ""
        pen = ", penwidth=2" if n.domain == "convrt" else ""
        lines.append(f'  {ids[id(n)]} [label="{dom}{title}\\n{detail}", '
                     f'fillcolor="{_color(n.op_type)}", tooltip="{n.name}"{pen}];')
    for n in graph.nodes:
        for v in n.inputs:
            if v is None:
                continue
            src = ids.get(id(v.producer)) if v.producer is not None else inputs.get(id(v))
            if src:
                lines.append(f"  {src} -> {ids[id(n)]};")
    for i, v in enumerate(graph.outputs):
        lines.append(f'  out{i} [label="{v.name}\\n{_shape_text(v)}", shape=oval, '
                     f'fillcolor="#ffffff"];')
        src = ids.get(id(v.producer)) if v.producer is not None else inputs.get(id(v))
        if src:
            lines.append(f"  {src} -> out{i};")
    lines.append("}")
    return "\n".join(lines)


def render_svg(graph: Graph, max_rows: int = 22) -> str:
    """A layered drawing of the graph as standalone SVG (no Graphviz needed).

    Rows are longest-path depths (``convrt.ir.layers``), graph inputs on top and outputs at the
    bottom; within a row boxes are ordered by the mean position of their producers.  Long
    graphs wrap into side-by-side columns of at most ``max_rows`` rows.  Edges to the next row
    are curves; edges skipping rows (residuals) arc around the right side (dashed red); edges
    into the next column run through the lane between the columns.
    """
    from .ir import layers

    bw, bh, gx, gy, pad, lane = 210, 38, 26, 26, 20, 56
    rows: list[list[tuple]] = [[("in", v) for v in graph.runtime_inputs()]]
    rows += [[("node", n) for n in layer] for layer in layers(graph)]
    rows.append([("out", v) for v in graph.outputs])
    rows = [r for r in rows if r]
    ncols = -(-len(rows) // max_rows)
    per_col = -(-len(rows) // ncols)

    def preds(kind, obj):
        if kind == "in":
            return []
        vals = obj.inputs if kind == "node" else [obj]
        return [v.producer if v.producer is not None else v for v in vals if v is not None]

    col_w = [max(len(r) for r in rows[c * per_col:(c + 1) * per_col]) * (bw + gx) - gx
             for c in range(ncols)]
    col_x = [pad + sum(col_w[:c]) + c * lane for c in range(ncols)]
    pos: dict[int, tuple[float, float, int, int]] = {}  # id -> (x, y, row, column)
    for depth, row in enumerate(rows):
        col, r = divmod(depth, per_col)
        if depth:
            def bary(item):
                xs = [pos[id(p)][0] for p in preds(*item) if id(p) in pos]
                return sum(xs) / len(xs) if xs else 0.0
            row.sort(key=bary)
        total = len(row) * (bw + gx) - gx
        x0 = col_x[col] + (col_w[col] - total) / 2 + bw / 2
        y = pad + r * (bh + gy) + bh / 2
        for i, (_, obj) in enumerate(row):
            pos[id(obj)] = (x0 + i * (bw + gx), y, depth, col)
    width = int(col_x[-1] + col_w[-1] + lane)
    height = int(pad * 2 + per_col * (bh + gy) - gy)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
           'font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
           'fill="#555"/></marker></defs>',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<title>{_esc(graph.source)}: {len(graph.nodes)} nodes</title>']
    skip = 0
    for row in rows:
        for kind, obj in row:
            x, y, depth, col = pos[id(obj)]
            for p in preds(kind, obj):
                if id(p) not in pos:
                    continue
                px, py, pdepth, pcol = pos[id(p)]
                if pcol != col:  # into a later column: through the lane right of p's column
                    lx = col_x[pcol] + col_w[pcol] + lane / 2
                    out.append(f'<path d="M{px + bw / 2:.0f},{py:.0f} H{lx:.0f} V{y:.0f} '
                               f'H{x - bw / 2:.0f}" fill="none" stroke="#555" '
                               'marker-end="url(#arrow)"/>')
                elif pdepth == depth - 1 or abs(px - x) > 1:
                    out.append(f'<path d="M{px:.0f},{py + bh / 2:.0f} C{px:.0f},'
                               f'{py + bh / 2 + gy / 2:.0f} {x:.0f},{y - bh / 2 - gy / 2:.0f} '
                               f'{x:.0f},{y - bh / 2:.0f}" fill="none" stroke="#555" '
                               'marker-end="url(#arrow)"/>')
                else:  # skips rows in the same column: arc around the right side
                    skip += 1
                    dx = bw / 2 + 16 + 6 * (skip % 4)
                    out.append(f'<path d="M{px + bw / 2:.0f},{py:.0f} C{px + dx:.0f},{py:.0f} '
                               f'{x + dx:.0f},{y:.0f} {x + bw / 2:.0f},{y:.0f}" fill="none" '
                               'stroke="#b33" stroke-dasharray="4 2" marker-end="url(#arrow)"/>')
    for row in rows:
        for kind, obj in row:
            x, y = pos[id(obj)][:2]
            if kind == "node":
                title, detail = _node_text(graph, obj)
                fill, rx = _color(obj.op_type), 6
                stroke = "#1f4e9c" if obj.domain == "convrt" else "#777"
                sw, tip = (2 if obj.domain == "convrt" else 1), obj.name or obj.op_type
            else:
                title, detail = obj.name, _shape_text(obj)
                fill, rx, stroke, sw, tip = "#ffffff", bh / 2, "#777", 1, kind
            out.append(f'<g><title>{_esc(tip)}</title><rect x="{x - bw / 2:.0f}" '
                       f'y="{y - bh / 2:.0f}" width="{bw}" height="{bh}" rx="{rx:.0f}" '
                       f'fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>'
                       f'<text x="{x:.0f}" y="{y - 3:.0f}" text-anchor="middle" '
                       f'font-weight="bold">{_esc(title[:30])}</text>'
                       f'<text x="{x:.0f}" y="{y + 12:.0f}" text-anchor="middle" fill="#333">'
                       f'{_esc(detail[:34])}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


# -- activation statistics (`convrt inspect --activations`) --------------------------------------
@dataclass
class ActivationStats:
    """One value's statistics over a run: what a dead ReLU, an exploding layer or a NaN shows."""

    name: str
    op: str
    shape: list
    mean: float
    std: float
    min: float
    max: float
    zero_pct: float  # % of elements exactly 0 (dead ReLU channels show here)
    nan: int
    inf: int
    ms: float | None  # the producing node's time in the profiled (unfused) run


def activation_stats(sess, feeds: dict) -> list[ActivationStats]:
    """Run ``sess`` once fetching every node output of the original model, and summarize each.

    Every value is a fetch, so no pass fuses across any of them: the per-layer times are those
    of the unfused graph (a fused layer's time in ``run(None, ...)`` is shared by its parts).
    One warm-up run compiles that fetch set (and numba's kernels); the second is profiled.
    """
    vals = [v for v in sess.get_values() if v.op != "input"]
    names = [v.name for v in vals]
    sess.run(names, feeds)
    prof: list = []
    results = sess.run(names, feeds, profile=prof)
    times = {label: secs for label, _, secs in prof}
    graph = sess.original_graph
    node_ms = {}
    for node in graph.nodes:
        t = times.get(node_label(node))
        for v in node.outputs:
            node_ms[v.name] = None if t is None else t * 1e3
    rows = []
    for v, a in zip(vals, results):
        a = np.asarray(a)
        if a.dtype.kind not in "fiub" or a.size == 0:
            continue
        f = a.astype(np.float64, copy=False)
        finite = f[np.isfinite(f)] if a.dtype.kind == "f" else f.ravel()
        stat = (lambda fn: float(fn(finite)) if finite.size else float("nan"))
        rows.append(ActivationStats(
            v.name, v.op, list(a.shape), stat(np.mean), stat(np.std), stat(np.min),
            stat(np.max), 100.0 * float(np.count_nonzero(f == 0)) / f.size,
            int(np.count_nonzero(np.isnan(f))), int(np.count_nonzero(np.isinf(f))),
            node_ms.get(v.name)))
    return rows


def render_activations(rows: list[ActivationStats], fmt: str = "table") -> str:
    """The table (or JSON) of ``activation_stats``; NaN/Inf counts are of non-finite elements,
    and mean/std/min/max are over the finite ones."""
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=1)
    head = ("value", "op", "shape", "mean", "std", "min", "max", "zero%", "nan", "inf", "ms")
    body = [(r.name, r.op, "x".join(map(str, r.shape)), f"{r.mean:.4g}", f"{r.std:.4g}",
             f"{r.min:.4g}", f"{r.max:.4g}", f"{r.zero_pct:.1f}", str(r.nan), str(r.inf),
             "-" if r.ms is None else f"{r.ms:.3f}") for r in rows]
    widths = [max(len(x[i]) for x in body + [head]) for i in range(len(head))]
    widths[0] = min(widths[0], 60)
    line = "  ".join(("{:<%d}" if i < 3 else "{:>%d}") % w for i, w in enumerate(widths))
    out = [line.format(*head), "  ".join("-" * w for w in widths)]
    out += [line.format(r[0] if len(r[0]) <= 60 else "..." + r[0][-57:], *r[1:]) for r in body]
    return "\n".join(out)
