"""Concurrency and determinism: one session shared by 8 threads, repeated runs bit-identical;
the threading layer (TBB: fork-safe), fork/spawn children, sessions built in worker threads, and
the thread-count rule (affinity mask, CONVRT_NUM_THREADS, intra_op_num_threads)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import convrt

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_vgg.onnx"
SMALL_VGG = ROOT / "sample_models" / "small_vgg.onnx"
CHILD_TIMEOUT = 120  # seconds: a hang (a pool waiting for a dead worker) fails, never blocks
N_THREADS = 8


def _tiny_resnet_bytes() -> bytes:
    import builders  # sample_models/ is on sys.path (conftest)

    g = builders._Graph(seed=3, opset=13)
    x = g.conv("input", 3, 16, 3, pad=1, name="c0", bn=True)
    x = g.relu6(x, name="r0")
    y = g.conv(x, 16, 16, 3, pad=1, group=16, name="dw", bias=False)
    y = g.conv(y, 16, 16, 1, name="pw")
    x = g.relu(g.add(x, y, name="res"), name="r1")
    x = g.maxpool(x, 2, 2, name="mp")
    x = g.flatten(g.gap(x, name="gap"), name="flat")
    x = g.gemm(x, 16, 5, name="fc")
    return builders._finish(g, "tiny_resnet", 3, 12, x, 5, "threading test").SerializeToString()


def _hammer(sess, name, xs, rounds=3):
    """Every thread runs every input ``rounds`` times, starting at a different one."""
    results: list[dict[int, list[np.ndarray]]] = [dict() for _ in range(N_THREADS)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS)

    def work(t):
        try:
            barrier.wait()
            for r in range(rounds):
                for k in range(len(xs)):
                    j = (t + k) % len(xs)
                    results[t].setdefault(j, []).append(sess.run(None, {name: xs[j]})[0])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not errors, errors
    return results


@pytest.mark.parametrize("model", ["digits", "tiny_resnet"])
def test_threads_match_serial_bitwise(model):
    if model == "digits":
        src, name, shape = str(DIGITS), "input", (1, 8, 8)
    else:
        src, name, shape = _tiny_resnet_bytes(), "input", (3, 12, 12)
    sess = convrt.InferenceSession(src)
    rng = np.random.default_rng(0)
    # mixed batch sizes: several plans are built and used concurrently
    xs = [rng.standard_normal((b,) + shape).astype(np.float32) for b in (1, 2, 3, 1, 4, 2)]
    serial = [sess.run(None, {name: x})[0] for x in xs]
    for j, x in enumerate(xs):  # repeated serial runs are bit-identical
        for _ in range(3):
            assert np.array_equal(sess.run(None, {name: x})[0], serial[j])
    results = _hammer(sess, name, xs)
    for per_thread in results:
        assert sorted(per_thread) == list(range(len(xs)))
        for j, outs in per_thread.items():
            for y in outs:
                assert y.dtype == serial[j].dtype and y.shape == serial[j].shape
                assert np.array_equal(y, serial[j]), f"input {j} differs under threads"
    # a fresh session (fresh plans, fresh arenas) computes the same bits
    fresh = convrt.InferenceSession(src)
    for j, x in enumerate(xs):
        assert np.array_equal(fresh.run(None, {name: x})[0], serial[j])


def test_outputs_are_not_aliased_to_arena():
    """A returned output must not change when the session runs again."""
    sess = convrt.InferenceSession(str(DIGITS))
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((2, 1, 8, 8)).astype(np.float32) for _ in range(2))
    ya = sess.run(None, {"input": a})[0]
    keep = ya.copy()
    sess.run(None, {"input": b})
    assert np.array_equal(ya, keep)


@pytest.mark.parametrize("total,grain", [(1, 1), (2, 1), (7, 3), (112, 7), (1000, 16)])
def test_two_ended_claims_partition_the_loop(total, grain):
    """``_claim_end`` with one worker at each end, claims interleaved at random (as two
    threads may): every item is claimed exactly once, the front worker's items are a prefix
    and the back worker's a suffix."""
    from convrt.kernels.conv._schedule import _claim_end

    rng = np.random.default_rng(total)
    for _ in range(20):
        ctr = np.zeros(1, np.int64)
        done = [0, 0]
        got: list[list[int]] = [[], []]
        live = [True, True]
        while any(live):
            side = int(rng.integers(2)) if all(live) else live.index(True)
            u0, u1 = _claim_end(ctr, total, grain, side, done[side])
            if u1 <= u0:
                live[side] = False
                continue
            done[side] += u1 - u0
            got[side].extend(range(u0, u1))
        front, back = sorted(got[0]), sorted(got[1])
        assert front == list(range(len(front)))
        assert back == list(range(total - len(back), total))
        assert sorted(front + back) == list(range(total))


