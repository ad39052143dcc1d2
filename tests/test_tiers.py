"""The tiered start (convrt/runtime/tiers.py, issue #16): on an empty numba cache a session
answers with the first tier's numpy kernels (kernels/first_tier.py) while numba compiles in the
background, then switches to its compiled kernels.

* The first tier against the oracles the compiled kernels answer to: ONNX's node cases for the
  ops it replaces, and every PyTorch family fixture (fused convolutions with each activation,
  residuals, depthwise and grouped layers, pools, GEMMs), through sessions held on the first
  tier (``held_first_tier``: the warm-up is told the cache missed, and the background compile
  waits for the test).
* The switch: the same session before and after its compile, other batch sizes meanwhile,
  ``wait_compiled`` with a timeout.
* The real thing, in fresh processes with an empty ``NUMBA_CACHE_DIR``: the compile fence
  learns of a miss without compiling, the session starts on the first tier and switches, the
  next process finds the cache warm and starts compiled; a fork waits for the compile;
  garbled or truncated cache files send the session to the first tier and a recompile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from family_fixtures import load_fixture
from oracle import run_ort
from test_onnx_conformance import node_cases, run_case
from test_torch_families import DATA, FAMILIES, FORWARD_TOL

import convrt
from convrt.runtime import tiers

ROOT = Path(__file__).resolve().parents[1]
FIRST_TIER_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                  "Gemm", "MatMul", "Softmax", "LogSoftmax"}
TIMEOUT = 600


@pytest.fixture
def held_first_tier(monkeypatch):
    """Sessions created in the test start on the first tier, as on an empty numba cache (the
    warm-up's ``build_cached`` reports a miss), and their background compile waits until the
    returned event is set; one the test did not release is skipped when it ends."""
    gate = threading.Event()
    skip = threading.Event()
    jobs = []
    real = tiers.Background

    class Held(real):
        def __init__(self, name, work, done):
            def held():
                gate.wait()
                if not skip.is_set():
                    work()

            super().__init__(name, held, done)
            jobs.append(self)

    monkeypatch.setattr(tiers, "build_cached", lambda build, feeds: None)
    monkeypatch.setattr(tiers, "Background", Held)
    monkeypatch.setenv("CONVRT_TIERED_START", "1")
    yield gate
    if not gate.is_set():
        skip.set()
        gate.set()
    for job in jobs:
        assert job.wait(TIMEOUT)


def _first_tier_cases():
    return [pytest.param(model, sets, rtol, atol, id=name)
            for name, model, sets, rtol, atol in node_cases()
            if {n.op_type for n in model.graph.node} & FIRST_TIER_OPS]


@pytest.mark.parametrize("model,data_sets,rtol,atol", _first_tier_cases())
def test_first_tier_passes_the_onnx_node_cases(model, data_sets, rtol, atol, held_first_tier,
                                               monkeypatch):
    made = []
    real = convrt.InferenceSession

    def tracked(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(convrt, "InferenceSession", tracked)
    run_case(model, data_sets, rtol, atol)
    sess, = made
    inputs = sess.get_inputs()
    if all(i.type == "tensor(float)" and all(isinstance(d, int) for d in i.shape)
           for i in inputs):
        assert sess.first_tier  # the case really ran on the first tier


@pytest.mark.parametrize("family", FAMILIES)
def test_first_tier_matches_torch(family, held_first_tier):
    model, arrays, meta = load_fixture(DATA / f"{family}.npz")
    sess = convrt.InferenceSession(model.SerializeToString())
    assert sess.first_tier
    outs = sess.run(None, {"input": arrays["x"]})
    assert sess.first_tier
    assert len(outs) == len(meta["outputs"])
    for i, got in enumerate(outs):
        ref = arrays[f"y{i}"]
        assert got.shape == ref.shape and got.dtype == ref.dtype, (i, got.shape, ref.shape)
        scale = float(np.abs(ref).max())
        err = float(np.abs(got - ref).max())
        assert scale > 0 and err <= FORWARD_TOL * scale, (family, i, err, scale)


def test_session_switches_to_compiled_kernels(held_first_tier):
    model, arrays, _ = load_fixture(DATA / "resnet18.npz")
    for v in (model.graph.input[0], model.graph.output[0]):  # a symbolic batch
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    sess = convrt.InferenceSession(model.SerializeToString())
    assert sess.first_tier and not sess.wait_compiled(timeout=0.05)
    x = arrays["x"]
    refs = {n: run_ort(model, {"input": x[:n]})[0] for n in (1, 2)}
    first = {n: sess.run(None, {"input": x[:n]})[0] for n in (2, 1)}
    # the warm-up planned batch 1; batch 2 got a first-tier plan of its own
    assert sess.first_tier and len(sess._tier.plans) == 2
    held_first_tier.set()
    assert sess.wait_compiled(timeout=TIMEOUT)
    assert not sess.first_tier and not sess._tier.plans
    compiled = {n: sess.run(None, {"input": x[:n]})[0] for n in (1, 2)}
    assert all(not p.first_tier for p in sess._plans.values()) and len(sess._plans) == 2
    for n, ref in refs.items():
        scale = float(np.abs(ref).max())
        for got in (first[n], compiled[n]):
            assert got.shape == ref.shape
            assert float(np.abs(got - ref).max()) <= FORWARD_TOL * scale, n


def test_a_failed_background_compile_leaves_the_session_planning_as_usual(monkeypatch):
    """Whatever the background compile raises, the session leaves the first tier and plans
    its compiled kernels on the next run (which then reports any error itself)."""
    real = tiers.Background

    class Failing(real):
        def __init__(self, name, work, done):
            def fail():
                raise RuntimeError("compile failed")

            super().__init__(name, fail, done)

    monkeypatch.setattr(tiers, "build_cached", lambda build, feeds: None)
    monkeypatch.setattr(tiers, "Background", Failing)
    monkeypatch.setenv("CONVRT_TIERED_START", "1")
    model, arrays, _ = load_fixture(DATA / "resnet18.npz")
    sess = convrt.InferenceSession(model.SerializeToString())
    assert sess.wait_compiled(timeout=TIMEOUT) and not sess.first_tier
    assert isinstance(sess._tier.job.error, RuntimeError)
    got = sess.run(None, {"input": arrays["x"]})[0]
    ref = arrays["y0"]
    assert float(np.abs(got - ref).max()) <= FORWARD_TOL * float(np.abs(ref).max())
    assert len(sess._plans) == 1


# Creates a session on the model in argv[1] and prints, in order: whether it started on the
# first tier, its first output's error against onnxruntime, whether it switched, the compiled
# output's error; then forks (the fork waits for any compile in progress) and the child runs.
_TIERED = """
import os, sys, numpy as np, onnxruntime as ort, convrt
path = sys.argv[1]
sess = convrt.InferenceSession(path)
print("FIRST_TIER", sess.first_tier, flush=True)
arg = sess.get_inputs()[0]
x = np.random.default_rng(1).standard_normal(arg.shape).astype(np.float32)
r = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {arg.name: x})[0]
y = sess.run(None, {arg.name: x})[0]
print("ERR", float(np.abs(y - r).max()), float(np.abs(r).max()), flush=True)
if sys.argv[2] == "fork":
    pid = os.fork()
    if pid == 0:
        y = sess.run(None, {arg.name: x})[0]
        os._exit(0 if float(np.abs(y - r).max()) <= 1e-5 * float(np.abs(r).max()) else 3)
    print("CHILD", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), sess.first_tier)
