"""Zero-bordered handoffs between convolutions (runtime/plan.py ``_pad_handoffs``).

A convolution whose only reader is another convolution writes straight into the reader's
zero-bordered input layout.  The results must equal the plain NCHW handoff bit for bit (the
same sums over the same zeros), match onnxruntime, and stay right from run to run and across
concurrent runs (the writer stores the border's zeros too, in buffers shared by liveness).
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convrt.runtime.plan as plan_mod
from convrt.runtime import InferenceSession, SessionOptions
from oracle import run_ort

ONNX_TYPE = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def chain_model(layers, c_in, shape, dtype=np.float32, seed=0, residual=False):
    """Conv (+ Relu, + MaxPool 2x2) layers in a chain; ``layers`` holds dicts with m, k, pads,
    strides, group, dilations, pool.  With ``residual`` the last conv's input is also added to
    its output (a second reader: no handoff into that conv)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, c = "x", c_in
    nsp = len(shape) - 2
    for i, ly in enumerate(layers):
        m, k, g = ly["m"], ly["k"], ly.get("group", 1)
        w = (rng.standard_normal((m, c // g) + (k,) * nsp) / np.sqrt(c * k ** nsp)).astype(dtype)
        b = rng.standard_normal(m).astype(dtype)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        attrs = {"kernel_shape": [k] * nsp, "pads": ly.get("pads", [k // 2] * 2 * nsp),
                 "strides": ly.get("strides", [1] * nsp), "group": g,
                 "dilations": ly.get("dilations", [1] * nsp)}
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], **attrs))
        y = f"c{i}"
        if residual and i == len(layers) - 1:
            nodes.append(helper.make_node("Add", [y, x], [f"a{i}"]))
            y = f"a{i}"
        nodes.append(helper.make_node("Relu", [y], [f"r{i}"]))
        y = f"r{i}"
        if ly.get("pool"):
            nodes.append(helper.make_node("MaxPool", [y], [f"p{i}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            y = f"p{i}"
        x, c = y, m
    t = ONNX_TYPE[dtype]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", t, shape)],
                              [helper.make_tensor_value_info(x, t, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(model, shape, handoff: bool, threads: int, monkeypatch, dtype=np.float32):
    """A session whose plan for ``shape`` is built with handoffs on or off."""
    monkeypatch.setattr(plan_mod, "PAD_HANDOFFS", handoff)
    so = SessionOptions()
    so.intra_op_num_threads = threads
    sess = InferenceSession(model.SerializeToString(), so)
    sess.run(None, {"x": np.zeros(shape, dtype)})  # plans are built on first use
    return sess


def run_reference(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


def plan_of(sess):
    (plan,) = sess._plans.values()
    return plan


VGG = [dict(m=32, k=3), dict(m=32, k=3, pool=True), dict(m=48, k=3), dict(m=40, k=3, pool=True),
       dict(m=16, k=3)]
CASES = {
    # first layer on the pixel kernel (3 channels), then blocked, pooled, blocked
    "vgg": (VGG, 3, (2, 3, 20, 36), 4),
    # odd sizes, asymmetric pads, a 5x5 and a 1x1 padded layer
    "odd": ([dict(m=24, k=3, pads=[0, 1, 2, 1]), dict(m=17, k=5, pads=[2, 2, 1, 2]),
             dict(m=33, k=1, pads=[1, 0, 1, 1]), dict(m=8, k=3, pool=True)],
            5, (1, 5, 23, 19), 3),
    # readers strided along W take no handoff; grouped and dilated ones do
    "strided": ([dict(m=32, k=3), dict(m=32, k=3, strides=[2, 2]), dict(m=32, k=3, group=2),
                 dict(m=16, k=3, dilations=[2, 2], pads=[2, 2, 2, 2]),
                 dict(m=16, k=3, strides=[1, 2])], 16, (2, 16, 17, 22), 2),
    # a pixel-kernel conv + pool (the unfused pooled path) reads a bordered input
    "pixelpool": ([dict(m=16, k=3), dict(m=32, k=1, pads=[1, 1, 1, 1], pool=True),
                   dict(m=16, k=3)], 3, (2, 3, 18, 40), 1),
    # 1-D convolutions run as 2-D with a unit height
    "1d": ([dict(m=32, k=3), dict(m=24, k=5), dict(m=16, k=3)], 4, (3, 4, 40), 2),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_handoff_is_bitwise_the_nchw_result(case, threads, dtype, monkeypatch):
    layers, c_in, shape, n_handoffs = CASES[case]
    model = chain_model(layers, c_in, list(shape), dtype)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    x.reshape(-1)[7] = np.nan  # a NaN crosses the handoffs
    fast = session(model, shape, True, threads, monkeypatch, dtype)
    plain = session(model, shape, False, threads, monkeypatch, dtype)
    y = fast.run(None, {"x": x})[0]
    np.testing.assert_array_equal(y, plain.run(None, {"x": x})[0])  # NaN == NaN here
    assert len(plan_of(fast).padded) == n_handoffs
    assert not plan_of(plain).padded
    x2 = np.nan_to_num(x)
    oracle = run_ort if dtype == np.float32 else run_reference  # onnxruntime: no double Conv
    ref = oracle(model, {"x": x2})[0]
    np.testing.assert_allclose(fast.run(None, {"x": x2})[0], ref, rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())


def test_borders_stay_zero_across_runs_and_arenas(monkeypatch):
    model = chain_model(VGG, 3, [2, 3, 20, 36])
    fast = session(model, (2, 3, 20, 36), True, 2, monkeypatch)
    plain = session(model, (2, 3, 20, 36), False, 2, monkeypatch)
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((2, 3, 20, 36)).astype(np.float32) * s for s in (1, 100, -5)]
    want = [plain.run(None, {"x": x})[0] for x in xs]
    for _ in range(2):
        for x, w in zip(xs, want):
            np.testing.assert_array_equal(fast.run(None, {"x": x})[0], w)
    got = [None] * 6
    barrier = threading.Barrier(6)

    def work(i):  # concurrent runs take arenas of their own
        barrier.wait()
        for _ in range(3):
            got[i] = fast.run(None, {"x": xs[i % 3]})[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that runs overlap (a fast run
    try:                         # may otherwise finish within one 5 ms switch interval)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, want[i % 3])
    # A run while another holds an arena takes a fresh one, whose borders are zero too
    # (deterministic, where the threads above overlap only as the scheduler pleases).
    plan = plan_of(fast)
    with plan._lock:
        held = plan._free[:]
        del plan._free[:]
    np.testing.assert_array_equal(fast.run(None, {"x": xs[1]})[0], want[1])
    assert len(plan._free) == 1 and all(plan._free[0] is not h for h in held)
    plan._free.extend(held)


def test_no_handoff_into_a_value_with_two_readers_or_into_an_output(monkeypatch):
    layers = [dict(m=16, k=3), dict(m=16, k=3), dict(m=16, k=3)]
    model = chain_model(layers, 16, [1, 16, 12, 12], residual=True)
    # c1's output also feeds the residual Add: only c0 -> c1 hands off
    model.graph.output.append(helper.make_tensor_value_info("r0", TensorProto.FLOAT, None))
    fast = session(model, (1, 16, 12, 12), True, 2, monkeypatch)
    plain = session(model, (1, 16, 12, 12), False, 2, monkeypatch)
    x = np.random.default_rng(3).standard_normal((1, 16, 12, 12)).astype(np.float32)
    got, want = fast.run(None, {"x": x}), plain.run(None, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got[1].shape == (1, 16, 12, 12)  # the graph output r0 stayed NCHW
    assert not plan_of(fast).padded  # r0 is an output, r1 has two readers


def test_bordered_buffers_are_shared_by_liveness(monkeypatch):
    """The writer rewrites the border's zeros on every run: a buffer that held other data (NaN
    here) before serves a bordered value, and the results stay bitwise the NCHW ones."""
    model = chain_model(VGG, 3, [2, 3, 20, 36])
    fast = session(model, (2, 3, 20, 36), True, 2, monkeypatch)
    plain = session(model, (2, 3, 20, 36), False, 2, monkeypatch)
    p = plan_of(fast)
    owners = {p.assign[s][0] for s in p.padded}
    assert len(owners) < len(p.padded)  # bordered values reuse each other's buffers
    x = np.random.default_rng(4).standard_normal((2, 3, 20, 36)).astype(np.float32)
    (views,) = p._free
    for s in p.assign:
        views[s].reshape(-1)[:] = np.nan  # poison every buffer of the arena
    np.testing.assert_array_equal(fast.run(None, {"x": x})[0], plain.run(None, {"x": x})[0])
