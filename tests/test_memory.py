"""A session's memory as batch sizes vary (issue #22): plans share packed weights and one pool
of activation arenas, the plan cache is bounded (LRU by count and bytes), and a memory limit is
a one-line error before anything is allocated."""

from __future__ import annotations

import math
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


_TRIM_PROBE = r"""
import os
import numpy as np
from convrt.runtime.malloc import loading

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

with loading():
    pass
a = np.ones(8 << 20, np.uint8)  # like a run's output copy, on top of the heap
before = rss()
del a
print("kept" if before - rss() < (4 << 20) else "returned")
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or "MALLOC_MMAP_THRESHOLD_" in os.environ
                    or "MALLOC_TRIM_THRESHOLD_" in os.environ,
                    reason="needs Linux /proc and glibc's default malloc settings")
@pytest.mark.parametrize("env, fate", [
    ({}, "kept"),  # the next run's output reuses its pages instead of faulting them in again
    ({"CONVRT_MALLOC_TUNING": "0"}, "returned"),  # glibc's own rule: mapped, then unmapped
])
def test_a_dropped_output_copy_keeps_its_pages_for_the_next_run(env, fate):
    """After loading, a multi-MiB block freed at the top of the heap stays resident (the trim
    threshold follows the fixed mmap threshold: convrt/runtime/malloc.py), so a model with a
    large output does not fault its output copy in on every run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _TRIM_PROBE], capture_output=True,
                         text=True, cwd=root, env={**os.environ, **env}, check=True)
    assert out.stdout.split() == [fate]


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


# -- released weights (convrt/weights.py): packed layers' originals are not kept --------------

def bn_model(seed=0):
    """x [N, 8, 10, 10] -> Conv 3x3 (16, no bias) -> BatchNormalization -> Relu -> Conv 3x3 (16):
    fold_batchnorm derives the first Conv's weights, so no file holds them."""
    rng = np.random.default_rng(seed)
    arr = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("cw", arr(16, 8, 3, 3) * 0.2), ("g", arr(16)), ("be", arr(16)), ("mu", arr(16)),
        ("var", np.abs(arr(16)) + 0.5), ("cw2", arr(16, 16, 3, 3) * 0.1), ("cb2", arr(16)))]
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Conv", ["r", "cw2", "cb2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 10, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def bn_feed(n, seed=3):
    return {"x": np.random.default_rng(seed + n).standard_normal((n, 8, 10, 10))
            .astype(np.float32)}


def _source(kind, model, tmp_path):
    """The model as the session is given it: a file path, its bytes, or the ModelProto."""
    if kind == "path":
        path = tmp_path / "m.onnx"
        path.write_bytes(model.SerializeToString())
        return str(path)
    return model.SerializeToString() if kind == "bytes" else model


def _session(src, **opts):
    o = SessionOptions()
    o.intra_op_num_threads = 2
    for k, v in opts.items():
        setattr(o, k, v)
    return InferenceSession(src, o)


def _kept(monkeypatch):
    """Sessions made after this keep every weight (the behaviour before releasing)."""
    from convrt.weights import ReleasedWeights
    monkeypatch.setattr(ReleasedWeights, "release", lambda self, names: 0)


def _conv_weights(sess):
    return {n: v for n, v in sess.graph.initializers.items() if v.shape and len(v.shape) == 4}


@pytest.mark.parametrize("kind", ["path", "bytes", "proto"])
@pytest.mark.parametrize("make, feeder", [(dyn_model, feed), (bn_model, bn_feed)])
def test_packed_weights_are_freed_and_outputs_are_bitwise_unchanged(kind, make, feeder,
                                                                    tmp_path, monkeypatch):
    """The warm-up packs every convolution; the originals are then released and their arrays
    freed (nothing holds them: not the graph, the plans or the pack cache), while runs of new
    batch sizes give bit for bit what a session keeping them gives."""
    import gc
    import weakref

    src = _source(kind, make(), tmp_path)
    o = SessionOptions()
    o.warm_up = False
    sess = InferenceSession(src, o)
    refs = {n: weakref.ref(v.const) for n, v in _conv_weights(sess).items()}
    assert len(refs) == 2
    kept = {n for n, v in sess.original_graph.initializers.items()
            if n in refs and v.const is refs[n]()}  # the loaded array, unchanged by the passes
    sess._warm_up()
    gc.collect()
    released = [n for n, v in sess.graph.initializers.items() if v.released]
    assert sorted(released) == sorted(refs)
    assert all(v.has_const for v in sess.graph.initializers.values())  # still constants
    # a path's weights can be read again from the file; for bytes or a ModelProto the session
    # keeps the loaded graph for that (weights.py reloader): what the passes derived is freed,
    # what they kept stays there, held once
    for n, r in refs.items():
        assert (r() is None) == (kind == "path" or n not in kept), n
    assert kind == "path" or kept == ({"w0", "w1"} if make is dyn_model else {"cw2"})
    assert sess._weights.released_bytes == sum(
        math.prod(v.shape) * 4 for v in _conv_weights(sess).values())
    want = {}
    with monkeypatch.context() as m:
        _kept(m)
        keeper = _session(_source(kind, make(), tmp_path))
        assert not any(v.released for v in keeper.graph.initializers.values())
        for n in (1, 3, 2):
            want[n] = keeper.run(None, feeder(n))[0]
    for n in (1, 3, 2, 1):  # batch 3 and 2 are new plans after the release
        np.testing.assert_array_equal(sess.run(None, feeder(n))[0], want[n])
    assert sorted(n for n, v in sess.graph.initializers.items() if v.released) == sorted(refs)


