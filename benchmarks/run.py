"""convrt vs onnxruntime benchmark suite.

    python benchmarks/run.py [--models vgg16_b1 ...] [--repeat N] [--out results.json]
                             [--threads 2] [--pause 2] [--rounds 8] [--no-empty-cache]
                             [--markdown FILE]

Every measurement runs in its own fresh subprocess (benchmarks/_worker.py), one runtime at a
time with a pause between them (idle worker threads of one runtime must not steal the cores of
the other).  For the warm latency both runtimes' processes stay up and take turns: --rounds
rounds of --repeat runs each (``interleaved``), every run of a runtime pooled for its median.  On
this shared machine the background load drifts within seconds; alternating closely spreads a
slow spell over both sides of the ratio instead of one.  Per model it reports, for convrt and onnxruntime and their ratio:

* warm latency: median and min of all rounds' runs after warm-up, throughput (images/s), achieved
  GFLOP/s and % of this machine's float32 matmul peak (numpy sgemm 2048^3, own subprocess);
* cold start: process start -> first output; convrt with a warm numba cache (a priming process
  runs first) and with an empty one (a temporary NUMBA_CACHE_DIR);
* peak RSS of the process;
* the max abs error of convrt's output vs onnxruntime's (pass: <= 1e-4 * max|y|).

Results go to --out (default benchmarks/results/latest.json); --markdown writes the table too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "sample_models"))

# name -> (builder name, batch)
MODELS = {
    "vgg16_b1": ("vgg16", 1),
    "vgg16_b8": ("vgg16", 8),
    "small_vgg_b64": ("small_vgg_32", 64),
    "resnet18_b1": ("resnet18", 1),
    "mobilenet_v2_b1": ("mobilenet_v2", 1),
    # issue #21's modern families, 224x224; not in the default run (they add minutes)
    "efficientnet_b0_b1": ("efficientnet_b0", 1),
    "mobilenet_v3_large_b1": ("mobilenet_v3_large", 1),
    "resnet50_b1": ("resnet50", 1),
    "convnext_tiny_b1": ("convnext_tiny", 1),
    "yolov8n_320_b1": ("yolov8n", 1),  # the builder's default: 320x320, static batch 1
}
DEFAULT_MODELS = ["vgg16_b1", "vgg16_b8", "small_vgg_b64", "resnet18_b1", "mobilenet_v2_b1"]
TOL = 1e-4  # max abs error <= TOL * max|y_ort|


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "Model name":
                info["cpu"] = val
            elif key == "CPU(s)":
                info["cores"] = int(val)
            elif key == "Thread(s) per core":
                info["threads_per_core"] = int(val)
        flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
        info["avx512f"] = " avx512f" in flags
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["mem_gib"] = round(int(mem[1]) / 2 ** 20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def worker(spec: dict, env: dict | None = None, timeout: float = 1800) -> dict:
    """Run one measurement in a fresh process; returns its JSON result (or {"error": ...})."""
    with tempfile.TemporaryDirectory(prefix="convrt-bench-") as tmp:
        spec = dict(spec, result=os.path.join(tmp, "result.json"))
        path = os.path.join(tmp, "spec.json")
        spec["t_spawn"] = time.time()  # cold start counts from here: process start onwards
        Path(path).write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, str(HERE / "_worker.py"), path],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(spec["result"]):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}
        return json.loads(Path(spec["result"]).read_text())


SWITCH_PAUSE = 0.3  # s between handing the cores from one runtime to the other (idle spin)


def interleaved(specs: dict, env: dict, rounds: int, per_round: int, pause: float,
                timeout: float = 1800) -> dict:
    """Both runtimes at once, each in its own process (``_worker.py`` in serve mode), timed in
    alternation: ``rounds`` rounds of ``per_round`` runs each, the first runtime of a round
    alternating too, with SWITCH_PAUSE between (the idle one is blocked on its pipe).  Drift in
    the machine's background load then falls on both sides of the ratio alike.  The processes
    start one after the other, so each cold start is measured on an otherwise idle machine."""
    procs, out, tmps = {}, {}, []
    try:
        for kind, spec in specs.items():
            tmp = tempfile.TemporaryDirectory(prefix="convrt-bench-")
            tmps.append(tmp)
            spec = dict(spec, result=os.path.join(tmp.name, "result.json"), serve=True,
                        repeat=1, t_spawn=time.time())
            path = os.path.join(tmp.name, "spec.json")
            Path(path).write_text(json.dumps(spec))
            proc = subprocess.Popen([sys.executable, str(HERE / "_worker.py"), path], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            procs[kind] = (proc, spec)
            if proc.stdout.readline().strip() != "ready":
                proc.kill()
                err = proc.stderr.read().strip().splitlines()[-5:]
                return {k: {"error": " | ".join(err) or "worker did not start"} for k in specs}
            time.sleep(pause)
        times = {kind: [] for kind in specs}
        order = list(specs)
        for r in range(rounds):
            for kind in (order if r % 2 == 0 else order[::-1]):
                proc = procs[kind][0]
                proc.stdin.write(f"run {per_round}\n")
                proc.stdin.flush()
                times[kind].append(json.loads(proc.stdout.readline()))
                time.sleep(SWITCH_PAUSE)
        for kind, (proc, spec) in procs.items():
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0 or not os.path.exists(spec["result"]):
                out[kind] = {"error": " | ".join(err.strip().splitlines()[-5:])}
                continue
            res = json.loads(Path(spec["result"]).read_text())
            res["times_s"] = [t for batch in times[kind] for t in batch]
            res["round_medians_ms"] = [float(np.median(b)) * 1e3 for b in times[kind]]
            out[kind] = res
        return out
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
        for tmp in tmps:
            tmp.cleanup()


def summarize(res: dict, batch: int, flops: int, peak: float) -> dict:
    ts = res.get("times_s") or []
    if not ts:
        return res
    med, mn = float(np.median(ts)), float(np.min(ts))
    res.update(median_ms=med * 1e3, min_ms=mn * 1e3, images_per_s=batch / med)
    if flops:
        res["gflops"] = flops / med / 1e9
        if peak:
            res["pct_peak"] = 100 * res["gflops"] / peak
    return res


def bench_model(name: str, args, peak: float, log) -> dict:
    from builders import cached_model

    builder, batch = MODELS[name]
    path = str(cached_model(builder))
    common = {"model": path, "batch": batch, "threads": args.threads, "seed": 0,
              "warmup": args.warmup}
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="convrt-bench-out-") as tmp:
        y_ort, y_cv = os.path.join(tmp, "ort.npy"), os.path.join(tmp, "convrt.npy")
        log(f"[{name}] priming convrt's numba cache")
        prime = worker(dict(common, kind="convrt", repeat=0), env)
        time.sleep(args.pause)
        log(f"[{name}] onnxruntime and convrt, {args.rounds} alternating rounds of "
            f"{args.repeat} runs")
        res = interleaved({"ort": dict(common, kind="ort", out_npy=y_ort),
                           "convrt": dict(common, kind="convrt", out_npy=y_cv)},
                          env, args.rounds, args.repeat, args.pause)
        ort, cv = res["ort"], res["convrt"]
        out = {"model": builder, "batch": batch, "path": path, "ort": ort, "convrt": cv}
        if "error" in prime:
            out["prime_error"] = prime["error"]
        if "error" not in ort and "error" not in cv:
            a, b = np.load(y_cv), np.load(y_ort)
            err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.shape == b.shape \
                else float("inf")
            scale = float(np.max(np.abs(b)))
            out["check"] = {"max_abs_err": err, "max_abs_y": scale,
                            "rel": err / scale if scale else err, "tol": TOL,
                            "ok": bool(err <= TOL * scale)}
    if not args.no_empty_cache:
        time.sleep(args.pause)
        log(f"[{name}] convrt cold start with an empty numba cache")
        cache = tempfile.mkdtemp(prefix="convrt-empty-numba-")
        try:
            cold = worker(dict(common, kind="convrt", repeat=0),
                          dict(env, NUMBA_CACHE_DIR=cache))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        out["convrt_empty_cache"] = cold
    flops = cv.get("flops", 0) if "error" not in cv else 0
    out["gflop"] = flops / 1e9
    summarize(ort, batch, flops, peak)
    summarize(cv, batch, flops, peak)
    time.sleep(args.pause)
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def rows_of(results: dict) -> list[tuple]:
    """(model, metric, convrt, ort, ratio, unit) rows for the table."""
    rows = []
    for name, r in results["models"].items():
        cv, ort = r.get("convrt", {}), r.get("ort", {})
        for key, label, unit in (("median_ms", "latency median", "ms"),
                                 ("min_ms", "latency min", "ms"),
                                 ("images_per_s", "throughput", "img/s"),
                                 ("gflops", "GFLOP/s", ""),
                                 ("pct_peak", "% of sgemm peak", "%"),
                                 ("cold_s", "cold start (warm cache)", "s"),
                                 ("peak_rss_mb", "peak RSS", "MB")):
            a, b = cv.get(key), ort.get(key)
            rows.append((name, label, a, b, _ratio(a, b), unit))
        e = r.get("convrt_empty_cache", {})
        if e:
            rows.append((name, "cold start (empty cache)", e.get("cold_s"), ort.get("cold_s"),
                         _ratio(e.get("cold_s"), ort.get("cold_s")), "s"))
        for side in ("convrt", "ort", "convrt_empty_cache"):
            if "error" in r.get(side, {}):
                rows.append((name, f"ERROR {side}", None, None, None, r[side]["error"][:120]))
    return rows


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if unit in ("ms", "MB", "img/s", "") and abs(v) >= 100:
        return f"{v:.0f}"
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:.1f}"


def render_text(results: dict) -> str:
    m = results["machine"]
    lines = [f"convrt vs onnxruntime  {results['date']}  {m.get('cpu')}, {m.get('cores')} cores, "
             f"{results['threads']} threads each, median of {results.get('rounds', 1)} x "
             f"{results['repeat']} runs",
             f"float32 sgemm 2048^3 peak ({results['threads']} threads): "
             f"{results['peak_gflops']:.1f} GFLOP/s", ""]
    hdr = f"{'model':<16} {'metric':<26} {'convrt':>10} {'ort':>10} {'ratio':>7}"
    lines += [hdr, "-" * len(hdr)]
    last = None
    for name, label, a, b, r, unit in rows_of(results):
        if label.startswith("ERROR"):
            lines.append(f"{name:<16} {label:<26} {unit}")
            continue
        lines.append(f"{name if name != last else '':<16} {label + (' ' + unit if unit and unit != '%' else ''):<26} "
                     f"{_fmt(a, unit):>10} {_fmt(b, unit):>10} {'-' if r is None else f'{r:.2f}':>7}")
        last = name
    lines.append("")
    for name, r in results["models"].items():
        c = r.get("check")
        if c:
            lines.append(f"{name:<16} check vs onnxruntime: max abs err {c['max_abs_err']:.3g} "
                         f"(max|y| {c['max_abs_y']:.3g}, rel {c['rel']:.2g}) "
                         f"{'PASS' if c['ok'] else 'FAIL'} (tol {c['tol']:g} x max|y|)")
        else:
            lines.append(f"{name:<16} check vs onnxruntime: not run")
    lines.append("")
    for name, r in results["models"].items():
        spread = round_ratios(r)
        if spread:
            lines.append(f"{name:<16} latency ratio per round (median of each): "
                         f"{min(spread):.2f} .. {max(spread):.2f}")
    return "\n".join(lines)


def round_ratios(r: dict) -> list:
    """convrt / onnxruntime of each round's medians: how much the ratio moves with the load."""
    a = r.get("convrt", {}).get("round_medians_ms") or []
    b = r.get("ort", {}).get("round_medians_ms") or []
    return [x / y for x, y in zip(a, b) if y]


