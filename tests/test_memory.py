"""A session's memory as batch sizes vary (issue #22): plans share packed weights and one pool
of activation arenas, the plan cache is bounded (LRU by count and bytes), and a memory limit is
a one-line error before anything is allocated."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from convrt import InferenceSession, SessionOptions
from convrt.errors import ConvrtError


def dyn_model(seed=0):
    """x [N, 16, 12, 12] -> Conv 3x3 (32) -> Relu -> Conv 3x3 (32) -> Flatten -> Gemm (10)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.1, n)
             for n, s in (("w0", (32, 16, 3, 3)), ("b0", (32,)), ("w1", (32, 32, 3, 3)),
                          ("b1", (32,)), ("fc", (32 * 12 * 12, 10)), ("fb", (10,)))]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c1"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"])]
    graph = helper.make_graph(
        nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feed(n, seed=1):
    return {"x": np.random.default_rng(seed + n).standard_normal((n, 16, 12, 12))
            .astype(np.float32)}


def session(**opts):
    """A session of ``dyn_model``; no warm-up run, so the counts below are the runs' own."""
    o = SessionOptions()
    o.warm_up = False
    o.intra_op_num_threads = 2
    for k, v in opts.items():
        setattr(o, k, v)
    return InferenceSession(dyn_model().SerializeToString(), o)


def conv_impls(plan):
    """The bound convolution algorithm objects of a plan, in node order (the plan keeps each
    Conv's bound kernel for its zero-bordered handoffs)."""
    return [reads.impl for _, reads, _ in plan._links if reads is not None]


def packed_of(impl):
    return impl._wino.up if hasattr(impl, "_wino") else impl._wp


def test_plans_of_several_batch_sizes_share_packed_weights():
    sess = session()
    for n in (1, 2, 4):
        sess.run(None, feed(n))
    assert len(sess._plans) == 3
    assert sess._packs.misses == 3  # two convolutions and the Gemm's (K, M) copy, once each
    assert sess._packs.hits == 6  # the plans of batch 2 and 4 found all three
    impls = [conv_impls(p) for p in sess._plans.values()]
    assert all(len(i) == 2 for i in impls)
    for other in impls[1:]:
        for a, b in zip(impls[0], other):
            assert packed_of(a) is packed_of(b)  # one copy, not one per batch size


def test_outputs_match_a_session_that_planned_one_batch_size_only():
    sess = session()
    for n in (1, 3, 2, 3, 1):
        got = sess.run(None, feed(n))[0]
        alone = session().run(None, feed(n))[0]
        np.testing.assert_array_equal(got, alone)


def test_the_arena_is_reused_by_a_smaller_batch():
    sess = session()
    sess.run(None, feed(4))
    pool = sess._pool
    grown, allocated = pool.grown, pool.allocated
    for n in (1, 2, 3, 4, 1):
        sess.run(None, feed(n))
    assert pool.grown == grown and pool.allocated == allocated  # no growth, one arena
    big = max(p.arena_bytes for p in sess._plans.values())
    assert allocated == big and len(pool._free) == 1


def test_the_arena_grows_to_the_largest_plan_only():
    sess = session()
    sess.run(None, feed(1))
    sess.run(None, feed(4))
    assert sess._pool.allocated == max(p.arena_bytes for p in sess._plans.values())


def test_the_plan_cache_evicts_the_least_recently_used_by_count():
    sess = session(max_cached_plans=2)
    for n in (1, 2):
        sess.run(None, feed(n))
    sess.run(None, feed(1))  # batch 1 is now the most recent
    sess.run(None, feed(3))  # drops batch 2, not batch 1
    assert [k[0][1][0] for k in sess._plans] == [1, 3]  # keys: ((name, shape, value),)


def test_the_plan_cache_evicts_by_bytes_and_the_arena_shrinks():
    probe = session()
    probe.run(None, feed(1))
    one = next(iter(probe._plans.values()))
    per_image = one.arena_bytes + one.scratch_bytes
    sess = session(plan_cache_bytes=per_image * 5)
    sess.run(None, feed(4))
    sess.run(None, feed(1))  # 4 + 1 images fit
    assert len(sess._plans) == 2
    sess.run(None, feed(2))  # 4 + 1 + 2 do not: batch 4 (least recent) goes
    assert [k[0][1][0] for k in sess._plans] == [1, 2]
    assert sess._pool.high < one.arena_bytes * 4  # shrank from batch 4's
    sess.run(None, feed(2))
    assert sess._pool.allocated == max(p.arena_bytes for p in sess._plans.values())


def test_concurrent_runs_of_two_batch_sizes_on_one_session():
    sess = session()
    want = {n: session().run(None, feed(n))[0] for n in (1, 3)}
    got: list = []
    errors: list = []

    def work(n):
        try:
            for _ in range(6):
                got.append((n, sess.run(None, feed(n))[0]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 3, 1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 24
    for n, y in got:
        np.testing.assert_array_equal(y, want[n])
    assert sess._pool.allocated == len(sess._pool._free) * sess._pool.high


def test_release_memory_frees_plans_arenas_and_packs():
    sess = session()
    y = sess.run(None, feed(2))[0]
    sess.release_memory()
    assert not sess._plans and sess._pool.allocated == 0 and sess._packs.nbytes == 0
    np.testing.assert_array_equal(sess.run(None, feed(2))[0], y)


def test_memory_limit_too_small_is_one_line_at_plan_time():
    sess = session(memory_limit=600_000)  # weights and packs fit (~480 KB); activations not
    with pytest.raises(ConvrtError) as e:
        sess.run(None, feed(8))
    msg = str(e.value)
    assert "\n" not in msg and "memory_limit of 600000" in msg and " need " in msg
    assert not sess._pool.allocated  # nothing allocated


def test_memory_limit_too_small_for_the_weights_fails_at_load():
    with pytest.raises(ConvrtError) as e:
        session(memory_limit=10_000)
    msg = str(e.value)
    assert "\n" not in msg and "10000" in msg


def test_without_the_arena_option_each_run_frees_its_arena():
    sess = session(enable_cpu_mem_arena=False)
    y = sess.run(None, feed(2))[0]
    assert sess._pool.allocated == 0 and not sess._pool._free
    np.testing.assert_array_equal(y, session().run(None, feed(2))[0])


_MALLOC_PROBE = r"""
import sys
import numpy as np
from convrt.runtime.malloc import loading

def where(a):
    addr = a.ctypes.data
    for line in open("/proc/self/maps"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        if lo <= addr < hi:
            return "heap" if line.rstrip().endswith("[heap]") else "mmap"

def probe():
    big = np.ones(8 << 20, np.uint8)  # an 8 MiB block freed: glibc's dynamic threshold
    del big                            # would now rise to 8 MiB
    return where(np.ones(2 << 20, np.uint8))  # 2 MiB

with loading():
    inside = probe()
print(inside, probe())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps") or "MALLOC_MMAP_THRESHOLD_" in os.environ,
                    reason="needs Linux /proc and glibc's default malloc settings")
@pytest.mark.parametrize("env, places", [
    ({}, ["mmap", "heap"]),  # while loading: its own mapping; after: the heap, reused
    ({"CONVRT_MALLOC_TUNING": "0"}, ["heap", "heap"]),  # the opt-out leaves glibc's rule
])
def test_loading_maps_large_temporaries_and_then_returns_them_to_the_heap(env, places):
    """While a model loads, a multi-MiB temporary freed earlier no longer sends the next ones
    to the heap, where their holes would stay resident; afterwards large arrays come from
    the heap again, so outputs are not mapped and faulted in on every run
    (convrt/runtime/malloc.py)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], capture_output=True,
                         text=True, cwd=root, env={**os.environ, **env}, check=True)
    assert out.stdout.split() == places


def test_a_dropped_session_is_freed_without_waiting_for_the_cycle_collector():
    """Its packed weights and arenas go when the last reference does: the session is not part
    of a reference cycle (an arena-pool callback holding it was one, freeing 40 MB of ResNet-18's
    packs only at the next full collection)."""
    import gc
    import weakref

    sess = session()
    sess.run(None, feed(2))
    refs = [weakref.ref(o) for o in (sess, sess._packs, sess._pool)]
    enabled = gc.isenabled()
    gc.disable()
    try:
        del sess
        assert [r() for r in refs] == [None, None, None]
    finally:
        if enabled:
            gc.enable()
