"""Where a path-loaded model's initializers lie in its file, to read one again later.

Why: a session releases the weights its kernels hold packed copies of (convrt/weights.py), and
reads one back only when something needs the original (another packing, an export, a pickle).
For an initializer whose array is still the very one the loader read from the file, reading the
same bytes again is cheap and exact; anything the passes derived (BatchNormalization folded into
a Conv) has no such span and is restored by reloading the model instead.

The file is read with ``pread`` through a fresh descriptor, never mapped: a model file rewritten
in place while the session lives must neither change the weights under it nor kill the process
with SIGBUS.  The file's identity and size and modification time are recorded at load and
checked before every read; a file changed, replaced or deleted since then is a one-line
ModelLoadError (its bytes would be another model's), never a silent wrong weight.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from .. import _protowire as wire
from ..errors import ModelLoadError


def file_stamp(st: os.stat_result) -> tuple:
    """What must not change between loading a file and reading it again."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileOrigin:
    """A model file's path and stamp, and per initializer name its (offset, length) of raw data
    and a weak reference to the array the loader filled from it."""

    def __init__(self, path, stamp: tuple, source: str):
        self.path, self.stamp, self.source = os.path.abspath(path), stamp, source
        self._spans: dict[str, tuple[int, int, weakref.ref]] = {}

    def add(self, name: str, offset: int, length: int, array: np.ndarray) -> None:
        self._spans[name] = (offset, length, weakref.ref(array))

    def holds(self, name: str, array) -> bool:
        """Whether ``array`` is the one the loader read for ``name`` (so the file has its bytes:
        passes never write into an initializer's array, they make new ones)."""
        span = self._spans.get(name)
        return span is not None and array is not None and span[2]() is array

    def read(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """The bytes of ``name`` again, as a fresh array; ModelLoadError if the file changed."""
        offset, length, _ = self._spans[name]
        dtype = np.dtype(dtype)
        if length != int(np.prod(shape)) * dtype.itemsize:
            raise ModelLoadError(f"{self.source}: initializer '{name}' does not match its "
                                 "recorded span")
        changed = ModelLoadError(f"{self.path}: the model file changed or went away since the "
                                 f"session loaded it; cannot read initializer '{name}' again "
                                 "(create a new session)")
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) |
                         getattr(os, "O_NONBLOCK", 0))
        except OSError:
            raise changed from None
        try:
            st = os.fstat(fd)
            if file_stamp(st) != self.stamp:
                raise changed
            arr = np.empty(shape, dtype)
            wire.FileReader(fd, st.st_size).readinto(memoryview(arr.reshape(-1).view(np.uint8)),
                                                     offset)
        except (OSError, wire.Malformed):
            raise changed from None
        finally:
            os.close(fd)
        return arr
