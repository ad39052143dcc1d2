"""The fused optimizer updates (convrt/train/kernels/optim.py) against the plain numpy formulas
of PyTorch's update rules, written out here as the oracle: bit for bit in float32 and float64
(same operations, same order, no contraction), and a dry run (``Optimizer.check``) that reports
what would become non-finite while writing nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convrt.train import SGD, Adam, AdamW
from convrt.train.kernels import optim as kopt


def _numpy_sgd(p, g, state, lr, momentum, dampening, wd, nesterov):
    dt = p.dtype.type
    if wd:
        g = g + dt(wd) * p
    if momentum:
        if state.get("buf") is None:
            buf = state["buf"] = g.copy()
        else:
            buf = state["buf"]
            buf *= dt(momentum)
            buf += dt(1 - dampening) * g
        g = g + dt(momentum) * buf if nesterov else buf
    p -= dt(lr) * g


def _numpy_adam(p, g, state, t, lr, b1, b2, eps, wd, decoupled):
    dt = p.dtype.type
    if wd:
        if decoupled:
            p *= dt(1 - lr * wd)
        else:
            g = g + dt(wd) * p
    m = state.setdefault("m", np.zeros_like(p))
    v = state.setdefault("v", np.zeros_like(p))
    m *= dt(b1)
    m += dt(1 - b1) * g
    v *= dt(b2)
    v += dt(1 - b2) * g * g
    denom = np.sqrt(v) / dt(math.sqrt(1 - b2 ** t)) + dt(eps)
    p -= dt(lr / (1 - b1 ** t)) * (m / denom)


def _arrays(dtype, shape=(70001,), seed=0):  # more than two parallel blocks, a ragged last one
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, weight_decay=1e-2),
                                dict(momentum=0.8, dampening=0.3),
                                dict(momentum=0.9, nesterov=True, weight_decay=5e-4)])
def test_sgd_bitwise_as_numpy(kw, dtype):
    p, _ = _arrays(dtype)
    ref, st = p.copy(), {}
    opt = SGD(lr=0.1, **kw)
    for step in range(3):
        g = _arrays(dtype, seed=step + 1)[1]
        opt.step({"w": p}, {"w": g})
        _numpy_sgd(ref, g, st, 0.1, kw.get("momentum", 0.0), kw.get("dampening", 0.0),
                   kw.get("weight_decay", 0.0), kw.get("nesterov", False))
        np.testing.assert_array_equal(p, ref)
        if st.get("buf") is not None:
            np.testing.assert_array_equal(opt.state["w"]["momentum_buffer"], st["buf"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, wd", [(Adam, 0.0), (Adam, 1e-2), (AdamW, 1e-2), (AdamW, 0.0)])
def test_adam_bitwise_as_numpy(cls, wd, dtype):
    p, _ = _arrays(dtype, shape=(3, 40000))
    ref, st = p.copy(), {}
    opt = cls(lr=1e-3, weight_decay=wd)
    for t in range(1, 4):
        g = _arrays(dtype, shape=(3, 40000), seed=t)[1]
        opt.step({"w": p}, {"w": g})
        _numpy_adam(ref, g, st, t, 1e-3, 0.9, 0.999, 1e-8, wd, cls is AdamW)
        np.testing.assert_array_equal(p, ref)
        np.testing.assert_array_equal(opt.state["w"]["exp_avg_sq"], st["v"])


@pytest.mark.parametrize("make", [lambda: SGD(lr=1e30, momentum=0.9), lambda: Adam(lr=1.0)])
def test_check_reports_and_writes_nothing(make):
    opt = make()
    p = np.ones(50000, np.float32)
    g = np.ones(50000, np.float32)
    opt.step({"a": p}, {"a": g})  # a first step, so there is state to keep
    before_p, before_state, before_t = p.copy(), opt.snapshot(), opt.t
    g_bad = g.copy()
    g_bad[12345] = np.nan
    g_big = np.full_like(g, 3e38)
    report = opt.check({"a": p, "b": p.copy()}, {"a": g_bad, "b": g_big})
    assert report["a"] & kopt.GRAD_NAN
    if isinstance(opt, SGD):  # 3e38 * 1e30 overflows the new weight and the momentum buffer
        assert report["b"] & kopt.W_INF
    np.testing.assert_array_equal(p, before_p)
    assert opt.t == before_t and set(opt.state) == set(before_state[1])
    for n, slots in before_state[1].items():
        for k, a in slots.items():
            np.testing.assert_array_equal(opt.state[n][k], a)
    assert opt.check({"a": p}, {"a": g}) == {}


def test_float32_update_compiled_after_a_float64_one_stays_float32(tmp_path):
    """A float64 step compiled first must not be reused for float32 through numba's safe casts
    (the value functions are inlined into each kernel): in a fresh process, a float64 Adam step
    and then the float32 comparison above."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import numpy as np\n"
        "from convrt.train import Adam, SGD\n"
        "for cls in (Adam, SGD):\n"
        "    cls(lr=1e-3).step({'w': np.ones(8)}, {'w': np.ones(8)})\n"
        "import test_train_optim_kernels as t\n"
        "t.test_adam_bitwise_as_numpy(Adam, 1e-2, np.float32)\n"
        "t.test_sgd_bitwise_as_numpy(dict(momentum=0.9, weight_decay=1e-2), np.float32)\n"
        "print('ok')\n")
    here = Path(__file__).resolve().parent
    import os

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))  # compiled here, in this order
    out = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["ok"], out.stderr[-2000:]