print("SWITCHED", sess.wait_compiled(600), sess.first_tier)
y = sess.run(None, {arg.name: x})[0]
print("ERR", float(np.abs(y - r).max()), float(np.abs(r).max()))
"""


def _run_tiered(model, cache, mode):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT),
               CONVRT_TIERED_START="1")
    proc = subprocess.run([sys.executable, "-c", _TIERED, str(model), mode], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for line in lines:
        if line.startswith("ERR "):
            diff, scale = map(float, line.split()[1:])
            assert diff <= 1e-5 * max(scale, 1.0), line
    return lines, proc.stderr


def test_empty_cache_starts_on_the_first_tier_then_the_next_process_is_warm(tmp_path):
    from test_cold_start import _gemm

    model, cache = _gemm(tmp_path), tmp_path / "numba"
    lines, err = _run_tiered(model, cache, "fork")
    assert lines[0] == "FIRST_TIER True", lines
    child = next(ln for ln in lines if ln.startswith("CHILD"))
    assert child == "CHILD 0 False", lines  # the fork waited for the compile to finish
    assert "SWITCHED True False" in lines, lines
    lines, _ = _run_tiered(model, cache, "nofork")
    assert lines[0] == "FIRST_TIER False", lines  # every kernel was cached by the first process
    assert "SWITCHED True False" in lines, lines


def test_compile_fence_reports_a_miss_without_compiling(tmp_path):
    code = """
import numpy as np
from convrt.kernels._jit import CompileNeeded, compile_fence
from convrt.kernels.gemm import bias_operand, gemm_nt
a = np.ones((2, 3), np.float32); b = np.ones((4, 3), np.float32)
out = np.zeros((2, 4), np.float32); c = bias_operand(np.zeros((2, 4), np.float32), np.float32)
try:
    with compile_fence():
        gemm_nt(a, b, *c, out, 1.0, 0.0, 0)
    print("LOADED", float(out.sum()))
except CompileNeeded as e:
    print("MISS", e, len(gemm_nt.overloads))
gemm_nt(a, b, *c, out, 1.0, 0.0, 0)
print("RAN", float(out.sum()))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=str(ROOT))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT),
                           capture_output=True, text=True, timeout=TIMEOUT) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    first, second = (r.stdout.splitlines() for r in runs)
    assert first == ["MISS convrt.kernels.gemm.gemm_nt 0", "RAN 24.0"], first
    assert second == ["LOADED 24.0", "RAN 24.0"], second


def test_corrupt_cache_files_mean_the_first_tier_then_a_recompile(tmp_path):
    """Issue #16's bad input with the tiered start on: garbled and truncated cache files are
    cache misses (never loaded machine code), so the session starts on the first tier, matches
    onnxruntime, recompiles in the background, and the process after it starts compiled."""
    from test_cold_start import _cache_files, _gemm

    model, cache = _gemm(tmp_path), tmp_path / "numba"
    lines, _ = _run_tiered(model, cache, "nofork")
    assert lines[0] == "FIRST_TIER True", lines
    files = _cache_files(cache)
    assert files
    for i, path in enumerate(files):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if i % 2 else
                         np.random.default_rng(i).bytes(len(data)))
    lines, _ = _run_tiered(model, cache, "nofork")
    assert lines[0] == "FIRST_TIER True" and "SWITCHED True False" in lines, lines
    lines, _ = _run_tiered(model, cache, "nofork")
    assert lines[0] == "FIRST_TIER False", lines
