"""Concurrency and determinism: one session shared by 8 threads, repeated runs bit-identical."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import convrt

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "sample_models" / "digits_vgg.onnx"
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
    from convrt.kernels.conv import _claim_end

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

    import convrt.kernels.conv as conv

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
