"""Cold start (issue #16): a light ``import convrt``, ``convrt warmup``, and a numba cache that is
corrupt, foreign, not writable or filled by two processes at once still gives correct results.

Every case about the cache runs in its own process with its own NUMBA_CACHE_DIR (so it starts
from an empty cache and cannot disturb this process's kernels), on tiny models made with
onnx.helper, checked against onnxruntime; the warm-up case, which needs no empty cache, shares
the suite's.  No test asserts a time: the start-up figures are in benchmarks/run.py and the
issue's report.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300

# Runs MODEL in convrt and onnxruntime and prints "ERR <max abs difference> <max |reference|>",
# then "COMPILED <json list>": the convrt kernels (name and argument types) it compiled.
_CHECK = """
import json, sys, numpy as np, onnxruntime as ort, convrt
import numba.core.event as ev
compiled = []
class Compiles(ev.Listener):
    def on_start(self, event):
        pass
    def on_end(self, event):
        f = event.data["dispatcher"].py_func
        if f.__module__.startswith("convrt."):
            compiled.append(f"{f.__module__}.{f.__qualname__}{tuple(event.data['args'])}")
ev.register("numba:compile", Compiles())
path = sys.argv[1]
sess = convrt.InferenceSession(path)
arg = sess.get_inputs()[0]
x = np.random.default_rng(1).standard_normal(arg.shape).astype(np.float32)
y = sess.run(None, {arg.name: x})[0]
r = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {arg.name: x})[0]
print("ERR", float(np.abs(y - r).max()), float(np.abs(r).max()))
print("COMPILED", json.dumps(compiled))
"""


def _save(tmp_path, name, nodes, x_shape, y_shape, inits):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(m, str(path))
    return path


def _gemm_branches(tmp_path):
    """Gemm, then Tanh and Sigmoid of its output (read twice: nothing fuses), then their Add:
    four kernels that compile in seconds (the cache files of every kernel are alike)."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((5, 24)).astype(np.float32) * 0.3,
             "b": rng.standard_normal(5).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             helper.make_node("Tanh", ["g"], ["t"]),
             helper.make_node("Sigmoid", ["g"], ["s"]),
             helper.make_node("Add", ["t", "s"], ["y"])]
    return _save(tmp_path, "gemm_branches", nodes, [2, 24], [2, 5], inits)


def _gemm(tmp_path):
    """One Gemm + Relu: the cheapest model that compiles a kernel."""
    rng = np.random.default_rng(2)
    inits = {"w": rng.standard_normal((6, 40)).astype(np.float32) * 0.2,
             "b": rng.standard_normal(6).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             helper.make_node("Relu", ["g"], ["y"])]
    return _save(tmp_path, "gemm", nodes, [3, 40], [3, 6], inits)


def _env(cache):
    return dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))


def _start(model, cache):
    return subprocess.Popen([sys.executable, "-c", _CHECK, str(model)], env=_env(cache),
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc):
    """Wait for a _CHECK process; assert it ran and matched onnxruntime; return its stderr and
    the kernels it compiled."""
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-2000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("ERR "))
    diff, scale = map(float, line.split()[1:])
    assert diff <= 1e-5 * max(scale, 1.0), line
    compiled = json.loads(next(ln for ln in out.splitlines() if ln.startswith("COMPILED "))[9:])
    return err, compiled


def _check(model, cache):
    return _finish(_start(model, cache))


def _cache_files(cache):
    return sorted(p for p in Path(cache).rglob("*") if p.suffix in (".nbi", ".nbc"))


