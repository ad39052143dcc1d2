"""The one place numba options live.

Every kernel is compiled with ``cache=True`` (so a second process loads machine code from disk)
and without blanket ``fastmath=True``: NaN/Inf semantics are kept.  ``FAST`` is the narrow flag
set the convolution microkernels use (contraction into FMA, no signed-zero care); it leaves
``reassoc`` out on purpose, since that makes LLVM vectorize reductions the slow way.

numba turns SLP vectorization off by default; the conv microkernels need it, and numba's cache key
ignores it, so it is switched on here, before any kernel is compiled, for every process alike.
"""

import os

import numba

numba.config.SLP_VECTORIZE = True  # before the first compile; see module docstring

if "NUMBA_CACHE_DIR" not in os.environ and not os.access(os.path.dirname(__file__), os.W_OK):
    # A read-only install: cache where the user can write (numba's cache files are pickles,
    # so the directory must be the user's own).
    numba.config.CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "convrt", "numba")

FAST = {"contract", "nsz"}  # a set: numba rejects frozensets


def njit(*args, **kwargs):
    """``numba.njit`` with convrt's defaults (``cache=True``)."""
    kwargs.setdefault("cache", True)
    return numba.njit(*args, **kwargs)


def pjit(*args, **kwargs):
    """A parallel kernel (``prange`` inside); same defaults as :func:`njit`."""
    kwargs.setdefault("cache", True)
    kwargs.setdefault("parallel", True)
    return numba.njit(*args, **kwargs)
