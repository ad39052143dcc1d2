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

import numba

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
