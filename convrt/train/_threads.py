"""Keep BLAS single-threaded while training.

The backward rules mix numba's parallel kernels (an OpenMP pool) with BLAS products (OpenBLAS's
own pool).  Two pools spinning on the same cores starve each other: on the 2-core reference
machine a digits step took 270 ms with both pools live and 21 ms with BLAS on one thread.  So
the trainer runs with BLAS limited to one thread (through threadpoolctl, which scikit-learn, part
of the ``train`` extra, brings along) and leaves the parallelism to numba.  Without
threadpoolctl this is a no-op.
"""

from __future__ import annotations

import contextlib

_controller = None


def _get():
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
            _controller = ThreadpoolController()
        except Exception:  # threadpoolctl missing or failing: leave BLAS alone
            _controller = False
    return _controller


@contextlib.contextmanager
def blas_single_thread():
    ctl = _get()
    if not ctl:
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield
