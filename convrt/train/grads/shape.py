"""Backward of the ops that only move data: Identity, Flatten, Reshape, Squeeze, Unsqueeze,
Concat."""

from __future__ import annotations

import numpy as np

from .registry import register_grad


def _same_shape(ctx, gy):
    x = ctx.inputs[0]
    return (gy[0].reshape(x.shape),) + (None,) * (len(ctx.inputs) - 1)


register_grad("Identity")(_same_shape)
register_grad("Flatten")(_same_shape)
register_grad("Reshape", nondiff=(1,))(_same_shape)
register_grad("Squeeze", nondiff=(1,))(_same_shape)
register_grad("Unsqueeze", nondiff=(1,))(_same_shape)


@register_grad("Concat")
def concat_grad(ctx, gy):
    axis = int(ctx.attrs["axis"])
    axis = axis + gy[0].ndim if axis < 0 else axis
    bounds = np.cumsum([t.shape[axis] for t in ctx.inputs])[:-1]
    return tuple(np.split(gy[0], bounds, axis=axis))