def test_two_ended_claims_change_no_result():
    """The claim order never changes what an item computes: outputs are bitwise the same with
    one shared front (a VGG-like stack big enough for every step to run in parallel)."""
    import builders  # sample_models/ is on sys.path (conftest)

    import convrt.kernels.conv._schedule as conv

    g = builders._Graph(seed=4, opset=13)
    x = g.relu(g.conv("input", 3, 32, 3, pad=1, name="c0"), name="r0")
    x = g.relu(g.conv(x, 32, 64, 3, pad=1, name="c1"), name="r1")
    x = g.maxpool(x, 2, 2, name="mp")
    x = g.relu(g.conv(x, 64, 64, 3, pad=1, name="c2"), name="r2")
    y = g.conv(x, 64, 64, 3, pad=1, group=64, name="dw", bias=False)
    x = g.relu(g.add(x, y, name="res"), name="r3")
    x = g.flatten(g.gap(x, name="gap"), name="flat")
    x = g.gemm(x, 64, 5, name="fc")
    model = builders._finish(g, "claims", 3, 48, x, 5, "claims test")
    sess = convrt.InferenceSession(model.SerializeToString())
    name = sess.get_inputs()[0].name
    xs = np.random.default_rng(5).standard_normal((4, 3, 48, 48)).astype(np.float32)
    both = sess.run(None, {name: xs})[0]
    assert not all(s.serial for s in next(iter(sess._plans.values())).steps)
    try:
        conv.TWO_ENDS = False
        shared = sess.run(None, {name: xs})[0]
    finally:
        conv.TWO_ENDS = True
    np.testing.assert_array_equal(both, shared)


def _small_vgg_inputs(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, 3, 32, 32)).astype(np.float32) for b in (1, 2, 3, 2)[:n]]


def _python(script: str, env_extra=None, drop=("CONVRT_NUM_THREADS",), tmp_path=None):
    """Run ``script`` in a fresh interpreter (from a file, so spawn children can import it),
    bounded by CHILD_TIMEOUT; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                      if env.get("PYTHONPATH") else []))
    path = tmp_path / "child_script.py"
    path.write_text(textwrap.dedent(script))
    # its own process group, so a timeout also ends the pool workers it started
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"child did not finish in {CHILD_TIMEOUT} s (a hang); stderr: {err[-1000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_threading_layer_is_tbb_after_a_parallel_run():
    """convrt picks numba's TBB layer (convrt/kernels/_jit.py) unless the user chose one."""
    import numba

    from convrt.kernels import _jit

    sess = convrt.InferenceSession(str(SMALL_VGG))
    sess.run(None, {"input": _small_vgg_inputs(1)[0]})
    layer = numba.threading_layer()
    if "NUMBA_THREADING_LAYER" in os.environ:
        pytest.skip(f"the user chose numba's layer ({layer}); convrt leaves it alone")
    assert layer == "tbb", f"threading layer {layer}; TBB problem: {_jit.tbb_problem}"


