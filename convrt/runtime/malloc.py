"""glibc malloc while a model loads: large temporaries in their own mappings, freed for good.

Why: numpy takes its large arrays from ``malloc``.  glibc serves requests of at least
``M_MMAP_THRESHOLD`` bytes with their own ``mmap`` (returned to the system on ``free``), smaller
ones from the heap (kept by the process after ``free`` unless the top of the heap is free).  The
threshold starts at 128 KiB but is *dynamic*: each time an mmapped block is freed it rises to
that block's size (up to 32 MiB).  Loading a model frees many multi-megabyte temporaries (raw
tensor payloads, the weights BatchNormalization folding replaces), so the threshold climbs
during loading and the later temporaries land on the heap, where their holes stay resident.

So :func:`loading` fixes the threshold at 1 MiB while a session loads and optimizes its model
(each temporary's pages go back when it is freed), then at 32 MiB, glibc's own ceiling: from
then on weight-sized arrays (packed weights, arenas, each run's output copies) come from the
heap and reuse its free blocks.  A threshold kept at 1 MiB would map, fault in and unmap every
large output on every run (a 1.8 MB output: +0.6 ms a run).  The trim threshold goes with it
(64 MiB, twice the mmap threshold, glibc's own pairing while it adjusts them): a fixed mmap
threshold also freezes the trim threshold at its 128 KiB default, and an output copy that sits
at the top of the heap was then given back to the system when the caller dropped it, to be
faulted in again by the next run (a 1x64x112x112 output, 3.2 MB: 2.7-3.3 ms a run, against
0.9-1.0 with the pages kept; a run of that one convolution takes 0.6).  Measured with
benchmarks/memory.py's sweep (batch 1..8, 1; peak RSS): ResNet-18 384 -> 356 MiB, VGG-16
1,071 -> 1,066 MiB.  Setting a threshold switches glibc's dynamic adjustment off for the
process, as onnxruntime's own arena settings are process-wide too.  ``CONVRT_MALLOC_TUNING=0``
(or glibc's ``MALLOC_MMAP_THRESHOLD_``, which this respects) leaves malloc alone; other C
libraries are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
WHILE_LOADING = 1 << 20
AFTER_LOADING = 32 << 20  # glibc's ceiling for its dynamic threshold
TRIM_AFTER_LOADING = 2 * AFTER_LOADING


@functools.lru_cache(maxsize=1)
def _mallopt():
    """glibc's ``mallopt``, or None where convrt should not (or cannot) tune malloc."""
    if (not sys.platform.startswith("linux") or os.environ.get("CONVRT_MALLOC_TUNING") == "0"
            or "MALLOC_MMAP_THRESHOLD_" in os.environ):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


@contextlib.contextmanager
def loading():
    """Within: blocks of 1 MiB and more are mmapped; after: up to 32 MiB from the heap, whose
    top is given back once 64 MiB of it are free."""
    fn = _mallopt()
    if fn is not None:
        fn(M_MMAP_THRESHOLD, WHILE_LOADING)
    try:
        yield
    finally:
        if fn is not None:
            fn(M_MMAP_THRESHOLD, AFTER_LOADING)
            fn(M_TRIM_THRESHOLD, TRIM_AFTER_LOADING)
