"""Fully connected layers: out = act(alpha * A @ B + beta * C), B packed once as (K, M).

At batch 1 an FC layer is a memory-bound GEMV; a numba loop over contiguous rows of the packed
B streams it at memory speed and keeps BLAS's own thread pool off the inference path (see
PERFORMANCE.md: two thread pools on two cores cost 50-60 %).  Columns are split into chunks,
one ``prange`` task each; the chunk of every output row stays in L1 while K is walked.
"""

from numba import prange

from ._jit import pjit

ACT_NONE, ACT_RELU = 0, 1


@pjit
def gemm_packed(a, bkm, c, out, alpha, beta, chunk, act):
    """a (N, K), bkm (K, M), c (N, M) or (0, 0) when absent, out (N, M)."""
    n, k = a.shape
    m = bkm.shape[1]
    nchunks = (m + chunk - 1) // chunk
    has_c = c.shape[0] != 0
    for t in prange(nchunks):
        j0 = t * chunk
        j1 = min(m, j0 + chunk)
        for i in range(n):
            for j in range(j0, j1):
                out[i, j] = 0
        for kk in range(k):
            brow = bkm[kk]
            for i in range(n):
                av = a[i, kk]
                orow = out[i]
                for j in range(j0, j1):
                    orow[j] += av * brow[j]
        for i in range(n):
            for j in range(j0, j1):
                v = alpha * out[i, j]
                if has_c:
                    v += beta * c[i, j]
                if act == ACT_RELU and v < 0:
                    v = 0
                out[i, j] = v
