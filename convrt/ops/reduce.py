"""ReduceMean (axes as attribute before opset 18, as input from 18)."""

import numpy as np

from ._shape import FLOAT16_UP, axis, known
from .registry import register_op


def _reduce_mean(ctx, data, axes, keepdims, noop_with_empty_axes=0):
    ctx.check(data.dtype in FLOAT16_UP or data.dtype.kind in "iu",
              f"dtype {data.dtype} is not supported")
    r = data.rank
    if axes is None or len(axes) == 0:
        if noop_with_empty_axes:
            return ctx.result([data.shape], [data.dtype], lambda x, *o: np.copyto(o[-1], x))
        ax = tuple(range(r))
    else:
        ax = tuple(sorted({axis(ctx, a, r, "axes") for a in axes}))
        ctx.check(len(ax) == len(axes), f"axes {list(axes)} has duplicates")
    keep = bool(keepdims)
    shape = tuple((1 if keep else None) if i in ax else d for i, d in enumerate(data.shape))
    shape = tuple(d for i, d in enumerate(shape) if keep or i not in ax)
    ctx.check(all(not known(data.shape[i]) or data.shape[i] > 0 for i in ax),
              "cannot reduce over an empty axis")

    def run(x, *rest):
        np.copyto(rest[-1], np.mean(x, axis=ax, keepdims=keep, dtype=np.float64), casting="unsafe")

    return ctx.result([shape], [data.dtype], run)


@register_op("ReduceMean", since=(1, 11, 13))
def ReduceMean_1(ctx, data, *, axes=None, keepdims=1):
    return _reduce_mean(ctx, data, None if axes is None else list(axes), keepdims)


@register_op("ReduceMean", since=18)
def ReduceMean(ctx, data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    if axes is not None and axes.value is None:
        if ctx.binding:
            raise ctx.unsupported("axes must be computable before run time")
        return ctx.result([None], [data.dtype])
    ax = None if axes is None else [int(v) for v in axes.value.reshape(-1)]
    return _reduce_mean(ctx, data, ax, keepdims, noop_with_empty_axes)
