"""How many threads a session's kernels use: one rule for the session, the CLI and the trainer.

The default is the CPUs this process may actually run on: its affinity mask (``taskset``,
``docker --cpuset-cpus``), further limited by a cgroup v2 CPU quota (``docker --cpus``,
Kubernetes limits: ``ceil(quota / period)`` from ``cpu.max``), and capped by numba's pool size
(``NUMBA_NUM_THREADS``).  More threads than usable cores only time-slice the kernels' parallel
loops, so a count above that is refused (an InputError at session creation, an argparse error in
the CLI) rather than clamped: a user who asked for 8 threads on 2 cores should learn it.

``SessionOptions.intra_op_num_threads`` (> 0) wins; 0 falls back to the ``CONVRT_NUM_THREADS``
environment variable (a positive integer; unset or empty means the default); then the default.
"""

from __future__ import annotations

import math
import operator
import os

import numba

from ..errors import InputError
from ..kernels import _jit  # noqa: F401  (chooses numba's threading layer before its pool starts)

ENV_VAR = "CONVRT_NUM_THREADS"
_CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_quota_cpus() -> int | None:
    """CPUs the cgroup v2 quota allows (the tightest ``cpu.max`` from this process's cgroup up
    to the root), or None when there is no quota or no cgroup v2."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::")), "/")
    except OSError:
        rel = "/"
    best = None
    path = os.path.normpath(_CGROUP_ROOT + "/" + rel)
    while True:
        try:
            with open(os.path.join(path, "cpu.max")) as f:
                quota, period = f.read().split()[:2]
            if quota != "max" and int(period) > 0:
                n = max(1, math.ceil(int(quota) / int(period)))
                best = n if best is None else min(best, n)
        except (OSError, ValueError):
            pass
        if len(path) <= len(_CGROUP_ROOT):
            return best
        path = os.path.dirname(path)


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask (else ``os.cpu_count()``), limited by a
    cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        n = os.cpu_count() or 1
    quota = _cgroup_quota_cpus()
    return max(1, min(n, quota) if quota else n)


def max_threads() -> int:
    """The most threads a session may ask for: usable CPUs, capped by numba's pool size."""
    return max(1, min(usable_cpus(), numba.config.NUMBA_NUM_THREADS))


def default_threads() -> int:
    """The thread count when nothing is asked for (see module docstring)."""
    return max_threads()


def check_count(n: int, source: str) -> int:
    """``n`` if it is 1 .. :func:`max_threads`, else a one-line InputError naming ``source``."""
    limit = max_threads()
    if n < 1:
        raise InputError(f"{source} must be a positive integer, got {n}")
    if n > limit:
        raise InputError(f"{source} is {n}, more than the {limit} CPU(s) this process may use "
                         f"({usable_cpus()} usable, NUMBA_NUM_THREADS="
                         f"{numba.config.NUMBA_NUM_THREADS})")
    return n


def _env_threads() -> int | None:
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        raise InputError(f"{ENV_VAR} must be a positive integer, got {text!r}") from None
    return check_count(n, ENV_VAR)


def resolve_threads(n=0) -> int:
    """The thread count for ``intra_op_num_threads=n``: ``n`` if > 0, else ``CONVRT_NUM_THREADS``
    if set, else :func:`default_threads`.  Bad values are a one-line InputError."""
    if isinstance(n, bool) or n is None:
        raise InputError(f"intra_op_num_threads must be an integer, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise InputError(f"intra_op_num_threads must be an integer, got {n!r}") from None
    if n < 0:
        raise InputError(f"intra_op_num_threads must be 0 (the default) or positive, got {n}")
    if n > 0:
        return check_count(n, "intra_op_num_threads")
    env = _env_threads()
    return env if env is not None else default_threads()
