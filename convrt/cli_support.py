"""What the ``convrt`` subcommands share: argument types, the session and feeds they build.

A module of its own so that ``cli.py`` and ``bench.py`` (and ``train/cli.py``) can both use it
without importing each other.
"""

from __future__ import annotations

import argparse

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


def make_session(args):
    """The InferenceSession that ``args`` (model, level, disable, threads) describe."""
    from .api import InferenceSession, SessionOptions

    opts = SessionOptions(graph_optimization_level=args.level,
                          disabled_optimizers=list(args.disable),
                          intra_op_num_threads=getattr(args, "threads", None) or 0)
    return InferenceSession(args.model, opts)


def make_feeds(sess, specs: list[str], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds from NAME=FILE.npy specs; random data of the declared shape for the rest."""
    given = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise InputError(f"--input {spec!r}: expected NAME=FILE.npy")
        try:
            given[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"--input {name}: cannot read {path!r} ({e})") from None
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
