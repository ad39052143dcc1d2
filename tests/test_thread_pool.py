"""convrt's own parallel_for (kernels/_pool.py): installed in place of numba's, it runs the
regions' chunks on its helper threads, keeps numba's per-thread reduction slots apart, hands a
region it cannot take (another thread's, a nested one) to numba's own layer, survives a fork,
and changes no result bit."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import llvmlite.binding as ll
import numba
import numpy as np
import pytest

from convrt.kernels import _pool
from convrt.kernels.conv import _schedule  # noqa: F401  (declares parallel kernels: installs)

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 120


def _pool_for_this_machine():
    """The pool must be in use wherever it can be (Linux on x86-64, the user's
    threading layer not forced, the pool not switched off)."""
    supported = sys.platform.startswith("linux") and _pool._SYS_FUTEX is not None
    if not supported or os.environ.get(_pool.ENV_VAR) == "0" or (
            "NUMBA_THREADING_LAYER" in os.environ):
        assert not _pool._installed and _pool.problem
        pytest.skip(f"the pool is off here, as documented: {_pool.problem}")
    assert _pool._installed, _pool.problem


@numba.njit(parallel=True)
def _int_sum(x):
    s = 0
    for i in numba.prange(x.size):
        s += x[i]
    return s


@numba.njit(parallel=True)
def _slow_halves(out, reps):
    """Two chunks of ~ms each: long enough for the helper to claim one."""
    for t in numba.prange(2):
        acc = 0.0
        for i in range(reps):
            acc += np.sqrt(i + t + 1.0)
        out[t] = acc


@numba.njit
def _inner(x):
    return _int_sum(x)


@numba.njit(parallel=True)
def _nested(xs):
    out = np.zeros(xs.shape[0], np.int64)
    for i in numba.prange(xs.shape[0]):
        out[i] = _inner(xs[i])
    return out


def test_the_pool_replaces_numbas_parallel_for():
    _pool_for_this_machine()
    ours = _pool._wrapper_address(_pool.parallel_for, (numba.types.int64,) * 8)
    assert ll.address_of_symbol("numba_parallel_for") == ours
    assert _pool._state[_pool.HELPERS] == min(_pool._usable_cpus(),
                                              numba.config.NUMBA_NUM_THREADS) - 1


def test_helpers_run_chunks_and_results_are_right():
    _pool_for_this_machine()
    if _pool._state[_pool.HELPERS] == 0:
        pytest.skip("one usable CPU: no helper threads")
    numba.set_num_threads(2)
    out = np.zeros(2)
    before = _pool._state[_pool.HELPED]
    for _ in range(50):  # the helper claims a chunk unless the caller took both first
        _slow_halves(out, 200_000)
        if _pool._state[_pool.HELPED] > before:
            break
    assert _pool._state[_pool.HELPED] > before
    want = [np.sum(np.sqrt(np.arange(200_000) + t + 1.0)) for t in range(2)]
    np.testing.assert_allclose(out, want, rtol=1e-12)


def test_reductions_from_many_python_threads_are_exact():
    """numba's reductions index per-thread slots by get_thread_id: the pool's helpers, the
    region's caller and the threads numba's own layer runs (the regions the pool hands over
    while it is busy) must never share a slot.  Integer sums are exact, so any lost or doubled
    update shows."""
    x = np.arange(1, 4_000_001, dtype=np.int64)  # ms per chunk: the two chunks overlap
    want = int(x.sum())
    for _ in range(10):
        assert _int_sum(x) == want
    errors = []

    def worker():
        for _ in range(10):
            got = _int_sum(x)
            if got != want:
                errors.append(got)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_region_inside_a_region_goes_to_numbas_layer():
    xs = np.arange(8 * 10_000, dtype=np.int64).reshape(8, 10_000)
    np.testing.assert_array_equal(_nested(xs), xs.sum(axis=1))
    assert _pool._state[_pool.BUSY] == 0


def test_sessions_give_the_same_bits_with_and_without_the_pool():
    """Every chunk computes the same outputs whichever thread runs it: the pool (helpers on)
    and numba's layer (helpers set to 0, so every region is handed over) agree bitwise."""
    _pool_for_this_machine()
    import convrt

    sess = convrt.InferenceSession(str(ROOT / "sample_models" / "small_vgg.onnx"),
                                   convrt.SessionOptions(intra_op_num_threads=2,
                                                         tiered_start=False))
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(
        [2 if not isinstance(d, int) else d for d in inp.shape]).astype(np.float32)
    helpers = int(_pool._state[_pool.HELPERS])
    try:
        _pool._state[_pool.HELPERS] = 0
        ref = sess.run(None, {inp.name: x})[0]
    finally:
        _pool._state[_pool.HELPERS] = helpers
    for _ in range(3):
        np.testing.assert_array_equal(sess.run(None, {inp.name: x})[0], ref)


def _child_sum(q):
    x = np.arange(1, 100_001, dtype=np.int64)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    q.put((int(_int_sum(x)), [t.is_alive() for t in _pool._threads],
           int(_pool._state[_pool.BUSY])))


def test_a_forked_child_starts_its_own_helpers():
    _pool_for_this_machine()
    x = np.arange(1, 100_001, dtype=np.int64)
    assert _int_sum(x) == int(x.sum())
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_sum, args=(q,))
    p.start()
    got, alive, busy = q.get(timeout=CHILD_TIMEOUT)
    p.join(CHILD_TIMEOUT)
    assert p.exitcode == 0
    assert got == int(x.sum())
    assert alive and all(alive) and len(alive) == _pool._state[_pool.HELPERS]
    assert busy == 0


def test_the_environment_switch_keeps_numbas_layer(tmp_path):
    code = textwrap.dedent("""
        import llvmlite.binding as ll, numba, numpy as np
        from convrt.kernels import _pool
        from convrt.kernels.conv import _schedule
        @numba.njit(parallel=True)
        def s(x):
            t = 0
            for i in numba.prange(x.size):
                t += x[i]
            return t
        x = np.arange(1000, dtype=np.int64)
        print(_pool._installed, _pool.problem, s(x) == x.sum())
    """)
    env = dict(os.environ, CONVRT_THREAD_POOL="0")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=CHILD_TIMEOUT, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "CONVRT_THREAD_POOL=0", "True"], r.stdout
