"""What a plan being built sees of a released constant: its shape and dtype, not its data.

A session releases a weight once every kernel reading it holds a packed copy of its own
(``Value.release``; convrt/weights.py says when).  Planning another batch size then binds the
same kernels again and finds their packed copies in the session's pack cache: it needs the
weight's shape, dtype and constness, never its values.  Handing the ops the array itself would
restore it (a file read, or a whole reload and re-optimization for a weight the passes derived,
BatchNormalization folded into a Conv) on every new batch size and bring the memory back.  So
shape inference gets this stand-in instead.  Whatever does need the values converts it with
``np.asarray`` (``__array__``) or calls ``array()``, which restores the weight through its
Value: correct, only slower.
"""

from __future__ import annotations

import math

import numpy as np


class Released:
    """Stand-in for the array of a released constant ``value`` (optionally reshaped)."""

    __slots__ = ("value", "shape", "dtype")

    def __init__(self, value, shape=None):
        self.value = value
        self.shape = tuple(value.shape if shape is None else shape)
        self.dtype = value.dtype

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def array(self) -> np.ndarray:
        """The data (restored through the Value: see ``Value.const``)."""
        a = self.value.const
        return a if a.shape == self.shape else a.reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        a = self.array()
        return a if dtype is None else a.astype(dtype, copy=False)

    def reshape(self, *shape) -> Released:
        """A stand-in of another shape (for 1-D convolutions run as 2-D): still no data."""
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if -1 in shape:
            rest = math.prod(d for d in shape if d != -1)
            shape = tuple(self.size // rest if d == -1 else d for d in shape)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        return Released(self.value, shape)

    def __repr__(self) -> str:
        return f"Released({self.value.name!r}, {self.shape}, {self.dtype})"
