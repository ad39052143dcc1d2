"""convrt: an ONNX model compiler and inference runtime for convolutional networks.

    import convrt
    sess = convrt.InferenceSession("model.onnx")
    (logits,) = sess.run(None, {"input": x})

The public names resolve on first use (PEP 562 ``__getattr__``): ``import convrt`` alone reads
no onnx, numba, kernels or passes (those cost ~0.8 s, which ``convrt --version``, a worker that
only checks the version, or a program that imports convrt but never runs a model need not pay).
``from convrt import InferenceSession`` imports what that name needs, then and only then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (ConvrtError, InputError, ModelLoadError, ShapeError, TrainingError,
                     UnsupportedOpError)

__version__ = "0.1.0"

# public name -> the submodule that defines it (imported on first access)
_LAZY = {"load": "compiler", "optimize": "compiler", "from_graph": "onnx_io", "save": "onnx_io",
         **{name: "api" for name in ("ExecutionMode", "GraphOptimizationLevel",
                                     "InferenceSession", "ModelMetadata", "NodeArg",
                                     "RunOptions", "SessionOptions")}}

__all__ = ["ConvrtError", "ExecutionMode", "GraphOptimizationLevel", "InferenceSession",
           "InputError", "ModelLoadError", "ModelMetadata", "NodeArg", "RunOptions",
           "SessionOptions", "ShapeError", "TrainingError", "UnsupportedOpError", "from_graph",
           "load", "optimize", "save"]

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from .api import (ExecutionMode, GraphOptimizationLevel, InferenceSession, ModelMetadata,
                      NodeArg, RunOptions, SessionOptions)
    from .compiler import load, optimize
    from .onnx_io import from_graph, save


def __getattr__(name: str):
    """Import a public name's module on first access (and cache the name here), or a submodule
    (``convrt.compiler`` after a bare ``import convrt``, as when every module was imported
    eagerly)."""
    if name in _LAZY:
        value = getattr(importlib.import_module("." + _LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module("." + name, __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":  # a missing dependency inside the submodule
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