def render_markdown(results: dict) -> str:
    m = results["machine"]
    out = ["# convrt vs onnxruntime", "",
           f"Measured {results['date']} on {m.get('cpu')}, {m.get('cores')} cores "
           f"({m.get('mem_gib', '?')} GiB), Python {m.get('python')}, onnxruntime "
           f"{results.get('ort_version', '?')}; {results['threads']} threads for both, "
           f"all optimizations; medians of {results.get('rounds', 1)} x {results['repeat']} warm "
           f"runs, each runtime in its own fresh process, the two alternating "
           f"{results.get('rounds', 1)} times.  float32 sgemm 2048³ peak: "
           f"{results['peak_gflops']:.1f} GFLOP/s.  Ratio = convrt / onnxruntime (lower is "
           f"better for times and memory).  Reproduce: `python benchmarks/run.py`.", "",
           "| model | metric | convrt | onnxruntime | ratio |", "|---|---|---:|---:|---:|"]
    for name, label, a, b, r, unit in rows_of(results):
        if label.startswith("ERROR"):
            out.append(f"| {name} | {label} | {unit} | | |")
            continue
        lab = label + (f" ({unit})" if unit and unit != "%" else "")
        out.append(f"| {name} | {lab} | {_fmt(a, unit)} | {_fmt(b, unit)} | "
                   f"{'-' if r is None else f'{r:.2f}'} |")
    out += ["", "| model | max abs error vs onnxruntime | max abs y | within 1e-4·max abs y |",
            "|---|---:|---:|---|"]
    for name, r in results["models"].items():
        c = r.get("check")
        if c:
            out.append(f"| {name} | {c['max_abs_err']:.3g} | {c['max_abs_y']:.3g} | "
                       f"{'yes' if c['ok'] else 'NO'} |")
    out += ["", "Latency ratio of each round's medians (how far the load moved it within this "
            "run):", "", "| model | min | max | per round |", "|---|---:|---:|---|"]
    for name, r in results["models"].items():
        spread = round_ratios(r)
        if spread:
            out.append(f"| {name} | {min(spread):.2f} | {max(spread):.2f} | "
                       f"{' '.join(f'{v:.2f}' for v in spread)} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    p.add_argument("--repeat", type=int, default=5,
                   help="timed warm runs per runtime per round (5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (2)")
    p.add_argument("--rounds", type=int, default=8,
                   help="alternations of onnxruntime and convrt, --repeat runs each; the runs "
                        "of all rounds are pooled (8)")
    p.add_argument("--threads", type=int, default=2, help="threads for both runtimes (2)")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between processes (2)")
    p.add_argument("--no-empty-cache", action="store_true",
                   help="skip the empty-numba-cache cold start (it compiles every kernel)")
    p.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    p.add_argument("--markdown", help="also write the table as Markdown to this file")
    args = p.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    log("measuring the float32 matmul peak")
    peak = worker({"kind": "peak", "threads": args.threads, "repeat": 7, "warmup": 2})
    peak_gf = peak.get("gflops_median", 0.0)
    time.sleep(args.pause)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": machine(), "threads": args.threads, "repeat": args.repeat,
               "rounds": args.rounds,
               "peak_gflops": peak_gf, "peak": peak, "models": {}}
    for name in args.models:
        results["models"][name] = bench_model(name, args, peak_gf, log)
        results["ort_version"] = results["models"][name]["ort"].get("version")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(render_text(results))
    print(f"\nwrote {out}")
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(results))
        print(f"wrote {args.markdown}")
    bad = [n for n, r in results["models"].items() if not r.get("check", {}).get("ok")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
