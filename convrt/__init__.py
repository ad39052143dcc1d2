"""convrt: an ONNX model compiler and inference runtime for convolutional networks.

    import convrt
    sess = convrt.InferenceSession("model.onnx")
    (logits,) = sess.run(None, {"input": x})
"""

from . import ops  # noqa: F401  (registers every op)
from .compiler import load, optimize
from .errors import (ConvrtError, InputError, ModelLoadError, ShapeError, TrainingError,
                     UnsupportedOpError)
from .onnx_io import from_graph, save
from .api import (ExecutionMode, GraphOptimizationLevel, InferenceSession, ModelMetadata,
                      NodeArg, RunOptions, SessionOptions)

__version__ = "0.1.0"

__all__ = ["ConvrtError", "ExecutionMode", "GraphOptimizationLevel", "InferenceSession",
           "InputError", "ModelLoadError", "ModelMetadata", "NodeArg", "RunOptions",
           "SessionOptions", "ShapeError", "TrainingError", "UnsupportedOpError", "from_graph",
           "load", "optimize", "save"]
