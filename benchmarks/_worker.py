"""One measurement in a fresh process, for benchmarks/run.py (not meant to be run by hand).

    python benchmarks/_worker.py SPEC.json

SPEC: {"kind": "convrt" | "ort" | "peak", "model": path, "batch": n, "threads": 2,
       "repeat": n, "warmup": n, "seed": 0, "t_spawn": parent's time.time() before the spawn,
       "out_npy": where to save the first output, "result": where to write the JSON result,
       "serve": true for the interleaved mode (``_serve``: timed batches on request)}

Only the runtime being measured is imported (peak RSS and thread pools stay its own).  Cold
start = first output's wall time minus ``t_spawn`` (process start, imports, load, plan, run).
"""

import json
import os
import resource
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KB on Linux


def _input(shape, seed):
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _first_run(sess, spec):
    """Feed the seeded input once (either runtime's session: same ``get_inputs``/``run``);
    returns the feeds, the cold start (spawn -> first output) and the RSS after it, and saves
    the output where ``out_npy`` says."""
    import numpy as np

    inp = sess.get_inputs()[0]
    shape = [spec["batch"] if not isinstance(d, int) else d for d in inp.shape]
    feeds = {inp.name: _input(shape, spec["seed"])}
    y = sess.run(None, feeds)[0]
    cold = time.time() - spec["t_spawn"]
    rss = _rss_mb()
    if spec.get("out_npy"):
        np.save(spec["out_npy"], y)
    return feeds, cold, rss


def _serve(fn, warmup):
    """Interleaved mode: warm up, say ``ready``, then time ``run N`` batches on request (one
    JSON list of seconds per line) until ``quit``; returns every time measured."""
    for _ in range(warmup):
        fn()
    print("ready", flush=True)
    ts = []
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        batch = _timed(fn, int(cmd[1]), 0)
        ts += batch
        print(json.dumps(batch), flush=True)
    return ts


def _measure(fn, spec):
    if spec.get("serve"):
        return _serve(fn, spec["warmup"])
    return _timed(fn, spec["repeat"], spec["warmup"])


def _timed(fn, repeat, warmup):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def run_ort(spec):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = spec["threads"]
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])
    feeds, cold, rss_after_first = _first_run(sess, spec)
    ts = _measure(lambda: sess.run(None, feeds), spec)
    return {"cold_s": cold, "times_s": ts, "rss_first_mb": rss_after_first,
            "version": ort.__version__}


def run_convrt(spec):
    import convrt
    from convrt.runtime import InferenceSession, SessionOptions

    sess = InferenceSession(spec["model"], SessionOptions(intra_op_num_threads=spec["threads"]))
    feeds, cold, rss_after_first = _first_run(sess, spec)
    res = {"cold_s": cold, "rss_first_mb": rss_after_first,
           "version": getattr(convrt, "__version__", "dev")}
    if spec["repeat"] > 0:
        res["times_s"] = _measure(lambda: sess.run(None, feeds), spec)
        from convrt.bench import step_flops

        res["flops"] = int(sum(step_flops(sess, feeds).values()))
        try:  # which BLAS pools exist in this process, and how many threads each may start
            from threadpoolctl import threadpool_info

            res["threadpools"] = [{k: p.get(k) for k in ("internal_api", "num_threads")}
                                  for p in threadpool_info()]
        except ImportError:
            pass
    return res


def run_peak(spec):
    """numpy float32 matmul 2048^3 (the machine's practical sgemm peak with this many threads)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    n = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    with threadpool_limits(spec["threads"], user_api="blas"):
        ts = _timed(lambda: np.matmul(a, b, out=c), spec["repeat"], spec["warmup"])
    ts.sort()
    return {"times_s": ts, "gflops_median": 2 * n ** 3 / ts[len(ts) // 2] / 1e9,
            "gflops_best": 2 * n ** 3 / ts[0] / 1e9}


def main():
    spec = json.loads(open(sys.argv[1]).read())
    fn = {"ort": run_ort, "convrt": run_convrt, "peak": run_peak}[spec["kind"]]
    res = fn(spec)
    res["peak_rss_mb"] = _rss_mb()
    res["pid"] = os.getpid()
    with open(spec["result"], "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
