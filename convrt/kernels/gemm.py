"""Fully connected layers: out = act(alpha * A @ B + beta * C), B packed once as (K, M).

At batch 1 an FC layer is a memory-bound GEMV; a numba loop over contiguous rows of the packed
B streams it at memory speed and keeps BLAS's own thread pool off the inference path (see
PERFORMANCE.md: two thread pools on two cores cost 50-60 %).  Columns are split into chunks,
one ``prange`` task each; the chunk of every output row stays in L1 while K is walked.
"""

import numpy as np
from numba import prange

from ..activations import NONE as ACT_NONE, RELU as ACT_RELU  # noqa: F401  (ops/linear.py)
from ._jit import DOT_FAST, pjit


@pjit
def gemm_packed(a, bkm, c, crs, ccs, out, alpha, beta, chunk, act):
    """a (N, K), bkm (K, M), out (N, M); C[i, j] = ``c[i*crs + j*ccs]`` (``bias_operand``), c
    empty when absent."""
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
                    v += beta * c[i * crs + j * ccs]
                if act == ACT_RELU and v < 0:
                    v = 0
                out[i, j] = v


def bias_operand(c, dtype):
    """``(flat, row stride, column stride)``: Gemm's C (any shape that broadcasts to the
    output's (N, M)) as the kernels read it, ``C[i, j] = flat[i*rs + j*cs]``, with a stride of 0
    along a broadcast axis.  One argument type for every C shape and batch size: the
    ``np.broadcast_to`` view this replaces is read-only and typed 'C' at one row but 'A' at
    more, so numba compiled each kernel again per case (about 2 s each).  ``None`` (no C): an
    empty array."""
    if c is None:
        return _NO_C[np.dtype(dtype)], 0, 0
    c2 = np.asarray(c).reshape((1,) * (2 - np.ndim(c)) + np.shape(c))
    if not (c2.flags.c_contiguous and c2.flags.writeable and c2.dtype == dtype):
        c2 = np.array(c2, dtype=dtype, order="C")
    return c2.reshape(-1), (c2.shape[1] if c2.shape[0] > 1 else 0), int(c2.shape[1] > 1)


_NO_C = {np.dtype(np.float32): np.zeros(0, np.float32),
         np.dtype(np.float64): np.zeros(0, np.float64)}


JB = 4  # rows of B per task (one register tile: 4 running dot products share each a[k])
KC = 2048  # K elements per pass: 4 B rows + one a row of a pass stay in L1


@pjit(fastmath=DOT_FAST)
def gemm_nt(a, bmk, c, crs, ccs, out, alpha, beta, act):
    """out = act(alpha * a @ bmk.T + beta * C); a (N, K), bmk (M, K) row-major (ONNX Gemm's
    transB=1 weights as stored: no packed copy), out (N, M), C as in ``gemm_packed``.

    Each task owns JB rows of B and streams them once from memory (contiguous 4*K floats) while
    every row of ``a`` is applied to them in K passes of KC (L1-resident): memory-bound GEMV at
    batch 1, and at batch 8-64 each weight loaded from memory serves all N rows.
    """
    n, k = a.shape
    m = bmk.shape[0]
    has_c = c.shape[0] != 0
    ntask = (m + JB - 1) // JB
    for t in prange(ntask):
        j0 = t * JB
        acc = np.zeros((n, JB), out.dtype)
        if j0 + JB <= m:
            b0 = bmk[j0]
            b1 = bmk[j0 + 1]
            b2 = bmk[j0 + 2]
            b3 = bmk[j0 + 3]
            for k0 in range(0, k, KC):
                k1 = min(k, k0 + KC)
                # views, so the inner index is the bare loop variable (vectorizable)
                c0 = b0[k0:k1]
                c1 = b1[k0:k1]
                c2 = b2[k0:k1]
                c3 = b3[k0:k1]
                for i in range(n):
                    ar = a[i, k0:k1]
                    s0 = acc[i, 0]
                    s1 = acc[i, 1]
                    s2 = acc[i, 2]
                    s3 = acc[i, 3]
                    for kk in range(k1 - k0):
                        av = ar[kk]
                        s0 += av * c0[kk]
                        s1 += av * c1[kk]
                        s2 += av * c2[kk]
                        s3 += av * c3[kk]
                    acc[i, 0] = s0
                    acc[i, 1] = s1
                    acc[i, 2] = s2
                    acc[i, 3] = s3
        else:
            for j in range(j0, m):
                br = bmk[j]
                for i in range(n):
                    ar = a[i]
                    s = acc[i, j - j0]
                    for kk in range(k):
                        s += ar[kk] * br[kk]
                    acc[i, j - j0] = s
        for i in range(n):
            for j in range(j0, min(m, j0 + JB)):
                v = alpha * acc[i, j - j0]
                if has_c:
                    v += beta * c[i * crs + j * ccs]
                if act == ACT_RELU and v < 0:
                    v = 0
                out[i, j] = v
