"""Model-local functions: ``ir.Function`` (plain data) <-> ``onnx.FunctionProto``.

Ops and passes describe a fused node's ONNX definition as plain data (convrt/ops/fused.py);
this module is where it becomes a protobuf, so that nothing above the ONNX boundary imports
onnx.  Reading keeps a convrt-domain function of a loaded model for export: as plain data when
its body uses only simple attributes, else as its serialized bytes, written back unchanged.
"""

from __future__ import annotations

from ..ir import Function, FunctionNode
from .proto import AttributeProto, FunctionProto, NodeProto

_SIMPLE = {AttributeProto.FLOAT: lambda a: float(a.f), AttributeProto.INT: lambda a: int(a.i),
           AttributeProto.STRING: lambda a: a.s.decode("utf-8", errors="replace"),
           AttributeProto.FLOATS: lambda a: [float(v) for v in a.floats],
           AttributeProto.INTS: lambda a: [int(v) for v in a.ints],
           AttributeProto.STRINGS: lambda a: [s.decode("utf-8", errors="replace")
                                              for s in a.strings]}


def _plain(f: FunctionProto) -> Function | None:
    """``f`` as plain data, or None when it uses anything the plain form does not describe."""
    if len(f.attribute_proto) or f.overload or len(f.value_info) or len(f.metadata_props) or \
            any(o.domain not in ("", "ai.onnx") for o in f.opset_import):
        return None
    nodes = []
    for n in f.node:
        attrs, refs = {}, {}
        for a in n.attribute:
            if a.ref_attr_name:
                if a.type not in _SIMPLE:
                    return None
                refs[a.name] = (a.ref_attr_name, AttributeProto.AttributeType.Name(a.type))
            elif a.type in _SIMPLE:
                attrs[a.name] = _SIMPLE[a.type](a)
            else:
                return None
        if n.name or n.doc_string:
            return None
        nodes.append(FunctionNode(n.op_type, tuple(n.input), tuple(n.output), attrs, refs,
                                  n.domain))
    return Function(f.domain, f.name, tuple(f.input), tuple(f.output), tuple(nodes),
                    {"": int(o.version) for o in f.opset_import}, tuple(f.attribute),
                    f.doc_string)


def function_from_proto(f: FunctionProto, source: str = "<model>") -> Function:
    """The IR form of a model-local function read from a file (never raises for odd bodies)."""
    try:
        plain = _plain(f)
    except (ValueError, UnicodeError):
        plain = None
    if plain is not None:
        return plain
    return Function(f.domain, f.name, tuple(f.input), tuple(f.output), (), {},
                    tuple(f.attribute), f.doc_string, serialized=f.SerializeToString())


def _node_proto(n: FunctionNode) -> NodeProto:
    from onnx import helper  # writing only: onnx's import is slow (proto.py)
    node = helper.make_node(n.op_type, list(n.inputs), list(n.outputs), domain=n.domain or None,
                            **n.attrs)
    for name, (ref, typ) in n.attr_refs.items():
        a = AttributeProto()
        a.name, a.ref_attr_name, a.type = name, ref, getattr(AttributeProto, typ)
        node.attribute.append(a)
    return node


def function_to_proto(fn: Function) -> FunctionProto:
    """The FunctionProto of ``fn`` (its original bytes when it was kept serialized)."""
    from onnx import helper  # writing only: onnx's import is slow (proto.py)
    if fn.serialized:
        f = FunctionProto()
        f.ParseFromString(fn.serialized)
        return f
    opsets = [helper.make_opsetid(d, int(v)) for d, v in fn.opsets.items()]
    return helper.make_function(fn.domain, fn.name, list(fn.inputs), list(fn.outputs),
                                [_node_proto(n) for n in fn.nodes], opsets, list(fn.attributes),
                                doc_string=fn.doc_string or None)