def test_import_convrt_is_light(tmp_path):
    """``import convrt`` loads no onnx, numba, kernels or passes; every public name still
    resolves (attribute, ``from convrt import``, submodule) when used."""
    code = ("import sys, convrt\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'numba', "
            "'passes') or m.startswith(('convrt.kernels', 'convrt.ops', 'convrt.api')))\n"
            "print('HEAVY', heavy)\n"
            "from convrt import InferenceSession, SessionOptions, load, ModelLoadError\n"
            "import convrt.api\n"
            "assert InferenceSession is convrt.api.InferenceSession\n"
            "assert convrt.SessionOptions is SessionOptions and callable(convrt.optimize)\n"
            "assert convrt.compiler.load is load and issubclass(ModelLoadError, "
            "convrt.ConvrtError)\n"
            "assert set(convrt.__all__) <= set(dir(convrt)), convrt.__all__\n"
            "try:\n    convrt.no_such_name\nexcept AttributeError:\n    print('OK', "
            "convrt.__version__)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path / "numba"),
                          cwd=str(ROOT), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert "OK 0.1.0" in proc.stdout


def test_version_and_help_do_not_import_the_runtime(tmp_path):
    code = ("import sys, contextlib, io\nfrom convrt.cli import main\n"
            "for argv in (['--version'], ['--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        try:\n            main(argv)\n        except SystemExit as e:\n"
            "            assert e.code == 0\n"
            "    assert 'warmup' in out.getvalue() or argv == ['--version']\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'onnx')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=_env(tmp_path / "numba"),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_light_parser_names_every_command_with_its_help():
    """``convrt --help`` is built from cli.COMMANDS without the subcommands' arguments: it must
    list what the full parser has, with the same help text."""
    from convrt import cli

    def helps(parser):
        sub = next(a for a in parser._actions if a.dest == "command")
        return {a.dest: a.help for a in sub._choices_actions}

    assert helps(cli.light_parser()) == helps(cli.build_parser())


def test_corrupt_and_foreign_cache_files_are_recompiled(tmp_path):
    """Truncated, garbled, emptied and swapped-in (another kernel's) cache files, of both
    kinds (index and code): the kernels are compiled again, the results match onnxruntime,
    and the rewritten cache then loads without compiling."""
    model, cache = _gemm_branches(tmp_path), tmp_path / "numba"
    assert _check(model, cache)[1]
    files = _cache_files(cache)
    by_kind = [[p for p in files if p.suffix == kind] for kind in (".nbc", ".nbi")]
    assert all(len(paths) >= 4 for paths in by_kind), files
    for paths in by_kind:
        foreign = paths[0].read_bytes()
        for i, path in enumerate(paths[:4]):
            data = path.read_bytes()
            path.write_bytes([data[: len(data) // 2], np.random.default_rng(i).bytes(len(data)),
                              b"", foreign][i])
    assert _check(model, cache)[1]
    assert _check(model, cache)[1] == []


def test_cache_dir_that_cannot_be_written(tmp_path):
    """NUMBA_CACHE_DIR naming a file (no directory can be made there, root included): one
    warning, kernels cached in convrt's default place instead, correct results."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    err, _ = _check(_gemm(tmp_path), blocker)
    assert "is not a writable directory" in err


def test_two_processes_fill_one_empty_cache(tmp_path):
    """Two processes started at once on one empty cache both finish with correct results,
    no kernel is compiled by both (the second waits for the first one's compile and loads it:
    kernels/_jit.py's compile lock), and a third process then compiles nothing.  The Gemm
    model: numba's cache files are written the same way for every kernel, and it compiles in a
    third of the convolution model's time."""
    model, cache = _gemm(tmp_path), tmp_path / "numba"
    procs = [_start(model, cache), _start(model, cache)]
    (_, first), (_, second) = (_finish(p) for p in procs)
    assert first or second
    assert not set(first) & set(second), (first, second)
    assert not [p for p in Path(cache).rglob("*.tmp.*")]
    assert _check(model, cache)[1] == []


def test_warmup_fills_the_cache_with_parallel_jobs(tmp_path):
    cache = tmp_path / "numba"
    models = [_gemm_branches(tmp_path), _gemm(tmp_path)]
    proc = subprocess.run([sys.executable, "-m", "convrt.cli", "warmup", *map(str, models),
                           "--jobs", "2"], env=_env(cache), cwd=str(ROOT), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warmed 2 model(s)" in proc.stdout and str(cache) in proc.stdout
    assert _check(models[0], cache)[1] == []


@pytest.mark.parametrize("argv, message", [
    (["warmup", "missing.onnx"], "no model file"),
    (["warmup", "--models", "no_such_model"], "no_such_model"),
])
def test_warmup_bad_input_is_one_line(argv, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "convrt.cli", *argv], cwd=str(ROOT),
                          env=_env(tmp_path / "numba"), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 1
    assert proc.stderr.startswith("convrt: error: warmup") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# Counts numba's dispatches that had to compile or load a kernel (``_compile_for_args``) in the
# first run after the session was created, and prints them with the run's output checksum, the
# full (generation 2) garbage collections the run did, and the gc.collect() calls of creating
# that session and a second one on the same model.
_FIRST_RUN = """
import gc, sys, numpy as np, convrt
from numba.core import dispatcher
opts = convrt.SessionOptions()
opts.warm_up = sys.argv[2] == "1"
collects = []
collect = gc.collect
gc.collect = lambda *a: collects.append(a) or collect(*a)
sess = convrt.InferenceSession(sys.argv[1], opts)
again = convrt.InferenceSession(sys.argv[1], opts)  # its kernels are loaded: nothing to collect
gc.collect = collect
plans_after_load = len(sess._plans)
calls = []
orig = dispatcher.Dispatcher._compile_for_args
def counting(self, *a, **k):
    calls.append(self.py_func.__name__)
    return orig(self, *a, **k)
dispatcher.Dispatcher._compile_for_args = counting
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and
                    info["generation"] == 2 else None)
x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
y = sess.run(None, {"input": x})[0]
print("LOADS", len(calls), "PLANS", plans_after_load, "SUM", repr(float(np.float64(y).sum())),
      "FULLGC", len(full), "COLLECTS", len(collects))
"""


def test_warm_up_at_load_leaves_nothing_for_the_first_run_to_load():
    """With ``warm_up`` (the default) numba loaded every kernel while the session was created:
    the first run loads or compiles nothing, does no full garbage collection, keeps no warm-up
    plan, and gives the same output as a session without the warm-up (which loads its kernels
    in that first run)."""
    model = str(ROOT / "sample_models" / "small_vgg.onnx")
    # the suite's own cache (whatever this process uses): the kernels are compiled once, by
    # whichever process asks first; "loads" counts a cache load and a compile alike
    env = dict(os.environ)
    res = {}
    for flag in ("0", "1"):  # "0" first: it fills the cache, so "1" loads rather than compiles
        out = subprocess.run([sys.executable, "-c", _FIRST_RUN, model, flag], env=env,
                             capture_output=True, text=True, timeout=TIMEOUT, check=True)
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("LOADS"))
        _, loads, _, plans, _, total, _, full, _, collects = line.split()
        res[flag] = (int(loads), int(plans), total, int(full), int(collects))
    assert res["0"][0] > 0 and res["1"][0] == 0, res
    # the first warm-up loaded kernels and collected numba's garbage (api._warm_up), the second
    # session's loaded nothing and did not collect; no full collection in the first run
    assert res["1"][3] == 0 and res["1"][4] == 1 and res["0"][4] == 0, res
    assert res["0"][1] == res["1"][1] == 0
    assert res["0"][2] == res["1"][2]


def test_warm_up_skips_inputs_it_cannot_guess_and_defers_errors_to_the_first_run():
    """Symbolic spatial dims are not warmed up (no size to guess); a plan that fails at load
    (here a memory limit below the activations' need) is reported by the first run, with the
    user's inputs, as the same one-line error as without warm-up."""
    import convrt
    from convrt.errors import ConvrtError

    w = np.ones((4, 3, 3, 3), np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])

    def model(x_type, x_shape):
        g = helper.make_graph([conv], "m", [helper.make_tensor_value_info("x", x_type, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    calls = []
    for shape in (["N", 3, "H", "W"], ["N", 3, 8, 8]):
        sess = convrt.InferenceSession(model(TensorProto.FLOAT, shape).SerializeToString())
        calls.append(sess._pool.allocated)  # an arena exists only if the warm-up ran
    assert calls[0] == 0 and calls[1] > 0
    opts = convrt.SessionOptions()
    opts.memory_limit = w.nbytes + 64  # the weights fit, a plan's activations do not
    sess = convrt.InferenceSession(model(TensorProto.FLOAT, ["N", 3, 64, 64]).SerializeToString(),
                                   opts)
    with pytest.raises(ConvrtError) as e:
        sess.run(None, {"x": np.zeros((1, 3, 64, 64), np.float32)})
    assert "\n" not in str(e.value) and "limit" in str(e.value)



def _compiled_variants() -> int:
    """Compiled (or cache-loaded) overloads of every numba kernel convrt has imported."""
    from numba.core.dispatcher import Dispatcher

    return sum(len(f.signatures) for name, mod in list(sys.modules.items())
               if name.startswith("convrt.") and mod is not None
               for f in vars(mod).values() if isinstance(f, Dispatcher))


def test_a_read_only_feed_runs_the_kernels_a_writable_one_compiled():
    """numba types read-only arrays apart: a read-only input (np.load(mmap_mode="r"),
    np.frombuffer, a broadcast view) once made the first run compile or load a second variant of
    every kernel it reached.  The session copies such a feed instead."""
    import convrt

    sess = convrt.InferenceSession(str(ROOT / "sample_models" / "small_vgg.onnx"),
                                   convrt.SessionOptions(tiered_start=False))  # compiled kernels
    arg = sess.get_inputs()[0]
    x = np.random.default_rng(2).standard_normal((2,) + tuple(arg.shape[1:])).astype(np.float32)
    want = sess.run(None, {arg.name: x})[0]
    before = _compiled_variants()
    ro = x.copy()
    ro.setflags(write=False)
    bc = np.broadcast_to(x[:1], x.shape)  # read-only, and only its first image is x's
    np.testing.assert_array_equal(sess.run(None, {arg.name: ro})[0], want)
    np.testing.assert_array_equal(sess.run(None, {arg.name: bc})[0][0], want[0])
    assert _compiled_variants() == before


@pytest.mark.parametrize("algo", ["direct", "pixel", "winograd", "depthwise", "small_maps"])
def test_read_only_weights_pack_with_the_kernels_writable_ones_compiled(algo):
    """Weights memory-mapped read-only (external data, ``np.load(mmap_mode="r")``) once made
    the direct kernel's weight packing compile a second variant (numba types read-only
    arrays apart).  Every algorithm packs them with what writable weights compiled, and
    packs the same bits."""
    from convrt.kernels.conv import small_maps
    from convrt.kernels.conv.select import Conv2d

    if algo == "small_maps" and not small_maps.supported():
        pytest.skip("this CPU has no AVX-512: small_maps is not offered")
    rng = np.random.default_rng(4)
    group = 8 if algo == "depthwise" else 1
    w = rng.standard_normal((8, 8 // group, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    shape = (4, 8, 2, 2) if algo == "small_maps" else (1, 8, 12, 16)
    x = rng.standard_normal(shape).astype(np.float32)

    def run(w, b):
        conv = Conv2d(w, b, shape, pads=(1, 1, 1, 1), group=group, algo=algo)
        out = np.empty(conv.y_shape, np.float32)
        conv(x, out)
        return conv, out

    conv, want = run(w, b)
    assert conv.algo == algo
    before = _compiled_variants()
    ro_w, ro_b = w.copy(), b.copy()
    ro_w.setflags(write=False)
    ro_b.setflags(write=False)
    _, got = run(ro_w, ro_b)
    assert _compiled_variants() == before
    np.testing.assert_array_equal(got, want)


def test_warm_up_collects_garbage_only_with_the_collector_on(monkeypatch):
    """After numba loaded kernels, the warm-up runs a full collection so that the interpreter's
    next automatic one does not land in the first run; with the collector turned off (the
    CLI, while it loads) there is no automatic one to move, and none runs."""
    import gc

    import convrt
    from convrt import api

    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(api, "cache_lookups", lambda: next(ticks))  # as if kernels were loaded
    calls = []
    monkeypatch.setattr(api.gc, "collect", lambda *a: calls.append(a) or 0)
    model = str(ROOT / "sample_models" / "small_vgg.onnx")
    convrt.InferenceSession(model)
    assert len(calls) == 1
    gc.disable()
    try:
        convrt.InferenceSession(model)
    finally:
        gc.enable()
    assert len(calls) == 1


def test_cli_session_loads_with_the_collector_off_then_freezes_and_turns_it_back_on(monkeypatch):
    import argparse
    import gc

    from convrt import cli_support

    seen = []
    monkeypatch.setattr(cli_support.gc, "freeze", lambda: seen.append(gc.isenabled()))
    args = argparse.Namespace(model=str(ROOT / "sample_models" / "small_vgg.onnx"), level="all",
                              disable=[], threads=None, precision=None)
    sess = cli_support.make_session(args)
    assert seen == [False] and gc.isenabled()
    arg = sess.get_inputs()[0]
    assert sess.run(None, {arg.name: np.zeros([1] + list(arg.shape[1:]), np.float32)})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork: POSIX only")
def test_a_forked_child_does_not_keep_the_compile_lock(tmp_path):
    """A process forked while its parent holds a kernel's compile lock (another thread
    compiling) must not hold that lock once the parent lets it go: flock belongs to the open
    file, which fork shares, so other processes would wait on the child."""
    import fcntl
    import time

    from convrt.kernels import _jit
    from convrt.kernels.gemm import gemm_nt

    args = ("lock-test",)
    ready_r, ready_w = os.pipe()
    with _jit._compile_lock(gemm_nt, args):
        pid = os.fork()
        if pid == 0:  # the child lives on without compiling anything
            os.write(ready_w, b"1")  # fork's child handlers have run by now
            time.sleep(5)
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"1"
        fd = os.open(_jit.lock_path(gemm_nt, args), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the child still holds it
        finally:
            os.close(fd)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)


def test_under_the_compile_fence_a_kernel_another_process_compiles_is_a_miss(monkeypatch):
    """A session's fence asks whether its kernels are cached without compiling: a kernel whose
    lock another process holds (it is compiling it) is a miss at once, not a wait for that
    compile (the session then starts on the first tier)."""
    import fcntl

    from convrt.kernels import _jit
    from convrt.kernels.elementwise import relu

    tries = []

    def busy(fd, op):
        tries.append(op)
        raise BlockingIOError

    monkeypatch.setattr(fcntl, "flock", busy)
    monkeypatch.setattr(_jit, "LOCK_WAIT_SECONDS", 0.3)  # a waiting fence would try ~15 times
    x = np.arange(-3, 3, dtype=np.int16)  # a signature no kernel call of convrt uses
    before = len(relu.overloads)
    with pytest.raises(_jit.CompileNeeded, match="relu"):
        with _jit.compile_fence():
            relu(x, np.empty_like(x))
    assert len(relu.overloads) == before and len(tries) == 1
