"""Keep glibc's malloc from holding freed weight-sized blocks: a fixed mmap threshold.

Why: numpy takes its large arrays from ``malloc``.  glibc serves requests of at least
``M_MMAP_THRESHOLD`` bytes with their own ``mmap`` (returned to the system on ``free``), smaller
ones from the heap (kept by the process after ``free`` unless the top of the heap is free).  The
threshold starts at 128 KiB but is *dynamic*: each time an mmapped block is freed, it rises to
that block's size (up to 32 MiB).  Loading a model frees many multi-megabyte temporaries (raw
tensor payloads, the weights BatchNormalization folding replaces), so after loading, every array
up to several MiB -- packed weights, activation blocks -- lands on the heap, where the holes the
temporaries left are neither reused well nor given back.  Measured with benchmarks/memory.py's
batch sweep (1..8, 1): VGG-16's peak RSS 1,171 -> 1,047 MiB, ResNet-18's 374 -> 351 MiB.

Setting the threshold explicitly (``mallopt(M_MMAP_THRESHOLD, ...)``) switches the dynamic
adjustment off, as glibc documents; 1 MiB keeps small arrays on the fast heap path.  This is
process-wide, like onnxruntime's own arena settings, and done once, on the first session.  Set
``CONVRT_MALLOC_TUNING=0`` to leave malloc alone (or tune it yourself with glibc's
``MALLOC_MMAP_THRESHOLD_``, which this respects).  On other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 1 << 20

_done = False
_lock = threading.Lock()


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold once per process; True if this call set it."""
    global _done
    with _lock:
        if _done:
            return False
        _done = True
        if (not sys.platform.startswith("linux") or os.environ.get("CONVRT_MALLOC_TUNING") == "0"
                or "MALLOC_MMAP_THRESHOLD_" in os.environ):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and others: no mallopt
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
