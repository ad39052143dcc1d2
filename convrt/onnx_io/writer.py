"""IR -> ONNX: writing a Graph back as a ModelProto (initializers inline).

Fused nodes stay portable: their model-local functions (``Graph.functions``, plain data) become
FunctionProtos here, so onnxruntime and Netron open the optimized model.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..ir import Graph, Value
from .functions import function_to_proto
from .tensors import onnx_type


def _value_info(v: Value):
    shape = None if v.shape is None else [d if d is not None else None for d in v.shape]
    elem = onnx_type(v.dtype) if v.dtype is not None else TensorProto.UNDEFINED
    return onnx.helper.make_tensor_value_info(v.name, elem, shape)


def from_graph(g: Graph) -> onnx.ModelProto:
    """Write the IR back as an ONNX ModelProto (initializers inline)."""
    nodes = []
    for n in g.nodes:
        attrs = {k: v for k, v in n.attrs.items()}
        for k, v in attrs.items():
            if isinstance(v, np.ndarray):
                attrs[k] = numpy_helper.from_array(v)
        nodes.append(onnx.helper.make_node(
            n.op_type, [v.name if v is not None else "" for v in n.inputs],
            [v.name for v in n.outputs], name=n.name, domain=n.domain or None, **attrs))
    inits = [numpy_helper.from_array(np.ascontiguousarray(v.const), name)
             for name, v in g.initializers.items()]
    inner = [v for n in g.nodes for v in n.outputs
             if v not in g.outputs and v.shape is not None and v.dtype is not None]
    graph = onnx.helper.make_graph(
        nodes, g.name, [_value_info(v) for v in g.inputs], [_value_info(v) for v in g.outputs],
        inits, value_info=[_value_info(v) for v in inner])
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in g.opsets.items()]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="convrt",
                                   functions=[function_to_proto(f) for f in g.functions.values()])
    # IR 4 is the first where an initializer need not be listed as an input
    model.ir_version = max(g.ir_version, 7 if g.functions else 4)
    return model


def save(g: Graph, path: str | os.PathLike) -> None:
    onnx.save_model(from_graph(g), str(path))


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write a ModelProto built by :func:`from_graph` (the trainer's export)."""
    onnx.save_model(model, os.fspath(path))