_POOL_SCRIPT = """
    import multiprocessing
    import sys

    import numpy as np

    import convrt

    SESS = None


    def _init():
        global SESS
        if SESS is None:  # spawn: a fresh interpreter builds its own session
            SESS = convrt.InferenceSession({model!r})


    def work(seed):
        _init()
        x = np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype(np.float32)
        return SESS.run(None, {{"input": x}})[0]


    if __name__ == "__main__":
        SESS = convrt.InferenceSession({model!r})
        parent = [work(s) for s in range(4)]  # the parent has run (and started numba's pool)
        with multiprocessing.get_context({method!r}).Pool(2) as pool:
            children = pool.map(work, range(4))
        assert len(children) == 4
        for p, c in zip(parent, children):
            assert np.array_equal(p, c), float(np.abs(p - c).max())
        print("children-ok")
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_children_after_a_run(method, tmp_path):
    """A process that ran convrt starts a Pool (fork: inheriting the session and numba's pool
    state; spawn: fresh interpreters); the children compute what the parent computed.  In a
    subprocess, so a child killed by GNU OpenMP ("fork() called from a process already using
    GNU OpenMP") or a hang fails this test instead of the test run."""
    r = _python(_POOL_SCRIPT.format(model=str(SMALL_VGG), method=method), tmp_path=tmp_path)
    assert r.returncode == 0 and "children-ok" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_eight_threads_match_a_one_thread_session_bitwise():
    """8 Python threads on one (all-cores) session give the bits a 1-thread session gives."""
    sess = convrt.InferenceSession(str(SMALL_VGG))
    one = convrt.InferenceSession(str(SMALL_VGG), convrt.SessionOptions(intra_op_num_threads=1))
    xs = _small_vgg_inputs()
    serial = [one.run(None, {"input": x})[0] for x in xs]
    results = _hammer(sess, "input", xs, rounds=2)
    for per_thread in results:
        assert sorted(per_thread) == list(range(len(xs)))
        for j, outs in per_thread.items():
            for y in outs:
                assert np.array_equal(y, serial[j]), f"input {j} differs under threads"


def test_sessions_created_in_worker_threads():
    """Four sessions, each created and run inside its own ThreadPoolExecutor worker."""
    xs = _small_vgg_inputs()
    ref = convrt.InferenceSession(str(SMALL_VGG))
    expected = [ref.run(None, {"input": x})[0] for x in xs]

    def build_and_run(i):
        sess = convrt.InferenceSession(str(SMALL_VGG))
        return [sess.run(None, {"input": xs[(i + k) % len(xs)]})[0] for k in range(len(xs))]

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(build_and_run, range(4), timeout=CHILD_TIMEOUT))
    for i, got in enumerate(outs):
        for k, y in enumerate(got):
            assert np.array_equal(y, expected[(i + k) % len(xs)])


