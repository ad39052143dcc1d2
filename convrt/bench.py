"""`convrt bench MODEL`: warm latency and a per-node time profile.

Prints a table of nodes sorted by time (median over the profiled runs, % of the total, op type,
GFLOP/s where the node's MACs are known) and, with ``--profile FILE.json``, writes the last
profiled run as a Chrome trace (``{"traceEvents": [...]}`` with ``ph: "X"`` complete events,
microseconds), which chrome://tracing and https://ui.perfetto.dev open.

With ``--precision bf16`` it also reports the accuracy against float32 (``accuracy``): a float32
session of the same model runs ``--accuracy-inputs`` random inputs (the timed feed first) and
the bf16 one the same; printed are the max abs error of every output and, for a classifier's
``(N, classes)`` output, the top-1 agreement.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .cli_support import (add_precision_arg, make_feeds, make_session, nonnegative_int,
                          positive_int, thread_count)
from .runtime.trace import chrome_trace, step_spans, write_json


def add_parser(subparsers) -> None:
    b = subparsers.add_parser(
        "bench", help="warm latency and a per-node time profile",
        description="Run MODEL --warmup times, then --repeat timed runs with per-node timing; "
        "print the nodes sorted by median time and optionally write a Chrome trace.")
    b.add_argument("model", help="path to an .onnx file")
    b.add_argument("--batch", type=positive_int, default=1, help="value for symbolic dims (1)")
    b.add_argument("--repeat", type=positive_int, default=10, help="profiled runs (10)")
    b.add_argument("--warmup", type=nonnegative_int, default=2, help="untimed runs first (2)")
    b.add_argument("--threads", type=thread_count, default=None,
                   help="intra-op threads, 1 to the CPUs this process may use (default: all)")
    b.add_argument("--top", type=nonnegative_int, default=0,
                   help="print only the N slowest nodes (0 = all)")
    b.add_argument("--profile", metavar="FILE.json", help="write a Chrome-trace JSON")
    b.add_argument("--level", default="all", choices=["disable", "basic", "extended", "all"])
    b.add_argument("--disable", action="append", default=[], metavar="PASS")
    add_precision_arg(b)
    b.add_argument("--accuracy-inputs", type=positive_int, default=32, metavar="N",
                   help="with --precision bf16: random inputs compared with float32 (32)")
    b.set_defaults(fn=cmd_bench)


def profile_runs(sess, feeds: dict, repeat: int, warmup: int = 2):
    """Per-step times of ``repeat`` runs: (labels, op types, seconds[repeat, steps], totals,
    spans of the last run for :func:`~convrt.runtime.trace.chrome_trace`)."""
    for _ in range(max(0, warmup)):
        sess.run(None, feeds)
    runs, totals = [], []
    labels = ops = None
    for _ in range(max(1, repeat)):
        prof: list = []
        t0 = time.perf_counter()
        sess.run(None, feeds, profile=prof)
        totals.append(time.perf_counter() - t0)
        labels = [p[0] for p in prof]
        ops = [p[1] for p in prof]
        runs.append([p[2] for p in prof])
    return labels, ops, np.array(runs), np.array(totals), step_spans(prof, 0.0, totals[-1])


def render_table(labels, ops, med, flops=None, top: int = 0) -> str:
    total = float(med.sum()) or 1e-12
    order = np.argsort(-med, kind="stable")
    if top:
        order = order[:top]
    w = max([len("node")] + [len(labels[i]) for i in order])
    lines = [f"{'node':<{w}}  {'op type':<18} {'ms':>9} {'%':>6} {'cum %':>6} {'GFLOP/s':>8}"]
    cum = 0.0
    for i in order:
        cum += med[i]
        gf = ""
        if flops and labels[i] in flops and med[i] > 0:
            gf = f"{flops[labels[i]] / med[i] / 1e9:8.1f}"
        lines.append(f"{labels[i]:<{w}}  {ops[i]:<18} {med[i] * 1e3:9.3f} "
                     f"{100 * med[i] / total:6.1f} {100 * cum / total:6.1f} {gf:>8}")
    by_op: dict[str, float] = {}
    for op, t in zip(ops, med):
        by_op[op] = by_op.get(op, 0.0) + t
    lines.append("")
    lines.append("by op type: " + ", ".join(
        f"{op} {t * 1e3:.2f} ms ({100 * t / total:.1f} %)"
        for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def cmd_bench(args) -> int:
    t0 = time.perf_counter()
    sess = make_session(args)
    feeds = make_feeds(sess, [], args.batch)
    sess.run(None, feeds)
    if sess.first_tier:  # time the compiled kernels, not the first tier's (runtime/tiers.py)
        print("convrt: waiting for numba to compile the kernels before timing them (tens of "
              "seconds, once: they are cached on disk)", file=sys.stderr, flush=True)
        sess.wait_compiled()
    first = time.perf_counter() - t0
    labels, ops, runs, totals, spans = profile_runs(sess, feeds, args.repeat, args.warmup)
    med = np.median(runs, axis=0)
    flops = step_flops(sess, feeds)
    total_flops = sum(flops.values())
    print(f"model: {args.model}  batch {args.batch}  threads {sess._threads}  "
          f"precision {sess._precision}")
    print(f"load + first run: {first * 1e3:.1f} ms")
    m = float(np.median(totals))
    line = (f"latency over {len(totals)} profiled runs: median {m * 1e3:.2f} ms, "
            f"min {totals.min() * 1e3:.2f} ms")
    if total_flops:
        line += f", {total_flops / 1e9:.2f} GFLOP, {total_flops / m / 1e9:.1f} GFLOP/s"
    print(line)
    print(f"sum of node medians {med.sum() * 1e3:.2f} ms; per-run overhead "
          f"{(m - med.sum()) * 1e3:.3f} ms")
    print()
    print(render_table(labels, ops, med, flops, args.top))
    if args.profile:
        write_json(args.profile, chrome_trace(spans, f"convrt {Path(args.model).name}", flops))
        print(f"\nwrote {args.profile} (open in chrome://tracing or ui.perfetto.dev)")
    if sess._precision == "bf16":
        print()
        ref = make_session(args, "fp32")
        ref.wait_compiled()
        print(render_accuracy(accuracy(sess, ref, feeds,
                                       args.accuracy_inputs, args.batch)))
    return 0


def accuracy(low, ref, feeds: dict, n_inputs: int, batch: int) -> dict:
    """``low`` (a bf16 session) against ``ref`` (float32) over ``n_inputs`` inputs: ``feeds``
    (``batch`` rows) first, then random batches (``make_feeds`` with seeds 1, 2...).  Returns
    {"inputs": rows compared, "outputs": {name: {"max_abs_err", "max_abs_y", "top1": agreeing
    rows or None}}}; top-1 is counted for outputs of shape (N, classes > 1)."""
    names = [o.name for o in ref.get_outputs()]
    stats = {n: {"max_abs_err": 0.0, "max_abs_y": 0.0, "top1": 0, "rows": 0} for n in names}
    done, seed = 0, 0
    while done < n_inputs:
        f = feeds if seed == 0 else make_feeds(ref, [], batch, seed=seed)
        seed += 1
        rows = min(batch, n_inputs - done)
        for n, y, z in zip(names, ref.run(None, f), low.run(None, f)):
            y, z = np.asarray(y)[:rows], np.asarray(z)[:rows]
            s = stats[n]
            if y.dtype.kind == "f" and y.size:
                s["max_abs_err"] = max(s["max_abs_err"], float(np.max(np.abs(
                    y.astype(np.float64) - z.astype(np.float64)))))
                s["max_abs_y"] = max(s["max_abs_y"], float(np.max(np.abs(y))))
            if y.ndim == 2 and y.shape[1] > 1 and y.dtype.kind == "f":
                s["top1"] += int(np.sum(np.argmax(y, 1) == np.argmax(z, 1)))
                s["rows"] += rows
        done += rows
    for s in stats.values():
        if not s["rows"]:
            s["top1"] = None
    return {"inputs": done, "outputs": stats}


def render_accuracy(acc: dict) -> str:
    lines = [f"bf16 against float32 over {acc['inputs']} random inputs:"]
    for name, s in acc["outputs"].items():
        line = (f"  {name}: max abs error {s['max_abs_err']:.4g} (max |y| "
                f"{s['max_abs_y']:.4g})")
        if s["top1"] is not None:
            line += (f", top-1 agreement {s['top1']}/{s['rows']} "
                     f"({100 * s['top1'] / s['rows']:.1f} %)")
        lines.append(line)
    return "\n".join(lines)


def step_flops(sess, feeds) -> dict[str, int]:
    """label -> FLOPs (2 x MACs) per planned node, from binding-time inference."""
    from .ops.infer import infer
    from .ops.registry import TensorInfo

    infos_in = {n: TensorInfo(tuple(a.shape), a.dtype) for n, a in feeds.items()}
    try:
        _, infos = infer(sess.graph, infos_in, binding=False)
    except Exception:
        return {}
    out = {}
    for ni in infos:
        res = getattr(ni, "result", None)
        macs = getattr(res, "flops", 0) if res is not None else 0
        if macs and not getattr(ni, "folded", False):
            out[ni.node.name or ni.node.outputs[0].name] = 2 * int(macs)
    return out
