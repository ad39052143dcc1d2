"""The ONNX boundary: the only package (with convrt/backend.py) that imports onnx.

- :mod:`.reader`: ONNX -> IR (``read_model``, ``load_graph``, ``to_graph``), defensively;
- :mod:`.tensors`: TensorProto and element types <-> numpy, with every size checked;
- :mod:`.writer`: IR -> ONNX (``from_graph``, ``save``; imported on first use);
- :mod:`.proto`: onnx's protobuf classes without the onnx package's slow import;
- :mod:`.functions`: model-local functions, ``ir.Function`` (plain data) <-> FunctionProto;
- :mod:`.schemas`: what the ONNX spec says about an op (schema versions, attribute types).

The names other modules used from the former ``convrt/onnx_io.py`` are re-exported here.
"""

from .functions import function_from_proto, function_to_proto
from .reader import MIN_OPSET, load_graph, read_model, to_graph
from .tensors import DEFAULT_MEMORY_BUDGET, np_dtype, onnx_type, tensor_to_array


def __getattr__(name):
    """The writer's names on first use: it imports onnx, which costs about half a second
    (``proto.py``), and most processes only read models."""
    if name in ("from_graph", "save", "save_model"):
        from . import writer
        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DEFAULT_MEMORY_BUDGET", "MIN_OPSET", "from_graph", "function_from_proto",
           "function_to_proto", "load_graph", "np_dtype", "onnx_type", "read_model", "save",
           "save_model", "tensor_to_array", "to_graph"]
