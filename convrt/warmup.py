"""``convrt warmup``: compile the kernels for this CPU ahead of time.

numba compiles every kernel on its first call and caches the machine code on disk (see
convrt/kernels/_jit.py for where); a process that finds the cache empty spends 15-35 s compiling
before its first result, one that finds it warm ~1 s.  Running each given model once fills the
cache, so a Docker image build or a CI job's setup step can pay that once instead of every
container or test run.  The kernels compiled are the ones the models' plans pick on this CPU
(the cache is per CPU model, so warm up on the machine, or the same CPU type, that serves).

``--jobs N`` runs the models in N worker processes that fill the same cache.  numba writes each
cache file to a temporary name and renames it into place, so concurrent writers leave whole
files; a kernel two workers both need is compiled by one while the other waits for it and loads
it (the compile lock, kernels/_jit.py).  So jobs help when the models use different kernels
(VGG's direct convolution, MobileNet's depthwise ones), never for one model, and only with idle
cores: small VGG + MobileNetV2 on an empty cache took 76 s with --jobs 1 and 58 s with --jobs 2
on an idle 2-core machine, but 47.5 s and 59.9 s on one with a load average of 2.6-3.6 from
other work, so the default is 1.  Its sessions compile before they answer
(``tiered_start=False``): without a warmup a session answers on numpy kernels until its own
compile is done (convrt/runtime/tiers.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from .errors import ConvrtError, InputError

# Repository checkouts carry sample_models/ beside the package; an installed wheel does not, so
# there only MODEL.onnx paths work.
_SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
DEFAULT_MODELS = ("small_vgg", "resnet18", "mobilenet_v2")


def _builders():
    path = _SAMPLES / "builders.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_convrt_sample_builders", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_models(paths: list[str], names: list[str]) -> list[str]:
    """The .onnx paths to run: the given files, then each named sample model (the bundled
    ``sample_models/<name>.onnx`` if there is one, else built by sample_models/builders.py
    into its model cache).  Neither given: the default sample models."""
    for p in paths:
        if not os.path.isfile(p):
            raise InputError(f"warmup: no model file {p!r}")
    if not paths and not names:
        names = list(DEFAULT_MODELS)
    out = list(paths)
    builders = None
    for name in names:
        bundled = _SAMPLES / f"{name}.onnx"
        if bundled.is_file():
            out.append(str(bundled))
            continue
        builders = builders or _builders()
        if builders is None:
            raise InputError(f"warmup: sample model {name!r} needs a source checkout "
                             "(sample_models/); pass MODEL.onnx paths instead")
        try:
            out.append(str(builders.cached_model(name)))
        except (KeyError, ValueError) as e:
            raise InputError(f"warmup: unknown sample model {name!r} ({e})") from None
    return out


def run_models(paths: list[str], batch: int = 1) -> list[tuple[str, float]]:
    """Run each model once on random data (compiling what its plan needs); (path, seconds)."""
    import numpy as np

    from .api import InferenceSession, SessionOptions

    times = []
    for path in paths:
        t = time.perf_counter()
        # compiling is the point here: no first tier (convrt/runtime/tiers.py)
        sess = InferenceSession(path, SessionOptions(tiered_start=False))
        rng = np.random.default_rng(0)
        feeds = {}
        for arg in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else batch for d in arg.shape]
            elem = arg.type[len("tensor("):-1]  # onnxruntime's spelling: tensor(float)
            dtype = np.dtype({"float": "float32", "double": "float64"}.get(elem, elem))
            feeds[arg.name] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                               else np.zeros(shape, dtype))
        sess.run(None, feeds)
        times.append((path, time.perf_counter() - t))
    return times


def warmup(paths: list[str], batch: int = 1, jobs: int = 1) -> list[tuple[str, float]]:
    """Run ``paths`` here (jobs == 1) or spread over ``jobs`` worker processes (round robin);
    a worker's failure is a ConvrtError carrying its last stderr line."""
    jobs = max(1, min(jobs, len(paths)))
    if jobs == 1:
        return run_models(paths, batch)
    procs = []
    for j in range(jobs):
        part = paths[j::jobs]
        cmd = [sys.executable, "-m", "convrt.warmup", "--worker", "--batch", str(batch), *part]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    times = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            last = (err.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
            raise ConvrtError(f"warmup worker failed: {last}")
        for line in out.splitlines():
            seconds, _, path = line.partition(" ")
            times.append((path, float(seconds)))
    return times


def cmd_warmup(args) -> int:
    t = time.perf_counter()
    names = [n for spec in args.models for n in spec.split(",") if n]
    paths = resolve_models(args.model, names)
    for path, seconds in warmup(paths, args.batch, args.jobs):
        print(f"{seconds:7.1f} s  {path}")
    import numba  # already imported by the runs (here or in the workers' imports)

    from .kernels import _jit  # noqa: F401  (sets numba.config.CACHE_DIR)

    print(f"warmed {len(paths)} model(s) in {time.perf_counter() - t:.1f} s; "
          f"kernel cache: {numba.config.CACHE_DIR}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    w = subparsers.add_parser(
        "warmup", help="compile the kernels for this CPU ahead of time",
        description="Run each MODEL (and each --models sample model; the sample models "
        f"{', '.join(DEFAULT_MODELS)} when none is given) once, so numba's on-disk cache holds "
        "their kernels for this CPU and later processes start in about a second. Use it in a "
        "Docker image build or a CI setup step.")
    w.add_argument("model", nargs="*", help="path to an .onnx file")
    w.add_argument("--models", action="append", default=[], metavar="NAME[,NAME]",
                   help="sample models by name (small_vgg, resnet18, mobilenet_v2, vgg16, ...; "
                   "needs a source checkout)")
    w.add_argument("--batch", type=_positive, default=1, help="value for symbolic dims (1)")
    w.add_argument("--jobs", type=_positive, default=1,
                   help="worker processes that fill the cache in parallel (1)")
    w.set_defaults(fn=cmd_warmup)
    return w


def _worker_main(argv: list[str]) -> int:
    """``python -m convrt.warmup --worker [--batch N] PATH...``: one line per model on stdout,
    a convrt error as one line on stderr."""
    p = argparse.ArgumentParser(prog="convrt-warmup-worker")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--batch", type=_positive, default=1)
    p.add_argument("paths", nargs="+")
    args = p.parse_args(argv)
    try:
        for path, seconds in run_models(args.paths, args.batch):
            print(f"{seconds:.3f} {path}", flush=True)
    except ConvrtError as e:
        print(f"{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
