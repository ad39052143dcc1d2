"""Shape arithmetic shared by ops: broadcasting, axes, conv/pool output sizes.

Dims are ``int`` (known), ``str`` (symbolic) or ``None`` (unknown); arithmetic on a non-int dim
gives ``None`` except where a dim passes through unchanged.
"""

from __future__ import annotations

import math

import numpy as np

FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT16_UP = (np.dtype(np.float16),) + FLOAT_TYPES
INT_TYPES = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64,
                                        np.uint8, np.uint16, np.uint32, np.uint64))
NUMERIC = FLOAT16_UP + INT_TYPES


def known(d) -> bool:
    return isinstance(d, int)


def numel(shape) -> int | None:
    if shape is None or not all(known(d) for d in shape):
        return None
    return int(math.prod(shape))


def broadcast(ctx, *shapes):
    """Numpy-style multidirectional broadcasting of several shapes."""
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded):
        ints = {d for d in dims if known(d) and d != 1}
        if len(ints) > 1:
            raise ctx.fail(f"shapes {[list(s) for s in shapes]} do not broadcast")
        if ints:
            out.append(ints.pop())
        elif all(d == 1 for d in dims):
            out.append(1)
        else:
            syms = {d for d in dims if d != 1}
            out.append(syms.pop() if len(syms) == 1 else None)
    return tuple(out)


def axis(ctx, a: int, rank: int, name: str = "axis", extra: int = 0) -> int:
    """Normalize a possibly negative axis into [0, rank + extra)."""
    a = int(a)
    r = rank + extra
    if not -r <= a < r:
        raise ctx.fail(f"{name} {a} out of range for rank {rank}")
    return a + r if a < 0 else a


def ints(ctx, values, n: int | None, name: str, minimum: int | None = None):
    """A tuple of ints with optional length and lower bound checks."""
    try:
        t = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ctx.fail(f"{name} must be a list of integers") from None
    if n is not None and len(t) != n:
        raise ctx.fail(f"{name} has {len(t)} entries, expected {n}")
    if minimum is not None and any(v < minimum for v in t):
        raise ctx.fail(f"{name} {list(t)} must be >= {minimum}")
    return t


def window(ctx, spatial, kernel, strides, dilations, pads, auto_pad, ceil_mode=0):
    """Output spatial dims and resolved pads (begin..., end...) for conv/pool windows.

    ONNX's rules: NOTSET uses ``pads``; VALID has none; SAME_UPPER/LOWER pad so that
    out = ceil(in / stride), the odd cell at the end (UPPER) or the beginning (LOWER).
    """
    n = len(kernel)
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ctx.fail(f"auto_pad {auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, "
                       "SAME_LOWER")
    out, begin, end = [], [], []
    for i in range(n):
        size, k, s, d = spatial[i], kernel[i], strides[i], dilations[i]
        ek = (k - 1) * d + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if not known(size):
                out.append(None), begin.append(0), end.append(0)
                continue
            o = -(-size // s)
            total = max(0, (o - 1) * s + ek - size)
            small, big = total // 2, total - total // 2
            b, e = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        else:
            b, e = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + n])
            if not known(size):
                out.append(None), begin.append(b), end.append(e)
                continue
            span = size + b + e - ek
            if span < 0:
                raise ctx.fail(f"window {ek} larger than padded input {size + b + e} "
                               f"on spatial axis {i}")
            o = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (o - 1) * s >= size + b:
                o -= 1  # the last window would start in the end padding
        out.append(o), begin.append(b), end.append(e)
    return tuple(out), tuple(begin) + tuple(end)