def test_thread_count_holds_in_every_calling_thread():
    """numba's thread count is per Python thread: each run sets its session's count in the
    thread that calls it, whatever that thread ran before."""
    import numba

    from convrt.runtime.threads import default_threads

    one = convrt.InferenceSession(str(SMALL_VGG), convrt.SessionOptions(intra_op_num_threads=1))
    full = convrt.InferenceSession(str(SMALL_VGG))
    x = _small_vgg_inputs(1)[0]
    seen = []

    def work():
        for sess in (one, full, one):
            sess.run(None, {"input": x})
            seen.append(numba.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join(CHILD_TIMEOUT)
    assert seen == [1, default_threads(), 1]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity API here")
def test_affinity_mask_of_one_cpu_gives_one_thread(tmp_path):
    """A process pinned to one CPU (taskset, cpusets) defaults to one thread, and a session
    there runs on one."""
    r = _python(f"""
        import os
        os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
        import numba
        import numpy as np
        import convrt
        from convrt.runtime.threads import resolve_threads
        sess = convrt.InferenceSession({str(SMALL_VGG)!r})
        sess.run(None, {{"input": np.zeros((1, 3, 32, 32), np.float32)}})
        print("threads", resolve_threads(0), sess._threads, numba.get_num_threads())
    """, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-4:] == ["threads", "1", "1", "1"], r.stdout


def test_env_var_and_option_set_the_count(monkeypatch):
    from convrt.runtime.threads import max_threads, resolve_threads

    monkeypatch.setenv("CONVRT_NUM_THREADS", "1")
    assert resolve_threads(0) == 1
    assert convrt.InferenceSession(str(SMALL_VGG))._threads == 1
    # the option wins over the variable (even a bad one: it is not read then)
    assert resolve_threads(max_threads()) == max_threads()
    monkeypatch.setenv("CONVRT_NUM_THREADS", "many")
    assert resolve_threads(1) == 1
    monkeypatch.setenv("CONVRT_NUM_THREADS", " ")  # empty = unset
    assert resolve_threads(0) == max_threads()


def _too_many():
    from convrt.runtime.threads import max_threads

    return max_threads() + 1


@pytest.mark.parametrize("value,words", [
    ("0", ["CONVRT_NUM_THREADS", "positive", "0"]),
    ("-2", ["CONVRT_NUM_THREADS", "positive", "-2"]),
    ("two", ["CONVRT_NUM_THREADS", "positive", "'two'"]),
    ("1.5", ["CONVRT_NUM_THREADS", "'1.5'"]),
    ("too-many", ["CONVRT_NUM_THREADS", "more than", "CPU"]),
])
def test_bad_env_var_is_one_line_input_error(value, words, monkeypatch):
    value = str(_too_many()) if value == "too-many" else value
    monkeypatch.setenv("CONVRT_NUM_THREADS", value)
    with pytest.raises(convrt.InputError) as e:
        convrt.InferenceSession(str(SMALL_VGG))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("value,words", [
    (-1, ["intra_op_num_threads", "-1"]),
    ("2", ["intra_op_num_threads", "integer", "'2'"]),
    (1.0, ["intra_op_num_threads", "integer", "1.0"]),
    (True, ["intra_op_num_threads", "integer", "True"]),
    ("too-many", ["intra_op_num_threads", "more than", "CPU"]),
])
def test_bad_option_is_one_line_input_error(value, words):
    value = _too_many() if value == "too-many" else value
    with pytest.raises(convrt.InputError) as e:
        convrt.InferenceSession(str(SMALL_VGG), convrt.SessionOptions(intra_op_num_threads=value))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_bad_env_var_through_the_cli_is_one_line(tmp_path):
    """The whole path a user sees: ``convrt run`` with a bad CONVRT_NUM_THREADS exits 1 with
    one ``convrt: error:`` line, no traceback, no hang."""
    env = {k: v for k, v in os.environ.items() if k != "CONVRT_NUM_THREADS"}
    env["CONVRT_NUM_THREADS"] = "0"
    r = subprocess.run([sys.executable, "-m", "convrt.cli", "run", str(SMALL_VGG)], check=False,
                       capture_output=True, text=True, timeout=CHILD_TIMEOUT, cwd=ROOT, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        "convrt: error: CONVRT_NUM_THREADS must be a positive integer, got 0"], r.stderr


def test_without_tbb_falls_back_to_passive_openmp_with_a_warning(tmp_path):
    """TBB not found (its wheel's lib/ and the loader both hidden): numba's default layer stays,
    OMP_WAIT_POLICY=PASSIVE is set for it, and one RuntimeWarning says fork is unsafe."""
    r = _python(f"""
        import ctypes.util, os, site, sys, warnings
        sys.prefix = sys.base_prefix = site.USER_BASE = {str(tmp_path)!r}
        ctypes.util.find_library = lambda name: None
        import numpy as np
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import convrt  # a light import: the kernels (and the layer choice) load on use
            sess = convrt.InferenceSession({str(SMALL_VGG)!r})
        import numba
        sess.run(None, {{"input": np.zeros((1, 3, 32, 32), np.float32)}})
        ours = [str(w.message) for w in caught if "TBB threading layer" in str(w.message)]
        try:  # a system TBB on the loader's path is one numba's own default would pick up
            ctypes.CDLL("libtbb.so.12")
            expect = "tbb"
        except OSError:
            expect = "omp"
        print(len(ours), "fork" in ours[0], os.environ.get("OMP_WAIT_POLICY"),
              numba.threading_layer(), expect)
    """, drop=("CONVRT_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY"),
                tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    count, mentions_fork, policy, layer, expect = r.stdout.split()[-5:]
    assert (count, mentions_fork, policy, layer) == ("1", "True", "PASSIVE", expect), r.stdout


def test_a_depthwise_step_with_many_outputs_is_parallel():
    """A 3x3 depthwise layer on 16x28x28 does under ``SERIAL_MACS`` multiply-adds but writes
    ``SERIAL_ELEMS``+ outputs: the plan runs it on every thread and the kernel takes its
    parallel driver (a depthwise layer's time follows its outputs); a smaller depthwise layer
    (8x14x14) stays serial."""
    from onnx import TensorProto, helper, numpy_helper

    from convrt.kernels.conv._schedule import SERIAL_ELEMS, SERIAL_MACS

    assert 16 * 28 * 28 * 9 < SERIAL_MACS and 16 * 28 * 28 >= SERIAL_ELEMS
    assert 8 * 14 * 14 < SERIAL_ELEMS
    steps = {}
    for c, hw in ((16, 28), (8, 14)):
        w = np.ones((c, 1, 3, 3), np.float32)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], group=c, pads=[1] * 4, name="dw")],
            "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, hw, hw])],
            [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        sess = convrt.InferenceSession(model.SerializeToString())
        sess.run(None, {"x": np.ones((1, c, hw, hw), np.float32)})
        plan = next(iter(sess._plans.values()))
        steps[c] = [s for s in plan.steps if s.op_type.endswith("Conv")]
        assert len(steps[c]) == 1
    assert not steps[16][0].serial and steps[8][0].serial
    from convrt.kernels.conv import Conv2d
    w = np.ones((16, 1, 3, 3), np.float32)
    kernel = Conv2d(w, None, (1, 16, 28, 28), (1, 1), (1, 1, 1, 1), (1, 1), 16)._dw._kernel
    assert kernel.py_func.__name__ == "_run_par", kernel  # the blocked depthwise kernel's


def test_a_step_that_reads_many_elements_is_parallel():
    """The serial rule counts the elements a step moves, its biggest input included: a stride-2
    3x3 depthwise layer (8x28x28 -> 14x14: under ``SERIAL_ELEMS`` outputs and ``SERIAL_MACS``
    multiply-adds, but four inputs read an output) and a global average pool over a 32x112x112
    map (32 outputs) run on every thread, plan and kernel alike."""
    from onnx import TensorProto, helper, numpy_helper

    from convrt.kernels.conv import Conv2d
    from convrt.kernels.conv._schedule import SERIAL_ELEMS, SERIAL_MACS

    assert 8 * 14 * 14 < SERIAL_ELEMS and 8 * 14 * 14 * 9 < SERIAL_MACS
    assert 8 * 28 * 28 >= SERIAL_ELEMS
    w = np.ones((8, 1, 3, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=8, pads=[1] * 4, strides=[2, 2],
                          name="dw"),
         helper.make_node("GlobalAveragePool", ["z"], ["p"], name="gap")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 28, 28]),
              helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 32, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 14, 14]),
         helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 32, 1, 1])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = convrt.InferenceSession(model.SerializeToString())
    x, z = np.ones((1, 8, 28, 28), np.float32), np.ones((1, 32, 112, 112), np.float32)
    y, p = sess.run(None, {"x": x, "z": z})
    np.testing.assert_allclose(p, 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[0, 0, 1:, 1:], 9.0)  # interior windows of ones
    plan = next(iter(sess._plans.values()))
    serial = {s.op_type: s.serial for s in plan.steps}
    assert serial == {"Conv": False, "GlobalAveragePool": False}, serial
    kernel = Conv2d(w, None, (1, 8, 28, 28), (2, 2), (1, 1, 1, 1), (1, 1), 8)._dw._kernel
    assert kernel.py_func.__name__ == "_run_par", kernel
