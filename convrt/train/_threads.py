"""Thread budgets for training: numba's pool and BLAS's pool, set per node by work size.

The backward rules mix numba's parallel kernels (an OpenMP pool) with BLAS products (OpenBLAS's
own pool).  Two pools spinning on the same cores starve each other, and waking a pool costs more
than a small kernel: on the 2-core reference machine a digits step took 270 ms with both pools
live, 21 ms with BLAS on one thread and ~30 ms with small nodes on one numba thread while other
processes loaded the machine.  So a node whose largest tensor is below ``PARALLEL_MIN`` elements
runs its numba kernels on one thread, larger nodes on all of them; BLAS stays on one thread for
the whole forward/backward pass (giving it two threads for the big products made the
small_vgg_32 step 40 % slower on the loaded 2-core machine).  BLAS is limited through
threadpoolctl (scikit-learn, part of the ``train`` extra, brings it); without it BLAS is left
alone.

"All of them" is the session's rule (convrt/runtime/threads.py): ``CONVRT_NUM_THREADS`` if set,
else the CPUs this process may use (affinity mask, cgroup quota), so training on a machine shared
through ``taskset`` or a container quota does not oversubscribe its cores.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from ..runtime.threads import resolve_threads

#: Nodes whose largest tensor has fewer elements than this run on one thread.
PARALLEL_MIN = 1 << 17

_controller = None


def _blas():
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
            _controller = ThreadpoolController().select(user_api="blas")
        except Exception:  # threadpoolctl missing or failing: leave BLAS alone
            _controller = False
    return _controller


class ThreadBudget:
    """BLAS on one thread, numba's thread count per node; ``restore()`` puts both back."""

    def __init__(self):
        self.full = resolve_threads(0)
        self.prior = numba.get_num_threads()  # the caller's count, put back by restore()
        self.cur = None
        ctl = _blas()
        self._limiter = ctl.limit(limits=1) if ctl else None

    def set_for(self, arrays, extra: int = 0):
        big = max([extra] + [a.size for a in arrays if a is not None])
        want = self.full if big >= PARALLEL_MIN else 1
        if want == self.cur:
            return
        numba.set_num_threads(want)
        self.cur = want

    def restore(self):
        numba.set_num_threads(self.prior)
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None
        self.cur = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


#: Products below this many multiply-adds run on the calling thread alone: handing work to the
#: pool costs tens of microseconds.
SPLIT_MIN_FLOPS = 1 << 22

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple = ()


def _executor(n: int) -> ThreadPoolExecutor:
    """A pool of ``n`` Python threads, made again after a fork (a child has none of the
    parent's threads, and an executor copied from it would wait on them forever)."""
    global _pool, _pool_key
    key = (os.getpid(), n)
    if _pool is None or _pool_key != key:
        _pool = ThreadPoolExecutor(n, thread_name_prefix="convrt-blas")
        _pool_key = key
    return _pool


def matmul_split(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool = False):
    """``out = a @ b`` (``out += a @ b`` with ``accumulate``), its columns split among numba's
    current thread count, each part one single-threaded BLAS call on its own Python thread.

    Why not BLAS's own threads: they spin after each call and take the cores numba's kernels
    need next (see the module docstring).  These threads sleep on a queue between calls, and
    numpy releases the GIL inside BLAS, so two parts run at once: the weight gradients of
    VGG's 3x3 layers at batch 64 took 0.55-0.65x the one-thread time on 2 cores.  The split
    depends only on the shapes and the thread count, so a run repeats bit for bit; another
    thread count may change the last bits (OpenBLAS picks its kernels by matrix size)."""
    n = numba.get_num_threads()
    cols = out.shape[1]
    parts = min(n, max(1, cols // 16))
    if parts < 2 or a.shape[0] * a.shape[1] * cols < SPLIT_MIN_FLOPS:
        _matmul_part(a, b, out, accumulate)
        return
    bounds = [cols * i // parts for i in range(parts + 1)]
    futs = [_executor(n).submit(_matmul_part, a, b[:, lo:hi], out[:, lo:hi], accumulate)
            for lo, hi in zip(bounds[1:-1], bounds[2:])]
    _matmul_part(a, b[:, :bounds[1]], out[:, :bounds[1]], accumulate)
    for f in futs:
        f.result()


def _matmul_part(a, b, out, accumulate):
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
