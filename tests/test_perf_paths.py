"""The fast paths of the FC, pooling and runtime code, against plain numpy references.

Covers the shapes the fast kernels special-case (4-row tiles of B and a remainder, K passes of
KC and a short last pass, windows fully inside the row and at the padded border), NaN
propagation, thread counts, a generic (no AVX) CPU target in a subprocess, a read-only
install, and the Chrome trace / profile table of ``convrt bench``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from convrt.kernels.gemm import JB, KC, bias_operand, gemm_nt, gemm_packed
from convrt.kernels.pool import max_pool2d
from convrt.runtime import InferenceSession, SessionOptions

ROOT = Path(__file__).resolve().parents[1]
NO_C = bias_operand(None, np.float32)


@pytest.mark.parametrize("n,k,m", [(1, 7, 5), (1, KC + 3, 2 * JB + 1), (3, 2 * KC, JB),
                                   (8, 100, 13), (5, 1, 1)])
@pytest.mark.parametrize("act", [0, 1])
def test_gemm_nt_matches_numpy(n, k, m, act):
    rng = np.random.default_rng(n * 1000 + k + m)
    a = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal((m, k)).astype(np.float32)
    c = rng.standard_normal((n, m)).astype(np.float32)
    out = np.full((n, m), np.nan, np.float32)
    gemm_nt(a, b, *bias_operand(c, np.float32), out, 0.5, 2.0, act)
    ref = 0.5 * (a.astype(np.float64) @ b.T.astype(np.float64)) + 2.0 * c
    if act:
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k))


def test_gemm_nt_propagates_nan_and_inf():
    a = np.ones((2, KC + 5), np.float32)
    a[0, 3] = np.nan
    a[1, KC + 1] = np.inf
    b = np.ones((JB + 1, KC + 5), np.float32)
    out = np.zeros((2, JB + 1), np.float32)
    gemm_nt(a, b, *NO_C, out, 1.0, 0.0, 0)
    assert np.isnan(out[0]).all()
    assert np.isposinf(out[1]).all()
    gemm_nt(a, b, *NO_C, out, 1.0, 0.0, 1)  # relu keeps NaN (np.maximum semantics)
    assert np.isnan(out[0]).all()


def test_gemm_packed_still_matches():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 33)).astype(np.float32)
    bkm = rng.standard_normal((33, 21)).astype(np.float32)
    out = np.empty((4, 21), np.float32)
    gemm_packed(a, bkm, *NO_C, out, 1.0, 0.0, 16, 0)
    np.testing.assert_allclose(out, a @ bkm, rtol=1e-5, atol=1e-5)


def _naive_max_pool(x, k, s, d, p):
    n, c, h, w = x.shape
    oh = (h + p[0] + p[2] - (k[0] - 1) * d[0] - 1) // s[0] + 1
    ow = (w + p[1] + p[3] - (k[1] - 1) * d[1] - 1) // s[1] + 1
    out = np.empty((n, c, oh, ow), x.dtype)
    for y in range(oh):
        for xo in range(ow):
            rows = [y * s[0] - p[0] + a * d[0] for a in range(k[0])]
            cols = [xo * s[1] - p[1] + b * d[1] for b in range(k[1])]
            rows = [r for r in rows if 0 <= r < h]
            cols = [q for q in cols if 0 <= q < w]
            win = x[:, :, rows][:, :, :, cols].reshape(n, c, -1)
            out[:, :, y, xo] = np.where(np.isnan(win).any(-1), np.nan, np.nanmax(
                np.where(np.isnan(win), -np.inf, win), -1))
    return out


@pytest.mark.parametrize("k,s,d,p", [((2, 2), (2, 2), (1, 1), (0, 0, 0, 0)),
                                     ((3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
                                     ((3, 2), (1, 3), (2, 1), (2, 1, 0, 1)),
                                     ((1, 1), (1, 1), (1, 1), (0, 0, 0, 0))])
def test_max_pool_matches_naive_with_nan(k, s, d, p):
    rng = np.random.default_rng(sum(k) + sum(p))
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    x[0, 1, 4, 5] = np.nan
    x[1, 2, 0, 0] = np.nan
    x[1, 0] = -np.inf
    ref = _naive_max_pool(x, k, s, d, p)
    out = np.empty_like(ref)
    max_pool2d(x, out, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[1])
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("shape,ceil", [((2, 3, 8, 64), False), ((1, 2, 6, 34), False),
                                         ((1, 2, 7, 33), True)])
def test_max_pool_2x2_fast_path_nan_in_every_cell(shape, ceil):
    """The whole-plane 2x2/2 path (vectorised rows): a NaN in any of the four window cells
    wins, -inf windows stay -inf; ceil-mode outputs (a partial last window) take the general
    path."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    for cell, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        x[0, 0, dy, 2 * cell + dx] = np.nan
    x[0, 1, 2:4, 4:8] = -np.inf
    h, w = shape[2:]
    oh, ow = (-(-h // 2), -(-w // 2)) if ceil else (h // 2, w // 2)
    ref = _naive_max_pool(x, (2, 2), (2, 2), (1, 1), (0, 0, 2 * oh - h, 2 * ow - w))
    out = np.empty((shape[0], shape[1], oh, ow), np.float32)
    max_pool2d(x, out, 2, 2, 2, 2, 1, 1, 0, 0)
    np.testing.assert_array_equal(out, ref)
    assert np.isnan(out[0, 0, 0, :4]).all() and (out[0, 1, 1, 2:4] == -np.inf).all()


def _fc_model(m=9, k=40, trans_b=1):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((m, k) if trans_b else (k, m)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b),
         helper.make_node("Relu", ["g"], ["y"])], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    ref_w = w.T if trans_b else w
    return model, lambda x: np.maximum(x @ ref_w + b, 0)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("threads", [1, 2])
def test_session_fc_paths_and_threads(trans_b, threads):
    model, ref = _fc_model(trans_b=trans_b)
    sess = InferenceSession(model.SerializeToString(),
                            SessionOptions(intra_op_num_threads=threads))
    for n in (1, 3, 8):
        x = np.random.default_rng(n).standard_normal((n, 40)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref(x), rtol=1e-5, atol=1e-5)
    assert numba.get_num_threads() == min(threads, numba.config.NUMBA_NUM_THREADS)


def test_fc_weights_not_duplicated():
    """Gemm with transB=1 runs on the stored weights: the plan holds no packed copy."""
    model, _ = _fc_model(m=64, k=256)
    sess = InferenceSession(model.SerializeToString())
    x = np.ones((1, 256), np.float32)
    sess.run(None, {"x": x})
    w = sess.graph.initializers["w"].const
    plan = next(iter(sess._plans.values()))
    closure_arrays = [c.cell_contents for st in plan.steps
                      for c in (st.run.__closure__ or ()) if callable(c.cell_contents)
                      for c in (c.cell_contents.__closure__ or ())
                      if isinstance(c.cell_contents, np.ndarray)]
    big = [a for a in closure_arrays if a.size == w.size]
    assert all(np.shares_memory(a, w) for a in big)


_GENERIC_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {models!r})
    from builders import small_vgg_32
    import onnxruntime as ort
    from convrt.runtime import InferenceSession, SessionOptions
    m = small_vgg_32().SerializeToString()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = InferenceSession(m, SessionOptions(intra_op_num_threads=1)).run(None, {{"input": x}})[0]
    r = ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {{"input": x}})[0]
    err = float(np.abs(y - r).max())
    assert err <= 1e-4 * float(np.abs(r).max()), err
    print("OK", err)
