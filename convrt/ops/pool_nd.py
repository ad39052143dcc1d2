"""Pooling beyond pool.py's 2-D float kernels: 1-D/3-D windows, integer MaxPool, Indices.

``pool.py`` validates and resolves the geometry, then calls in here for what its 2-D kernels do
not cover.  1-D and 2-D inputs run lifted to 3-D (unit leading spatial dims).
"""

import numpy as np

from ..kernels import pool_nd as K


def _lift(shape):
    return tuple(shape[:2]) + (1,) * (5 - len(shape)) + tuple(shape[2:])


def bind_max(ctx, X, k, s, d, p, shape, storage_order, n_outputs):
    """MaxPool through the 3-D kernel; a second output is the Indices tensor (int64)."""
    if storage_order not in (0, 1):
        raise ctx.fail(f"storage_order must be 0 or 1, got {storage_order}")
    geo = K.geometry(k, s, d, p)
    col = bool(storage_order)
    shapes, dtypes = [shape, shape][:max(n_outputs, 1)], [X.dtype, np.int64][:max(n_outputs, 1)]
    if not ctx.binding:
        return ctx.result(shapes, dtypes)
    in5, out5 = _lift(X.shape), _lift(shape)
    dummy = np.zeros((1, 1, 1, 1, 1), np.int64)

    def run(x, out, indices=None):
        want = indices is not None
        K.max_pool3d(x.reshape(in5), out.reshape(out5),
                     indices.reshape(out5) if want else dummy, want, geo, col)

    return ctx.result(shapes, dtypes, run)


def bind_avg(ctx, X, k, s, d, p, shape, count_include_pad):
    if not ctx.binding:
        return ctx.result([shape], [X.dtype])
    geo = K.geometry(k, s, d, p)
    in5, out5 = _lift(X.shape), _lift(shape)
    cip = int(count_include_pad)

    def run(x, out):
        K.avg_pool3d(x.reshape(in5), out.reshape(out5), geo, cip)

    return ctx.result([shape], [X.dtype], run)
