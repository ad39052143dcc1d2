"""What the ONNX specification says about an op: the questions ops and the registry ask.

The registry picks an op function by the schema version in force at the model's opset, and
``ops/infer.py`` checks a node's attribute names and types against that schema before the op
runs.  The answers come from ``onnx.defs``; asking through this module keeps the onnx import at
the ONNX boundary (convrt/onnx_io), so ops stay plain Python over the IR.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx.defs
from onnx import AttributeProto


def newest_opset() -> int:
    """The newest default-domain opset the installed onnx describes."""
    return onnx.defs.onnx_opset_version()


def since_version(op_type: str, domain: str, opset: int) -> int | None:
    """The schema version in force for ``op_type`` at ``opset`` (None when onnx knows none)."""
    try:
        return onnx.defs.get_schema(op_type, opset, domain or "").since_version
    except Exception:  # onnx raises SchemaError for unknown ops/opsets
        return None


@functools.lru_cache(maxsize=None)
def attribute_names(op_type: str, domain: str, opset: int) -> frozenset | None:
    """Attribute names the schema in force at ``opset`` allows (None: no schema)."""
    try:
        return frozenset(onnx.defs.get_schema(op_type, opset, domain or "").attributes)
    except Exception:
        return None


@functools.lru_cache(maxsize=4096)
def attribute_types(op_type: str, domain: str, opset: int) -> dict | None:
    """Attribute name -> ``AttributeProto.AttributeType`` in the schema in force (None: none)."""
    try:
        attrs = onnx.defs.get_schema(op_type, opset, domain or "").attributes
    except Exception:
        return None
    return {name: int(a.type) for name, a in attrs.items()}


_INT = (int, np.integer)  # bool is an int
_NUM = (int, float, np.integer, np.floating)


def attr_type_ok(value, attr_type: int) -> bool:
    """Whether a decoded attribute value has the Python type the schema's type decodes to."""
    A = AttributeProto
    if attr_type == A.INT:
        return isinstance(value, _INT)
    if attr_type == A.FLOAT:
        return isinstance(value, _NUM)
    if attr_type == A.STRING:
        return isinstance(value, str)
    if attr_type == A.TENSOR:
        return isinstance(value, np.ndarray)
    kinds = {A.INTS: ("iub", _INT), A.FLOATS: ("iubf", _NUM), A.STRINGS: ("U", str)}.get(attr_type)
    if kinds is None:
        return True  # graphs, sparse tensors, type protos: the ops taking them check them
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in kinds[0]
    return isinstance(value, (list, tuple)) and all(isinstance(v, kinds[1]) for v in value)