""")


def test_generic_cpu_target_gives_correct_results(tmp_path):
    """A CPU without AVX/AVX-512: numba compiles for a generic x86-64 target (its own cache);
    the whole small VGG must still match onnxruntime."""
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="",
               NUMBA_CACHE_DIR=str(tmp_path / "numba"), NUMBA_NUM_THREADS="1")
    script = _GENERIC_SCRIPT.format(models=str(ROOT / "sample_models"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout


def test_read_only_install(tmp_path):
    """A read-only copy of the package runs, caching kernels outside the package directory."""
    pkg = tmp_path / "ro" / "convrt"
    shutil.copytree(ROOT / "convrt", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "passes", tmp_path / "ro" / "passes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(tmp_path / "ro"):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        for dname in dirs:
            os.chmod(os.path.join(root, dname), 0o555)
    os.chmod(tmp_path / "ro", 0o555)
    model, ref = _fc_model()
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(HOME=str(home), PYTHONPATH=str(tmp_path / "ro"), PYTHONDONTWRITEBYTECODE="1")
    code = ("import numpy as np, convrt; from convrt.runtime import InferenceSession; "
            f"s = InferenceSession({str(tmp_path / 'm.onnx')!r}); "
            "print(convrt.__file__); print(s.run(None, {'x': np.ones((2, 40), np.float32)})[0].sum())")
    if os.geteuid() == 0:
        # root ignores file permissions, so the package directory would still be writable:
        # make os.access report it read-only (what convrt's cache-dir choice asks), so the test
        # still shows the kernels being cached in the user's directory instead.
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(
            "import os\n_access = os.access\n"
            f"def _ro(path, mode, *a, **k):\n"
            f"    if mode & os.W_OK and str(path).startswith({str(tmp_path / 'ro')!r}):\n"
            "        return False\n"
            "    return _access(path, mode, *a, **k)\n"
            "os.access = _ro\n")
        env["PYTHONPATH"] = f"{shim}{os.pathsep}{env['PYTHONPATH']}"
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert str(tmp_path / "ro") in proc.stdout
        assert np.isclose(float(proc.stdout.split()[-1]), ref(np.ones((2, 40))).sum(), rtol=1e-4)
        assert any((home / ".cache" / "convrt" / "numba").rglob("*.nbi"))
    finally:
        for root, dirs, files in os.walk(tmp_path / "ro"):
            os.chmod(root, 0o755)


def test_bench_profile_table_and_chrome_trace(tmp_path):
    from convrt.cli import main

    model, _ = _fc_model()
    path = tmp_path / "fc.onnx"
    path.write_bytes(model.SerializeToString())
    trace = tmp_path / "trace.json"
    assert main(["bench", str(path), "--batch", "2", "--repeat", "3",
                 "--profile", str(trace)]) == 0
    events = json.loads(trace.read_text())["traceEvents"]
    xs = [e for e in events if e["ph"] == "X"]
    assert {e["args"]["op_type"] for e in xs} == {"FusedGemmRelu"}
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in xs)


def test_cache_directory_follows_the_compiled_sources(tmp_path):
    """numba checks only the defining file's stamp: an edited helper in another file (or an
    upgrade) must not reuse stale machine code, so the cache directory is named by a digest of
    every compiled source; a user's NUMBA_CACHE_DIR is the root it goes under."""
    pkg = tmp_path / "src" / "convrt"
    shutil.copytree(ROOT / "convrt", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "passes", tmp_path / "src" / "passes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = "import numba, convrt.kernels._jit; print(numba.config.CACHE_DIR)"

    def cache_dir(**extra):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
        env.update(PYTHONPATH=str(tmp_path / "src"), **extra)
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.split()[-1]

    first = cache_dir()
    assert first.startswith(str(pkg / "__pycache__" / "numba"))
    assert cache_dir() == first  # stable while nothing changes
    epilogue = pkg / "kernels" / "conv" / "_epilogue.py"
    epilogue.write_text(epilogue.read_text() + "\n# edited\n")
    assert cache_dir() != first  # a helper file changed: a fresh cache
    user = cache_dir(NUMBA_CACHE_DIR=str(tmp_path / "mine"))
    assert user.startswith(str(tmp_path / "mine")) and user != str(tmp_path / "mine")
