"""One measurement in a fresh process, for benchmarks/run.py (not meant to be run by hand).

    python benchmarks/_worker.py SPEC.json

SPEC: {"kind": "convrt" | "convrt_bf16" | "ort" | "ov_f32" | "ov_default" | "peak",
       "model": path, "batch": n,
       "threads": 2, "repeat": n, "warmup": n, "seed": 0,
       "t_spawn": parent's time.time() before the spawn,
       "out_npy": where to save the first output, "result": where to write the JSON result,
       "serve": true for the interleaved mode (``_serve``: timed batches on request)}

Only the runtime being measured is imported (peak RSS and thread pools stay its own).  Cold
start = first output's wall time minus ``t_spawn`` (process start, imports, load, plan, run);
``load_s`` is the part up to the session being ready (for convrt that includes its warm-up run).
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
    """Feed the seeded input once (every runtime's session: the same ``get_inputs``/``run``;
    OpenVINO's through ``_OVSession``); returns the feeds and the start-up figures (cold start =
    spawn -> first output, load = spawn -> session ready, RSS after the first run), and saves
    the output where ``out_npy`` says."""
    import numpy as np

    load = time.time() - spec["t_spawn"]
    inp = sess.get_inputs()[0]
    shape = [spec["batch"] if not isinstance(d, int) else d for d in inp.shape]
    feeds = {inp.name: _input(shape, spec["seed"])}
    y = sess.run(None, feeds)[0]
    start = {"cold_s": time.time() - spec["t_spawn"], "load_s": load, "rss_first_mb": _rss_mb()}
    if spec.get("out_npy"):
        np.save(spec["out_npy"], y)
    return feeds, start


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
    feeds, start = _first_run(sess, spec)
    ts = _measure(lambda: sess.run(None, feeds), spec)
    return dict(start, times_s=ts, version=ort.__version__)


def run_convrt(spec):
    import convrt
    from convrt.runtime import InferenceSession, SessionOptions

    precision = "bf16" if spec["kind"] == "convrt_bf16" else "fp32"
    sess = InferenceSession(spec["model"], SessionOptions(intra_op_num_threads=spec["threads"],
                                                          precision=precision))
    feeds, start = _first_run(sess, spec)
    # an empty numba cache: the first output came from the first tier's numpy kernels
    # (convrt/runtime/tiers.py); the timed runs wait for the compiled ones
    start["first_tier"] = sess.first_tier
    sess.wait_compiled()
    start["compiled_s"] = time.time() - spec["t_spawn"]
    res = dict(start, version=getattr(convrt, "__version__", "dev"))
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


class _OVSession:
    """An OpenVINO compiled model behind onnxruntime's two session calls that ``_first_run`` and
    the timing loop use (``get_inputs``, ``run``), so every runtime is fed and timed by the same
    code.  One infer request is reused, as a serving loop would; the input is shared (like
    onnxruntime, which reads the caller's array) and the outputs are copied out (like
    onnxruntime's and convrt's fresh result arrays)."""

    def __init__(self, compiled):
        from types import SimpleNamespace

        self._req = compiled.create_infer_request()
        self._inputs = [SimpleNamespace(name=p.any_name,
                                        shape=[d.get_length() if d.is_static else None
                                               for d in p.get_partial_shape()])
                        for p in compiled.inputs]

    def get_inputs(self):
        return self._inputs

    def run(self, _output_names, feeds):
        return list(self._req.infer(feeds, share_inputs=True).to_tuple())


def run_ov(spec):
    """OpenVINO's CPU plugin on the ONNX file itself (its own reader, no conversion step), tuned
    for one request at a time (``PERFORMANCE_HINT: LATENCY``) on ``threads`` threads.
    ``ov_f32`` pins float32 inference (``INFERENCE_PRECISION_HINT: f32``): the float32 peer.
    ``ov_default`` leaves the precision to OpenVINO, which picks bfloat16 on a CPU with
    AVX512_BF16 or AMX: what a user gets out of the box, not float32-exact.  A symbolic batch
    dimension is fixed to ``batch`` before compiling (OpenVINO compiles static shapes best, and
    the other runtimes see the same batch on their first run)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(spec["model"])
    port = model.inputs[0]
    dims = port.get_partial_shape()
    if dims.is_dynamic:
        model.reshape({port: ov.PartialShape(
            [spec["batch"] if d.is_dynamic else d.get_length() for d in dims])})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": spec["threads"]}
    if spec["kind"] == "ov_f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(model, "CPU", config)
    sess = _OVSession(compiled)
    feeds, start = _first_run(sess, spec)
    ts = _measure(lambda: sess.run(None, feeds), spec)
    return dict(start, times_s=ts, version=ov.get_version(),
                precision=compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                config={k: str(v) for k, v in config.items()})


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
    fn = {"ort": run_ort, "convrt": run_convrt, "convrt_bf16": run_convrt, "ov_f32": run_ov,
          "ov_default": run_ov, "peak": run_peak}[spec["kind"]]
    res = fn(spec)
    res["peak_rss_mb"] = _rss_mb()
    res["pid"] = os.getpid()
    with open(spec["result"], "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
