"""The first tier's kernels: numpy forms of the ops whose numba kernels take longest to compile.

Why: on an empty numba cache the compiled convolutions, GEMMs and pools of a model take 20-40 s
to compile on the 2-core reference machine (issue #16), while numpy runs them at once.  A session
that finds its kernels uncached plans the model with these (``OpContext.first_tier``) and
answers with them while the compiled plan builds in a background thread (runtime/tiers.py).
They compile nothing and import no numba; they are written for clarity, not speed: a
convolution is one matrix product per image over a strided window view (im2col, one image at
a time to bound the temporaries), so it runs on numpy's BLAS.  The results agree with the compiled
tier to float32 rounding, not bitwise (the sums run in another order); both are tested against
the same oracles (tests/test_first_tier.py).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..activations import reference as activate


def _acc(dtype):
    """The type numpy computes in: float16 runs in float32 (numpy's float16 products are slow
    and round at every step), the others in their own type."""
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


def _windows(x, k, s, d, p, out_hw, fill):
    """``x`` (N, C, H, W) padded with ``fill`` by ``p`` (top, left, bottom, right), more at the
    bottom/right where the output size needs it (ceil mode), as a read-only view
    (N, C, OH, OW, kH, kW) of each output pixel's window."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = k, s, d, out_hw
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    bottom = max(p[2], (oh - 1) * sh + eh - x.shape[2] - p[0])
    right = max(p[3], (ow - 1) * sw + ew - x.shape[3] - p[1])
    if any(p) or bottom or right:
        x = np.pad(x, ((0, 0), (0, 0), (p[0], bottom), (p[1], right)), constant_values=fill)
    win = sliding_window_view(x, (eh, ew), axis=(2, 3))
    return win[:, :, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw, ::dh, ::dw]


def conv2d(x, w, b, z, y, s, p, d, group, activation="none", alpha=0.01,
           clip=(-np.inf, np.inf), pool=None):
    """``y = act(conv(x, w) + b + z)`` (2-D, NCHW), max-pooled with ``pool`` (kernel, strides,
    pads top, left, bottom, right: ``kernels/conv/conv_pool.POOL_2X2``).

    ``p`` is (top, left, bottom, right); ``z`` the residual (None: none); ``y`` the output,
    written in place; ``activation``, ``alpha`` and ``clip`` as ``activations.reference``.
    One image at a time, start to end: the temporaries (its im2col copy and its output before
    pooling) are one image's, whatever the batch."""
    m = y.shape[1]
    out_hw = y.shape[2:]
    if pool:  # the conv's own output size, not the pooled one
        out_hw = tuple(_conv_out(x.shape[2 + i], w.shape[2 + i], s[i], d[i], p[i], p[i + 2])
                       for i in range(2))
    dt = _acc(y.dtype)
    x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
    cg, mg = w.shape[1], m // group
    kk = w.shape[2] * w.shape[3]
    wg = w.reshape(group, mg, cg, w.shape[2], w.shape[3])
    for i in range(y.shape[0]):
        win = _windows(x[i:i + 1], w.shape[2:], s, d, p, out_hw, 0)[0]  # (C, OH, OW, kH, kW)
        if group == 1:
            cols = win.transpose(1, 2, 0, 3, 4).reshape(out_hw[0] * out_hw[1], cg * kk)
            out = (cols @ w.reshape(m, cg * kk).T).T.reshape(m, *out_hw)
        else:
            xg = win.reshape(group, cg, *win.shape[1:])
            out = np.einsum("gcpqij,gmcij->gmpq", xg, wg, optimize=True).reshape(m, *out_hw)
        if b is not None:
            out += b.astype(dt, copy=False).reshape(m, 1, 1)
        if z is not None:
            out += z[i].astype(dt, copy=False)
        out = activate(out, activation, alpha, clip[0], clip[1])
        if pool:
            max_pool2d(out[None], y[i:i + 1], pool[:2], pool[2:4], (1, 1), pool[4:])
            continue
        y[i] = out


def _conv_out(size, k, s, d, before, after):
    return (size + before + after - (k - 1) * d - 1) // s + 1


def max_pool2d(x, y, k, s, d, p):
    """``y`` = the max over each window of ``x`` (NCHW; ``p`` top, left, bottom, right; padding
    never wins); NaN propagates."""
    win = _windows(x, k, s, d, p, y.shape[2:], -np.inf)
    y[...] = win.max(axis=(4, 5))


def avg_pool2d(x, y, k, s, d, p, count_include_pad):
    """``y`` = the mean over each window of ``x`` (NCHW; ``p`` top, left, bottom, right),
    divided by the window's cells inside the padded input (``count_include_pad``) or inside the
    input itself: ONNX's two rules, as ``kernels.pool.avg_divisor`` counts them."""
    dt = _acc(y.dtype)
    sums = _windows(x.astype(dt, copy=False), k, s, d, p, y.shape[2:], 0).sum(axis=(4, 5))
    h, w = x.shape[2:]
    if count_include_pad:  # ones over the padded input, its windows from its corner
        ones, at = np.ones((1, 1, h + p[0] + p[2], w + p[1] + p[3]), dt), (0, 0, 0, 0)
    else:  # ones over the input, padded with zeros as x is
        ones, at = np.ones((1, 1, h, w), dt), p
    y[...] = sums / _windows(ones, k, s, d, at, y.shape[2:], 0).sum(axis=(4, 5))


def softmax(x, y, log):
    """Softmax (``log``: LogSoftmax) of ``x`` (outer, n, inner) over its axis 1, into ``y``."""
    dt = _acc(y.dtype)
    z = x.astype(dt) - x.max(axis=1, keepdims=True).astype(dt)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    y[...] = z - np.log(total) if log else e / total


def global_pool(x, y, op):
    """Global average (``op`` "avg") or max pool of ``x`` (N, C, ...) into ``y`` (N, C, 1...)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    r = (flat.mean(axis=2, dtype=_acc(x.dtype)) if op == "avg" else flat.max(axis=2))
    y[...] = r.reshape(y.shape)


def gemm(a, b, c, y, alpha, beta, trans_a, trans_b, activation="none"):
    """``y = act(alpha * A' @ B' + beta * C)`` (ONNX Gemm; ``activation`` "none" or "relu")."""
    dt = _acc(y.dtype)
    a, b = a.astype(dt, copy=False), b.astype(dt, copy=False)
    r = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if alpha != 1.0:
        r *= dt.type(alpha)
    if c is not None and beta != 0.0:
        r += dt.type(beta) * c.astype(dt, copy=False)
    y[...] = activate(r, activation)
