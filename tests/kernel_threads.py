"""Running a bound kernel under different numba thread counts, or from several Python threads
at once (its scratch is per calling thread)."""

import threading

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


def check_concurrent_calls(conv, xs, refs, repeats, tol):
    """Call ``conv(xs[i], out)`` ``repeats`` times from one Python thread per input, all at
    once; every result must match ``refs[i]`` (``np.testing.assert_allclose`` with ``tol``)."""
    errors = []

    def work(i):
        out = np.empty(conv.out_shape, xs[i].dtype)
        try:
            for _ in range(repeats):
                conv(xs[i], out)
                np.testing.assert_allclose(out, refs[i], **tol)
        except AssertionError as e:  # reported below, from the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
