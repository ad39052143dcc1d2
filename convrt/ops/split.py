"""Split: one tensor into consecutive pieces along an axis (YOLOv8's C2f blocks, its head).

Four schema versions: opset 2 and 11 take the sizes as the ``split`` attribute (11 allows a
negative axis), 13 as an int64 input, 18 adds ``num_outputs`` (pieces of ceil(d / n), the last
one smaller).  Without sizes the axis is split evenly among the node's outputs.  The sizes must
be constant when a plan is built, non-negative, one per output and sum to the axis length: a
ShapeError naming the node otherwise, before any kernel sees them.  Each output is a copy (a
piece along an inner axis is not C-contiguous, and every array in a plan's env is).
"""

import numpy as np

from ._shape import axis as norm_axis
from ._shape import known
from .registry import register_op


def _split(ctx, X, axis, sizes, num_outputs=None):
    """``sizes``: list of ints, None (even split) or ``_UNKNOWN`` (a non-constant input)."""
    r = X.rank
    ctx.check(r is not None and r >= 1, f"input rank {r} must be >= 1")
    a = norm_axis(ctx, axis, r)
    n = ctx.n_outputs
    ctx.check(n >= 1, "needs at least one output")
    d = X.shape[a]
    if sizes is _UNKNOWN:
        return ctx.result([X.shape[:a] + (None,) + X.shape[a + 1:]] * n, [X.dtype] * n)
    if sizes is None:
        if num_outputs is not None:
            ctx.check(int(num_outputs) == n, f"num_outputs {num_outputs} differs from the "
                      f"node's {n} outputs")
        if not known(d):
            return ctx.result([X.shape[:a] + (None,) + X.shape[a + 1:]] * n,
                              [X.dtype] * n)
        if num_outputs is None:
            ctx.check(d % n == 0, f"axis {a} of size {d} does not split evenly into {n} "
                      f"outputs")
            sizes = [d // n] * n
        else:
            step = -(-d // n)
            sizes = [step] * (n - 1) + [d - step * (n - 1)]
            ctx.check(sizes[-1] >= 0, f"axis {a} of size {d} cannot be split into {n} outputs "
                      f"of size {step}")
    else:
        ctx.check(num_outputs is None, "takes either the split input or num_outputs, not both")
        ctx.check(len(sizes) == n, f"split {sizes} has {len(sizes)} entries for {n} outputs")
        ctx.check(all(s >= 0 for s in sizes), f"split {sizes} has a negative size")
        if known(d):
            ctx.check(sum(sizes) == d, f"split {sizes} sums to {sum(sizes)}, not the size {d} "
                      f"of axis {a} of input {list(X.shape)}")
    shapes = [X.shape[:a] + (s,) + X.shape[a + 1:] for s in sizes]
    bounds = np.cumsum([0] + list(sizes)).tolist()
    pieces = [(slice(None),) * a + (slice(lo, hi),) for lo, hi in zip(bounds, bounds[1:])]

    def run(x, *rest):  # rest = ([split input], outputs...)
        for sl, out in zip(pieces, rest[len(rest) - n:]):
            np.copyto(out, x[sl])

    return ctx.result(shapes, [X.dtype] * n, run)


_UNKNOWN = object()


@register_op("Split", since=(2, 11))
def Split_2(ctx, input, *, axis=0, split=None):
    return _split(ctx, input, axis, None if split is None else [int(s) for s in split])


def _sizes_input(ctx, split):
    if split is None:
        return None
    if split.value is None:
        if ctx.binding:
            raise ctx.unsupported("input 'split' must be computable before run time")
        return _UNKNOWN
    ctx.check(split.dtype == np.int64, f"split must be int64, got {split.dtype}")
    ctx.check(split.rank == 1, f"split must be 1-D, got shape {list(split.shape)}")
    return [int(s) for s in split.value.reshape(-1)]


@register_op("Split", since=13)
def Split_13(ctx, input, split=None, *, axis=0):
    return _split(ctx, input, axis, _sizes_input(ctx, split))


@register_op("Split", since=18)
def Split(ctx, input, split=None, *, axis=0, num_outputs=None):
    sizes = _sizes_input(ctx, split)
    if split is None:
        ctx.check(num_outputs is not None, "needs the split input or the num_outputs attribute")
    return _split(ctx, input, axis, sizes, num_outputs)
