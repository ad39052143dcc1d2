"""Throughput of ``convrt predict`` on each engine: local, dask, Ray (issue #18).

    python benchmarks/scale.py [--n 4096] [--batch-size 64] [--workers 2]

Runs the real command (``python -m convrt.cli predict``) once per engine, each in its own
process, over the same N random inputs of the small VGG (3x32x32): local with ``--workers``
threads, dask with ``--workers`` worker processes x 1 thread, Ray with ``--workers`` actors x 1
CPU.  Why whole commands: the overhead a user pays (cluster start-up, shipping batches, writing
the output) is part of the answer.  Each engine is timed end to end by wall clock; a warm-up
run of the local engine first fills numba's on-disk cache, so no engine pays compilation in its
timed run.  Every engine's output is checked against the local one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "sample_models", "small_vgg.onnx")


def run(engine: str, src: str, out: str, bs: int, workers: int) -> float:
    cmd = [sys.executable, "-m", "convrt.cli", "predict", MODEL, src, "-o", out,
           "--engine", engine, "--batch-size", str(bs)]
    cmd += ["--threads", str(workers)] if engine == "local" else ["--workers", str(workers)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "x.npy")
        np.save(src, np.random.default_rng(0).standard_normal((a.n, 3, 32, 32), np.float32))
        run("local", src, os.path.join(tmp, "warm.npy"), a.batch_size, a.workers)  # warm-up
        rows, ref = [], None
        for engine, what in [("local", f"1 process, {a.workers} threads"),
                             ("dask", f"{a.workers} workers x 1 thread"),
                             ("ray", f"{a.workers} actors x 1 CPU")]:
            out = os.path.join(tmp, f"y_{engine}.npy")
            dt = run(engine, src, out, a.batch_size, a.workers)
            y = np.load(out)
            ref = y if ref is None else ref
            assert np.array_equal(y, ref), f"{engine}: output differs from local"
            rows.append((engine, what, dt))
    base = rows[0][2]
    print(f"convrt predict, small VGG 3x32x32, {a.n} inputs, batch {a.batch_size} "
          "(wall clock of the whole command, cluster start-up included)\n")
    print("| engine | layout | wall | images/s | time vs local |")
    print("|---|---|---:|---:|---:|")
    for engine, what, dt in rows:
        print(f"| {engine} | {what} | {dt:.1f} s | {a.n / dt:.0f} | {dt / base:.2f}x "
              f"({dt - base:+.1f} s) |")


if __name__ == "__main__":
    main()
