"""Resident memory of one session as the batch size varies: convrt vs onnxruntime.

    python benchmarks/memory.py [--models vgg16 resnet18] [--batches 1 2 3 4 5 6 7 8 1]
                                [--threads 2] [--pause 2]

A serving session, or one scoring a dataset whose last batch is short, sees many batch sizes;
what it holds afterwards is what the process keeps.  For each model and runtime a fresh
subprocess (``--worker``) loads the model (``sample_models/builders.py`` writes it into
~/.cache/convrt/models), reports its RSS after load, runs one session over ``--batches`` in order
and reports the RSS after each run, then the peak (VmHWM: the high-water mark of the whole
process, load included).  Each runtime runs in its own process, one after the other with a pause
between them, so neither sees the other's memory or idle threads.  Prints a table in MiB
(2**20 bytes, as ``ps`` counts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = {"vgg16": "vgg16", "resnet18": "resnet18"}
CACHE = Path.home() / ".cache" / "convrt" / "models"


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS: now, VmHWM: the peak so far)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def model_path(name: str) -> Path:
    """The model file, built by sample_models/builders.py when it is not there yet."""
    hits = sorted(CACHE.glob(f"{name}-v*.onnx"))
    if not hits:
        subprocess.run([sys.executable, str(ROOT / "sample_models" / "builders.py"), name],
                       check=True)
        hits = sorted(CACHE.glob(f"{name}-v*.onnx"))
    return hits[-1]


def worker(runtime: str, path: str, batches: list[int], threads: int) -> dict:
    """Run in its own process: load, then one session over ``batches``; RSS after each."""
    import numpy as np

    if runtime == "convrt":
        sys.path.insert(0, str(ROOT))
        import convrt
        opts = convrt.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = convrt.InferenceSession(path, opts)
        sess.wait_compiled()  # an empty numba cache: measure the compiled plans, not the first tier
    else:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    rec = {"load": _status("VmRSS"), "runs": []}
    rng = np.random.default_rng(0)
    for b in batches:
        # drawn as float32: a float64 draw and its copy were a transient of their own (13.8 MiB
        # at ResNet-18's batch 8) that the peak counted, more or less by chance per runtime
        x = rng.standard_normal([b] + shape[1:], dtype=np.float32)
        sess.run(None, {name: x})
        del x
        rec["runs"].append((b, _status("VmRSS")))
    rec["peak"] = _status("VmHWM")
    return rec


def measure(runtime: str, path: Path, batches: list[int], threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", runtime, str(path), "--threads", str(threads),
           "--batches", *map(str, batches)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{runtime} worker failed on {path.name}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict, batches: list[int]) -> str:
    mb = lambda v: f"{v / 2**20:,.0f}"  # noqa: E731
    head = ["model", "runtime", "after load"] + [f"b{b}" for b in batches] + ["peak"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for model, per in results.items():
        for rt, rec in per.items():
            cells = [model, rt, mb(rec["load"])] + [mb(v) for _, v in rec["runs"]]
            cells.append(f"**{mb(rec['peak'])}**")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6, 7, 8, 1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause", type=float, default=2.0)
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "convrt"])
    ap.add_argument("--worker", nargs=2, metavar=("RUNTIME", "PATH"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.batches, args.threads)))
        return
    results: dict = {}
    for model in args.models:
        path = model_path(MODELS[model])
        for rt in args.runtimes:
            results.setdefault(model, {})[rt] = measure(rt, path, args.batches, args.threads)
            time.sleep(args.pause)
    print("RSS in MiB after load, after each run (batch size), and the process's peak")
    print(table(results, args.batches))


if __name__ == "__main__":
    main()
