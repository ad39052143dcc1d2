"""What the ``convrt`` subcommands share: argument types, the session and feeds they build.

A module of its own so that ``cli.py`` and ``bench.py`` (and ``train/cli.py``) can both use it
without importing each other.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np

from .errors import InputError
from .runtime.threads import max_threads, usable_cpus  # noqa: F401  (usable_cpus re-exported)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (argparse prints the usage and this error)."""
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def nonnegative_int(text: str) -> int:
    n = _int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def thread_count(text: str) -> int:
    """argparse ``type=``: 1 .. the CPUs this process may use, by the session's own rule
    (convrt/runtime/threads.py: affinity mask, cgroup quota, numba's pool size); more threads
    than cores only time-slice the kernels' parallel loops."""
    n = positive_int(text)
    limit = max_threads()
    if n > limit:
        raise argparse.ArgumentTypeError(f"{n} is more than the {limit} CPU(s) this process "
                                         "may use")
    return n


def make_session(args, precision: str | None = None):
    """The InferenceSession that ``args`` (model, level, disable, threads, precision) describe;
    ``precision`` overrides ``args.precision``."""
    from .api import InferenceSession, SessionOptions

    opts = SessionOptions(graph_optimization_level=args.level,
                          disabled_optimizers=list(args.disable),
                          intra_op_num_threads=getattr(args, "threads", None) or 0,
                          precision=precision or getattr(args, "precision", None) or "fp32")
    # A command runs once per process: the ~100k objects numba's loader leaves are alive (a
    # full collection after loading finds a handful of garbage ones, in 40-70 ms; api._warm_up
    # runs it for library users).  Here they are loaded with the collector off and frozen
    # (gc.freeze: later collections skip them), which costs nothing.
    gc.disable()
    try:
        return InferenceSession(args.model, opts)
    finally:
        gc.freeze()
        gc.enable()


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """--precision: SessionOptions.precision (convrt/runtime/precision.py)."""
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="fp32 (default) or bf16: bf16 weights and activations into the "
                   "convolutions and GEMMs, float32 sums (needs AVX512_BF16; float32 otherwise)")


IMAGE_HELP = ("FILE is an .npy array or an image (PNG, JPEG...: resized so the shorter side "
              "fits, center-cropped to the input's H x W, scaled to [0,1], normalized by "
              "--mean/--std; grayscale for a 1-channel input)")


def add_image_args(p: argparse.ArgumentParser) -> None:
    """--mean, --std, --layout: how an image input file becomes a tensor (convrt/images.py)."""
    p.add_argument("--mean", type=float_list, default=None, metavar="M1,M2,M3",
                   help="per-channel mean subtracted from an image scaled to [0,1] "
                   "(default: ImageNet's 0.485,0.456,0.406; 0.449 for 1 channel)")
    p.add_argument("--std", type=float_list, default=None, metavar="S1,S2,S3",
                   help="per-channel std an image is divided by (default: ImageNet's "
                   "0.229,0.224,0.225; 0.226 for 1 channel)")
    p.add_argument("--layout", default="NCHW", choices=["NCHW", "NHWC"],
                   help="axis order of the model's image input (default NCHW)")


def float_list(text: str) -> tuple[float, ...]:
    """argparse ``type=``: comma-separated floats."""
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}"
                                         ) from None


def read_input(sess, name: str, path: str, args=None) -> np.ndarray:
    """The array for input ``name`` from an .npy file or an image (``args``: mean/std/layout)."""
    from .images import image_feed

    if not str(path).lower().endswith(".npy"):
        arg = next((a for a in sess.get_inputs() if a.name == name), None)
        if arg is None:
            raise InputError(f"--input {name}: the model has no input {name!r}")
        shape = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(arg.shape)]
        return image_feed(path, shape, getattr(args, "mean", None), getattr(args, "std", None),
                          getattr(args, "layout", "NCHW"))
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"--input {name}: cannot read {path!r} ({e})") from None


def make_feeds(sess, specs: list[str], batch: int, seed: int = 0,
               args=None) -> dict[str, np.ndarray]:
    """Feeds from NAME=FILE specs (.npy or an image; a bare FILE feeds a one-input model);
    random data of the declared shape for the rest."""
    given = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            names = [a.name for a in sess.get_inputs()]
            if len(names) != 1:
                raise InputError(f"--input {spec!r}: expected NAME=FILE (the model has "
                                 f"{len(names)} inputs)")
            name, path = names[0], spec
        given[name] = read_input(sess, name, path, args)
        if batch > 1 and given[name].shape[:1] == (1,) and not path.lower().endswith(".npy"):
            given[name] = np.repeat(given[name], batch, axis=0)
    rng = np.random.default_rng(seed)
    out = {}
    for arg in sess.get_inputs():
        if arg.name in given:
            out[arg.name] = given.pop(arg.name)
            continue
        shape = [d if isinstance(d, int) else batch for d in arg.shape]
        dtype = sess.graph.values[arg.name].dtype
        if dtype.kind == "f":
            out[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[arg.name] = rng.integers(0, 2, shape).astype(dtype)
    out.update(given)  # unknown names: the session reports them
    return out
