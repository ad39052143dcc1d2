"""Long-lived, growable buffers in mappings of their own, not on the malloc heap.

Why: a session that sees batch sizes 1, 2, ... 8 grows its activation arena and the kernels'
shared scratch (the padded input copy, Winograd's transform buffers, a fused pool's unpooled
output) step by step.  After loading, glibc serves requests under 32 MiB from the heap
(runtime/malloc.py says why), and the heap keeps a freed block's pages unless it sits at the
top: each outgrown buffer left a resident hole behind.  Measured with benchmarks/memory.py
(VGG-16, batch 1..8): the heap ended at 310 MiB against 53 MiB with every block mapped.  A
buffer of its own anonymous mapping goes back to the system the moment it is dropped; it is
allocated once per growth and reused by every run, so the mapping costs nothing per run.
Anonymous pages start as zeros, which ``mapped_zeros`` relies on.
"""

from __future__ import annotations

import mmap

import numpy as np

MIN_MAPPED = 1 << 20  # smaller buffers stay on the heap: they leave no hole worth a mapping


def mapped_empty(n: int, dtype) -> np.ndarray:
    """A writable, page-aligned 1-D array of ``n`` elements (zeros, in fact: see module doc)."""
    dtype = np.dtype(dtype)
    nbytes = int(n) * dtype.itemsize
    if nbytes < MIN_MAPPED:
        return np.zeros(n, dtype)
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return np.frombuffer(m, dtype, count=int(n))


mapped_zeros = mapped_empty