def test_a_new_batch_size_reads_no_released_weight(tmp_path, monkeypatch):
    """Plans of new batch sizes find the packed weights in the cache by the weight's Value:
    restoring one would bring the memory back on every new batch size."""
    from convrt.weights import ReleasedWeights

    sess = _session(_source("path", bn_model(), tmp_path))
    assert any(v.released for v in sess.graph.initializers.values())
    calls = []
    monkeypatch.setattr(ReleasedWeights, "_restore", lambda self, v: calls.append(v.name))
    for n in (2, 5, 7):
        sess.run(None, bn_feed(n))
    assert calls == [] and sess._packs.misses == 2 and len(sess._plans) == 3


@pytest.mark.parametrize("make", [dyn_model, bn_model])
@pytest.mark.parametrize("kind", ["path", "bytes", "proto"])
def test_a_released_weight_reads_back_bitwise(make, kind, tmp_path, monkeypatch):
    """``Value.const`` of a released weight restores it: from the model file's span when the
    array was the file's bytes, else by loading and optimizing the source again."""
    with monkeypatch.context() as m:
        _kept(m)
        want = {n: v.const.copy() for n, v in _conv_weights(
            _session(_source(kind, make(), tmp_path))).items()}
    sess = _session(_source(kind, make(), tmp_path))
    weights = _conv_weights(sess)
    assert all(v.released for v in weights.values())
    from_file = set(sess._weights._from_file)
    if kind != "path":
        assert not from_file
    else:  # the file's bytes are read again (no reload); a BN-folded weight is derived anew
        assert from_file == ({"w0", "w1"} if make is dyn_model else {"cw2"})
    for n, v in weights.items():
        np.testing.assert_array_equal(v.const, want[n])
        assert not v.released
    sess.run(None, (feed if make is dyn_model else bn_feed)(4))  # a new plan releases again
    assert all(v.released for v in weights.values())


def test_release_memory_repacks_from_the_restored_weights(tmp_path):
    sess = _session(_source("path", dyn_model(), tmp_path))
    y = sess.run(None, feed(2))[0]
    sess.release_memory()
    np.testing.assert_array_equal(sess.run(None, feed(2))[0], y)
    assert sess._packs.misses == 6  # packed twice: before and after release_memory
    assert all(v.released for v in _conv_weights(sess).values())


@pytest.mark.parametrize("kind", ["path", "bytes"])
def test_pickling_and_writing_the_optimized_model_after_the_release(kind, tmp_path):
    """Both read every weight: they restore the released ones for the copy they make, and the
    session releases them again afterwards."""
    import pickle

    import onnxruntime as ort

    sess = _session(_source(kind, bn_model(), tmp_path))
    y = sess.run(None, bn_feed(3))[0]
    clone = pickle.loads(pickle.dumps(sess))
    np.testing.assert_array_equal(clone.run(None, bn_feed(3))[0], y)
    out = tmp_path / "opt.onnx"
    sess._write_optimized(str(out))
    assert all(v.released for v in _conv_weights(sess).values())
    ref = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ref.run(None, bn_feed(3))[0], y, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(_session(str(out)).run(None, bn_feed(3))[0], y)


@pytest.mark.parametrize("change", ["rewrite", "delete"])
def test_a_model_file_changed_under_the_session(change, tmp_path):
    """Runs and new batch sizes never read the file again; reading a released weight back
    from a file rewritten in place or deleted is a one-line error, never another model's
    weights (and never a SIGBUS: the file is not mapped)."""
    path = _source("path", dyn_model(), tmp_path)
    sess = _session(path)
    y = sess.run(None, feed(2))[0]
    if change == "rewrite":
        with open(path, "wb") as f:  # in place: same inode, new bytes
            f.write(dyn_model(seed=7).SerializeToString())
    else:
        os.remove(path)
    np.testing.assert_array_equal(sess.run(None, feed(2))[0], y)
    sess.run(None, feed(6))  # a new plan
    v = next(iter(_conv_weights(sess).values()))
    with pytest.raises(ConvrtError) as e:
        v.const  # noqa: B018
    assert "\n" not in str(e.value) and "changed or went away" in str(e.value)
    assert v.released  # still released; the session keeps running
    np.testing.assert_array_equal(sess.run(None, feed(2))[0], y)


