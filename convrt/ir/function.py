"""Model-local functions as plain data: what ``Graph.functions`` holds.

A fused node (``FusedConvRelu``...) is written back to ONNX with a model-local function whose
body is the standard ops it replaces, so onnxruntime and Netron can open the optimized model.
The IR keeps that body as plain data rather than as an ``onnx.FunctionProto`` so that ops and
passes can describe it without importing onnx: ``convrt/onnx_io`` (the ONNX boundary) turns it
into a FunctionProto when writing, and back when reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FunctionNode:
    """One body node.

    Attributes:
        op_type, inputs, outputs, domain: as in an ONNX NodeProto ("" = an omitted input).
        attrs: attribute name -> decoded value (int, float, str, lists, numpy arrays).
        attr_refs: attribute name -> (the caller's attribute it refers to, its ONNX attribute
            type name such as "INTS"): an attribute the body takes from the calling node.
    """

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    attr_refs: dict[str, tuple[str, str]] = field(default_factory=dict)
    domain: str = ""


@dataclass(frozen=True)
class Function:
    """A model-local function: ``domain``/``name`` is the op type it defines.

    ``opsets`` maps each domain its body uses to a version; ``attributes`` lists the attribute
    names a calling node may set.
    """

    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[FunctionNode, ...]
    opsets: dict[str, int]
    attributes: tuple[str, ...] = ()
    doc_string: str = ""
    # a function read from a file whose body uses what plain data does not describe (tensor or
    # graph attributes, default attribute values): its serialized FunctionProto, which the
    # writer emits unchanged; empty for every function convrt builds
    serialized: bytes = b""
