"""Running a bound kernel under different numba thread counts (for the bitwise tests)."""

import numba
import numpy as np


def outputs_at_thread_counts(conv, x, dtype=np.float32):
    """``conv(x, out)`` under 1 thread and under all of numba's threads: the outputs in that
    order (one if numba has a single thread)."""
    outs = []
    old = numba.get_num_threads()
    try:
        for nthreads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(nthreads)
            out = np.empty(conv.out_shape, dtype)
            conv(x, out)
            outs.append(out)
    finally:
        numba.set_num_threads(old)
    return outs