def test_a_bytes_model_is_not_held_after_loading():
    """The session keeps no reference to the caller's bytes (nor to a ModelProto): a fetch
    of an intermediate value compiles from a structural copy of the loaded graph instead."""
    import gc

    model = dyn_model()
    data = model.SerializeToString()
    refs = sys.getrefcount(data), sys.getrefcount(model)
    sess = _session(data)
    by_proto = _session(model)
    gc.collect()
    assert (sys.getrefcount(data), sys.getrefcount(model)) == refs  # bytes cannot be weakref'd
    want = by_proto.run(["r0", "y"], feed(2))
    for s in (sess, by_proto):
        for a, b in zip(s.run(["r0", "y"], feed(2)), want):
            np.testing.assert_array_equal(a, b)


def test_external_data_weights_are_released_and_restored(tmp_path):
    """External data is read into arrays at load (pread, no mapping: see onnx_io/origin.py);
    the packed ones are released like any other and restored by loading the model again."""
    import onnx

    model = dyn_model()
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.bin", size_threshold=0)
    sess = _session(str(path))
    weights = _conv_weights(sess)
    assert all(v.released for v in weights.values()) and not sess._weights._from_file
    want = {t.name: numpy_helper.to_array(t) for t in dyn_model().graph.initializer}
    for n, v in weights.items():
        np.testing.assert_array_equal(v.const, want[n])
    np.testing.assert_array_equal(sess.run(None, feed(2))[0],
                                  _session(dyn_model()).run(None, feed(2))[0])


def test_the_topological_sort_is_networkx_lexicographical_one():
    """convrt.ir.toposort (a heap; networkx is not imported to load a model: ~11 MiB) orders
    nodes exactly as networkx's lexicographical topological sort did."""
    import random

    import networkx as nx

    from convrt.ir import Graph, Node, Value, dependency_graph, toposort

    rng = random.Random(0)
    for trial in range(30):
        g = Graph()
        vals = [Value(f"in{trial}")]
        for i in range(rng.randint(1, 25)):
            ins = rng.sample(vals, min(len(vals), rng.randint(1, 3)))
            out = Value(f"v{i}")
            g.add_node(Node("Add", ins + ins[:1], [out], name=f"n{i}"))
            vals.append(out)
        rng.shuffle(g.nodes)
        want = list(nx.lexicographical_topological_sort(dependency_graph(g)))
        assert [g.nodes.index(n) for n in toposort(g)] == want


def test_a_session_does_not_import_networkx():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, numpy as np, convrt\n"
            "s = convrt.InferenceSession('sample_models/small_vgg.onnx')\n"
            "s.run(None, {s.get_inputs()[0].name: np.zeros((1, 3, 32, 32), np.float32)})\n"
            "print('networkx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": root}, check=True)
    assert out.stdout.split() == ["False"]


def test_each_weight_is_released_once_its_layer_is_packed(tmp_path, monkeypatch):
    """Building a plan releases each convolution's original weights as soon as its kernel has
    packed them (``ops/infer.py``), not once the whole plan is built: a model's originals and
    packed copies are never all resident at once (ResNet-18: a 43 MiB transient at load)."""
    import tracemalloc

    from convrt.weights import ReleasedWeights

    rng = np.random.default_rng(4)
    layers, c = 4, 128
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(
            rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.05, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        x = f"c{i}"
    graph = helper.make_graph(
        nodes, "deep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 6, 6])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, 6, 6])], inits)
    path = tmp_path / "deep.onnx"
    path.write_bytes(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    weights = layers * c * c * 9 * 4
    feeds = {"x": rng.standard_normal((1, c, 6, 6)).astype(np.float32)}
    with monkeypatch.context() as m:
        _kept(m)
        want = _session(str(path), warm_up=False).run(None, feeds)[0]

    calls = []
    release = ReleasedWeights.release

    def spy(self, names):
        names = list(names)
        calls.append((names, sess._packs.misses))
        return release(self, names)

    monkeypatch.setattr(ReleasedWeights, "release", spy)
    tracemalloc.start()
    try:
        sess = _session(str(path), warm_up=False)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        got = sess.run(None, feeds)[0]  # plans: packs every layer
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, want)
    # one layer at a time, each right after its packing
    assert [names for names, _ in calls[:layers]] == [[f"w{i}"] for i in range(layers)]
    assert [packs for _, packs in calls[:layers]] == list(range(1, layers + 1))
    assert all(v.released for n, v in sess.graph.initializers.items())
    # packing all four while all four originals stayed took a whole model's weights more
    assert peak < weights / 2, (peak, weights)
