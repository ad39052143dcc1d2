"""Feed validation shared by the InferenceSession (convrt/api.py) and the trainer.

It lives in the runtime because it checks arrays against a Graph's input Values only: no
compiler, no ONNX.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def check_feeds(feeds, inputs: dict, required, source: str,
                cast_numbers: bool = False) -> dict[str, np.ndarray]:
    """Validate ``feeds`` (name -> array) against the graph input Values in ``inputs``.

    Names, dtypes (numbers are cast to a float input's dtype when ``cast_numbers``), ranks, fixed
    dims and the consistency of symbolic dims are checked; every name in ``required`` must be
    fed.  Returns C-contiguous, writable arrays: a read-only feed (``np.load(mmap_mode="r")``,
    ``np.frombuffer``, ``np.broadcast_to``) is copied, because numba types read-only arrays
    apart and would compile (or load) a second variant of every kernel the input reaches, a
    second or more of the first run, for a copy of the smallest tensor of the model.  Raises
    InputError naming the input at fault.
    """
    if not isinstance(feeds, dict):
        raise InputError(f"feeds must be a dict of name -> array, got {type(feeds).__name__}")
    arrays, dims = {}, {}
    for name, arr in feeds.items():
        v = inputs.get(name)
        if v is None:
            raise InputError(f"{source}: unknown input '{name}'; expected {sorted(required)}")
        if not isinstance(arr, np.ndarray):
            try:
                arr = np.asarray(arr)
            except Exception:
                raise InputError(f"input '{name}': not convertible to an array") from None
        if arr.dtype != v.dtype:
            if cast_numbers and arr.dtype.kind in "fiu" and v.dtype.kind == "f":
                arr = arr.astype(v.dtype)
            else:
                raise InputError(f"input '{name}': dtype {arr.dtype}, expected {v.dtype}")
        if v.shape is not None:
            if arr.ndim != len(v.shape):
                raise InputError(f"input '{name}': rank {arr.ndim}, expected "
                                 f"{len(v.shape)} (shape {list(v.shape)})")
            for i, (want, got) in enumerate(zip(v.shape, arr.shape)):
                if isinstance(want, int) and want != got:
                    raise InputError(f"input '{name}': dim {i} is {got}, expected {want}")
                if isinstance(want, str) and dims.setdefault(want, got) != got:
                    raise InputError(f"input '{name}': dim {i} ('{want}') is {got} "
                                     f"but {dims[want]} elsewhere")
        arrays[name] = arr if arr.flags.c_contiguous and arr.flags.writeable else \
            np.array(arr, order="C")
    missing = [n for n in required if n not in arrays]
    if missing:
        raise InputError(f"{source}: missing input(s) {missing}")
    return arrays