# -- SGD's magnitude bounds (convrt/train/optim.py) ------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_magnitude_is_the_largest_absolute_value_and_inf_for_nan(dtype):
    rng = np.random.default_rng(3)
    for n in (0, 1, 17, 70001, 9 * kopt.BLOCK + 5):  # serial and per-block (parallel) paths
        a = (rng.standard_normal(n) * 100).astype(dtype)
        want = float(np.abs(a).max()) if n else 0.0
        assert kopt.magnitude(a) == want
        if n:
            a[n // 2] = -np.finfo(dtype).max
            assert kopt.magnitude(a) == float(np.finfo(dtype).max)
            for bad in (np.inf, -np.inf, np.nan, -np.nan):
                b = a.copy()
                b[n - 1] = bad
                assert kopt.magnitude(b) == math.inf
    assert kopt.magnitude(np.array([-0.0, 0.0], dtype)) == 0.0


def test_sgd_apply_reports_the_gradient_magnitude():
    p, g = _arrays(np.float32)
    gbits, mask = kopt.bits_of(g)
    gmax = kopt.sgd_apply(p, g, p, np.float32(0.1), np.float32(0), np.float32(0),
                          np.float32(1), False, True, False, gbits, mask)
    assert kopt.magnitude_of_bits(gmax.max(), np.float32) == float(np.abs(g).max())


def _count_dry_runs(monkeypatch):
    calls = []
    real = kopt.sgd_check
    monkeypatch.setattr(kopt, "sgd_check", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9, weight_decay=1e-2),
                                dict(momentum=0.9, nesterov=True), dict(momentum=0.5,
                                                                        dampening=0.5)])
def test_sgd_bounds_skip_the_dry_run_and_stay_above_the_values(kw, monkeypatch):
    """After the first check measures them, the bounds carry from update to update: no dry run
    reads the weights, and each bound is at least the largest magnitude it stands for."""
    calls = _count_dry_runs(monkeypatch)
    p = _arrays(np.float32)[0]
    opt = SGD(lr=0.1, **kw)
    for step in range(6):
        g = _arrays(np.float32, seed=step + 1)[1] * np.float32(10 ** (step % 3))
        assert opt.check({"w": p}, {"w": g}) == {}
        opt.step({"w": p}, {"w": g})
        _, p_max, buf_max = opt._bounds["w"]
        assert p_max >= np.abs(p).max()
        if "momentum" in kw:
            assert buf_max >= np.abs(opt.state["w"]["momentum_buffer"]).max()
    assert calls == []
    opt.forget()  # a parameter written from outside: measured again, exactly
    p[7] = 1e3
    assert opt.check({"w": p}, {"w": g}) == {} and opt._bounds["w"][1] == 1e3


def test_sgd_bounds_never_pass_what_the_dry_run_refuses(monkeypatch):
    """Soundness: around the overflow threshold (weights, momentum buffers, gradients and
    learning rates up to the float32 limit), a check that the bounds answer is one the exact
    dry run also passes; every other check is the dry run itself."""
    rng = np.random.default_rng(11)
    calls = _count_dry_runs(monkeypatch)
    big = float(np.finfo(np.float32).max)
    answered = 0
    for trial in range(300):
        scale_p, scale_g = (10.0 ** rng.uniform(-3, 38.5) for _ in range(2))
        lr = float(10.0 ** rng.uniform(-4, 3))
        opt = SGD(lr=lr, momentum=float(rng.choice([0.0, 0.9])),
                  weight_decay=float(rng.choice([0.0, 1e-2])), nesterov=False)
        with np.errstate(over="ignore", invalid="ignore"):
            p = np.clip(rng.standard_normal(257) * scale_p, -big, big).astype(np.float32)
            g = np.clip(rng.standard_normal(257) * scale_g, -big, big).astype(np.float32)
        p0 = p.copy()
        if opt.check({"w": p}, {"w": g}):
            continue
        opt.step({"w": p}, {"w": g})  # a first step: momentum state and bounds to carry
        with np.errstate(over="ignore"):
            g2 = (g * np.float32(rng.uniform(0.5, 2))).astype(np.float32)
        before = len(calls)
        got = opt.check({"w": p}, {"w": g2})
        answered += len(calls) == before
        st = opt.state.get("w")
        group = opt.param_groups[0]
        dt = np.float32
        buf = st["momentum_buffer"] if st else p
        exact = kopt.dry_run(kopt.sgd_check, kopt.sgd_kinds, (
            p, g2, buf, dt(group["lr"]), dt(group["weight_decay"]), dt(group["momentum"]),
            dt(1 - group["dampening"]), False, st is None))
        assert got.get("w", 0) == exact, (trial, lr, scale_p, scale_g)
        assert np.isfinite(p0).all()
    assert 50 < answered < 300  # both paths taken
