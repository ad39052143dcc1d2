"""convrt vs onnxruntime when the machine is not theirs alone (issue #15, "Threads that hold up").

    python benchmarks/contention.py [--rounds 3] [--repeat 8] [--models resnet18_b1 ...]
                                    [--situations idle busy busy_nice10] [--threads N]

A benchmark on an idle machine hides how a runtime's thread pool behaves when a core is taken:
a pool that waits at every parallel region for each of its workers (GNU OpenMP) stalls for a
whole time slice whenever one worker is descheduled.  So each model is timed in three situations:

* ``idle``: nothing else running (besides whatever shares the machine);
* ``busy``: one busy-loop process (``python -c "while True: pass"``) beside it, same priority;
* ``busy_nice10``: the same busy loop, with both runtimes' processes at ``nice -n 10`` (the
  scheduler then gives the busy loop most of a contended core).

Each runtime runs in its own process (benchmarks/_worker.py in serve mode) and the two take turns,
``--rounds`` rounds of ``--repeat`` warm runs each, through benchmarks/run.py's ``interleaved``:
drift in the background load falls on both sides of the ratio.  The niceness is set in a
measuring subprocess that inherits it to both workers; the busy loop is started by this process
at its own priority.  Prints the warm medians and convrt/onnxruntime ratios as a Markdown table.
NUMBA_THREADING_LAYER in the environment passes through (to compare layers); the layer convrt's
workers get is printed above the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "sample_models"))

# name -> (committed file or builder name, batch).  small_vgg_b64 is the builder's small_vgg_32
# (conv 64-64-M-128-128-M-256-256-M, the model of benchmarks/run.py and PERFORMANCE.md);
# small_vgg_file_b64 is the much smaller committed sample_models/small_vgg.onnx.
MODELS = {"resnet18_b1": ("resnet18", 1), "small_vgg_b64": ("small_vgg_32", 64),
          "small_vgg_file_b64": ("small_vgg.onnx", 64)}
SITUATIONS = {"idle": (False, 0), "busy": (True, 0), "busy_nice10": (True, 10)}
SETTLE = 1.0  # s for a new busy loop to take its core before timing starts


def model_path(name: str) -> str:
    src = MODELS[name][0]
    if src.endswith(".onnx"):
        return str(ROOT / "sample_models" / src)
    from builders import cached_model

    return str(cached_model(src))


def measure(spec: dict) -> dict:
    """In the measuring subprocess: take the niceness, then time both runtimes alternately."""
    from run import interleaved

    if spec["nice"]:
        os.nice(spec["nice"])
    common = {"model": spec["model"], "batch": spec["batch"], "threads": spec["threads"],
              "seed": 0, "warmup": spec["warmup"]}
    res = interleaved({"ort": dict(common, kind="ort"), "convrt": dict(common, kind="convrt")},
                      dict(os.environ), spec["rounds"], spec["repeat"], spec["pause"])
    out = {}
    for kind, r in res.items():
        ts = r.get("times_s") or []
        out[kind] = ({"median_ms": float(np.median(ts)) * 1e3,
                      "round_medians_ms": r.get("round_medians_ms")} if ts
                     else {"error": r.get("error", "no times")})
    return out


def run_situation(spec: dict, busy: bool, timeout: float) -> dict:
    loop = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None)
    try:
        if loop is not None:
            time.sleep(SETTLE)
        proc = subprocess.run([sys.executable, __file__, "--_measure", json.dumps(spec)],
                              check=False, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            return {k: {"error": tail or f"exit {proc.returncode}"} for k in ("ort", "convrt")}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()


def convrt_layer() -> str:
    """The numba threading layer convrt's processes get in this environment."""
    code = ("import numpy as np, numba, convrt\n"
            f"s = convrt.InferenceSession({str(ROOT / 'sample_models' / 'small_vgg.onnx')!r})\n"
            "s.run(None, {'input': np.zeros((1, 3, 32, 32), np.float32)})\n"
            "print(numba.threading_layer())")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       timeout=600)
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 else "unknown"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True,
                             timeout=10).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                    if ln.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        return "unknown CPU"


def render(results: dict, meta: dict) -> str:
    head = (f"{meta['date']}, {meta['cpu']}, {meta['cores']} CPUs, {meta['threads']} threads "
            f"each, convrt's numba layer: {meta['layer']}, warm medians of {meta['rounds']} "
            f"alternating rounds x {meta['repeat']} runs")
    lines = [head, "",
             "| model | situation | onnxruntime ms | convrt ms | convrt/ort |",
             "|---|---|---:|---:|---:|"]
    for model, per in results.items():
        for sit, r in per.items():
            o, c = r.get("ort", {}), r.get("convrt", {})
            if "median_ms" in o and "median_ms" in c:
                lines.append(f"| {model} | {sit} | {o['median_ms']:.1f} | {c['median_ms']:.1f} | "
                             f"{c['median_ms'] / o['median_ms']:.2f} |")
            else:
                err = (o.get("error") or c.get("error") or "?")[:80].replace("|", "/")
                lines.append(f"| {model} | {sit} | - | - | error: {err} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--_measure":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--situations", nargs="+", default=list(SITUATIONS), choices=list(SITUATIONS))
    p.add_argument("--rounds", type=int, default=3, help="alternations of the runtimes (3)")
    p.add_argument("--repeat", type=int, default=8, help="timed runs per runtime per round (8)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up runs (3)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for both runtimes (0 = the CPUs this process may use)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between processes (1)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(),
            "cores": os.cpu_count(), "threads": threads, "rounds": args.rounds,
            "repeat": args.repeat, "layer": convrt_layer()}
    results: dict = {}
    for model in args.models:
        spec = {"model": model_path(model), "batch": MODELS[model][1], "threads": threads,
                "rounds": args.rounds, "repeat": args.repeat, "warmup": args.warmup,
                "pause": args.pause}
        for sit in args.situations:
            busy, nice = SITUATIONS[sit]
            print(f"[{model}] {sit}", file=sys.stderr, flush=True)
            results.setdefault(model, {})[sit] = run_situation(dict(spec, nice=nice), busy, 1200)
            time.sleep(args.pause)
    print(render(results, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
