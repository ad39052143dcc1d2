"""ONNX -> IR: reading a model (path, bytes or ModelProto) into an unsorted Graph.

Reading is defensive because models come from the internet: every tensor's byte length is
checked against ``prod(dims) x itemsize`` before it is viewed (see :mod:`.tensors`), external
data must resolve to a regular file inside the model's directory, and nothing from the protobuf
reaches a kernel unvalidated.  Every failure is a :class:`~convrt.errors.ModelLoadError` naming
the file and the tensor, node or field at fault.

:func:`load_graph` (what ``convrt.load`` uses) reads a path or bytes without a protobuf copy of
the weights: :mod:`convrt._protowire` cuts large initializer ``raw_data`` out of the message,
protobuf parses the small remainder, and each payload is read (``pread`` for files, no mmap)
straight into its own aligned, writable array after the same checks.  Any doubt about the
bytes sends it down the ordinary ``read_model`` + ``to_graph`` path.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from .. import _protowire as wire
from ..errors import ModelLoadError, UnsupportedOpError
from ..ir import Graph, Node, Value
from . import schemas
from .functions import function_from_proto
from .origin import FileOrigin, file_stamp
from .proto import AttributeProto, ModelProto
from .tensors import DEFAULT_MEMORY_BUDGET, np_dtype, payload_bytes, tensor_to_array

MIN_OPSET = 7

# -- reading ----------------------------------------------------------------------------------
def read_model(src, base_dir: str | os.PathLike | None = None):
    """Parse ``src`` (path, bytes or ModelProto) -> (ModelProto, source label, base dir)."""
    if isinstance(src, ModelProto):
        return src, "<ModelProto>", base_dir
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, source = bytes(src), "<bytes>"
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        source = path.name
        try:  # a FIFO or /dev/zero would block or read forever; protobuf stops at 2 GiB
            st = os.stat(path)
        except (OSError, ValueError):
            st = None  # the read below says why
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise ModelLoadError(f"{src}: not a regular file")
        if st is not None and st.st_size >= 1 << 31:
            raise ModelLoadError(f"{src}: {st.st_size} bytes is over the 2 GiB protobuf limit "
                                 "(large weights belong in external data)")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(f"{src}: no such file") from None
        except IsADirectoryError:
            raise ModelLoadError(f"{src}: is a directory, not an ONNX file") from None
        except OSError as e:
            raise ModelLoadError(f"{src}: cannot read ({e.strerror})") from None
        except ValueError as e:  # e.g. an embedded NUL in the path
            raise ModelLoadError(f"{src!r}: invalid path ({e})") from None
        base_dir = path.resolve().parent if base_dir is None else base_dir
    else:
        raise ModelLoadError(f"cannot load a model from {type(src).__name__}; pass a path, "
                             "bytes or onnx.ModelProto")
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{source}: not a valid ONNX protobuf ({e})") from None
    if not model.HasField("graph") or (len(model.graph.node) == 0 and
                                       len(model.graph.output) == 0):
        raise ModelLoadError(f"{source}: not an ONNX model (no graph)")
    return model, source, base_dir


class _Weights:
    """Initializer payloads left out of a reduced ModelProto: per initializer index, None or
    ``(offset, length)`` in ``reader`` (see :mod:`convrt._protowire`)."""

    def __init__(self, reader, spans):
        self.reader, self.spans = reader, spans

    def get(self, i: int):
        span = self.spans[i] if i < len(self.spans) else None
        return None if span is None else (self.reader, span[0], span[1])

    def restore(self, model, source: str) -> None:
        """Put the payloads back into ``model`` (before a rewrite that copies the model)."""
        for i, t in enumerate(model.graph.initializer):
            data = self.get(i)
            if data is not None:
                t.raw_data = payload_bytes(data, f"tensor '{t.name}'", source)
        self.spans = []


def _read_reduced(src, base_dir):
    """The fast path of :func:`load_graph`: (model, source, base_dir, _Weights, fd) or None.

    None means "use read_model": the input is a ModelProto, not a plain file, or anything about
    it is unusual; read_model then loads it (or refuses it) exactly as before.
    """
    if sys.byteorder != "little":
        return None
    fd = None
    if isinstance(src, (bytes, bytearray, memoryview)):
        try:
            reader = wire.BytesReader(src)
        except (TypeError, ValueError):  # not C-contiguous, odd format
            return None
        if not 0 < reader.size < 1 << 31:  # protobuf refuses >= 2 GiB: read_model says so
            return None
        source = "<bytes>"
    elif isinstance(src, (str, os.PathLike)):
        try:
            path = Path(src)
            st = os.stat(path)
        except (OSError, ValueError, TypeError):
            return None
        if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size < 1 << 31:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) |
                         getattr(os, "O_CLOEXEC", 0))
        except (OSError, ValueError):
            return None
        source = path.name
    else:
        return None
    try:
        if fd is not None:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode) or not 0 < fst.st_size < 1 << 31:
                raise wire.Malformed("not a regular file any more")
            base_dir = path.resolve().parent if base_dir is None else base_dir
            reader = wire.FileReader(fd, fst.st_size)
        data, spans = wire.strip_model(reader)
        model = ModelProto()
        model.ParseFromString(data)
        if not model.HasField("graph") or len(model.graph.initializer) != len(spans) or \
                (len(model.graph.node) == 0 and len(model.graph.output) == 0):
            raise wire.Malformed("read_model says why")
    except (wire.Malformed, OSError, DecodeError, RuntimeError, ValueError, RecursionError):
        if fd is not None:
            os.close(fd)
        return None
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    return model, source, base_dir, _Weights(reader, spans), fd


def load_graph(src, base_dir: str | os.PathLike | None = None,
               budget: int = DEFAULT_MEMORY_BUDGET) -> Graph:
    """``to_graph(*read_model(src, base_dir), budget)`` without a protobuf copy of the weights.

    For a path or bytes, large ``raw_data`` of graph initializers is cut out of the message
    before protobuf parses it and read once, straight into each initializer's own array (same
    checks as :func:`tensor_to_array`).  Anything unusual takes the ordinary path.
    """
    fast = _read_reduced(src, base_dir)
    if fast is None:
        model, source, base_dir = read_model(src, base_dir)
        weights, fd = None, None
    else:
        model, source, base_dir, weights, fd = fast
    try:
        g = to_graph(model, source, base_dir, budget, _weights=weights)
        if fd is not None:
            g.origin = _file_origin(src, fd, source, model, weights, g)
        return g
    except RecursionError:
        raise ModelLoadError(f"{source}: model nests too deeply") from None
    finally:
        if fd is not None:
            os.close(fd)


def _file_origin(path, fd: int, source: str, model, weights: _Weights, g: Graph) -> FileOrigin:
    """Record where each initializer read straight from the file lies in it (``origin.py``)."""
    origin = FileOrigin(path, file_stamp(os.fstat(fd)), source)
    for i, t in enumerate(model.graph.initializer):
        span = weights.get(i)
        v = g.initializers.get(t.name)
        if span is None or v is None or v.const is None or v.const.dtype.kind == "V" or \
                v.const.nbytes != span[2]:
            continue
        origin.add(t.name, span[1], span[2], v.const)
    return origin


def _shape_of(tp, what: str, source: str):
    """(shape, dtype) from a ValueInfo's TypeProto; shape None when rank is unknown."""
    if tp.WhichOneof("value") != "tensor_type":
        raise UnsupportedOpError(f"{source}: {what} is not a tensor "
                                 f"({tp.WhichOneof('value')})")
    tt = tp.tensor_type
    dtype = np_dtype(tt.elem_type, what, source) if tt.elem_type else None
    if not tt.HasField("shape"):
        return None, dtype
    dims = []
    for d in tt.shape.dim:
        kind = d.WhichOneof("value")
        if kind == "dim_value":
            if d.dim_value < 0:
                raise ModelLoadError(f"{source}: {what} has negative dim {d.dim_value}")
            dims.append(int(d.dim_value))
        elif kind == "dim_param" and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims), dtype


def _attr(a: AttributeProto, where: str, source: str, base_dir,
          budget: int = DEFAULT_MEMORY_BUDGET):
    t = a.type
    if t == AttributeProto.FLOAT:
        return float(a.f)
    if t == AttributeProto.INT:
        return int(a.i)
    if t == AttributeProto.STRING:
        return a.s.decode("utf-8", errors="replace")
    if t == AttributeProto.TENSOR:
        return tensor_to_array(a.t, source, base_dir, budget)
    if t == AttributeProto.FLOATS:
        return [float(v) for v in a.floats]
    if t == AttributeProto.INTS:
        return [int(v) for v in a.ints]
    if t == AttributeProto.STRINGS:
        return [s.decode("utf-8", errors="replace") for s in a.strings]
    if t == AttributeProto.UNDEFINED:
        raise ModelLoadError(f"{source}: {where}: attribute '{a.name}' has no type")
    return a  # graphs, sparse tensors, type protos: kept raw; no supported op takes them


def _upgrade(model, source: str):
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelLoadError(f"{source}: model imports no default-domain opset")
    newest = schemas.newest_opset()
    if opset > newest:  # ops may have changed in versions this onnx cannot describe
        import onnx
        raise UnsupportedOpError(f"{source}: opset {opset} is newer than {newest}, the newest "
                                 f"the installed onnx {onnx.__version__} knows")
    if opset >= MIN_OPSET:
        return model
    try:
        from onnx import version_converter
        return version_converter.convert_version(model, 13)
    except Exception as e:
        raise UnsupportedOpError(f"{source}: opset {opset} is older than {MIN_OPSET} and could "
                                 f"not be upgraded ({type(e).__name__})") from None


def _rewritten(model) -> bool:
    """Whether _upgrade or _inline_foreign_functions would replace ``model`` by a copy."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return (opset is not None and opset < MIN_OPSET) or \
        any(f.domain != "convrt" for f in model.functions)


def _inline_foreign_functions(model, source: str):
    """Inline model-local functions except convrt's own (fused nodes run natively)."""
    keep = [(f.domain, f.name) for f in model.functions if f.domain == "convrt"]
    if len(keep) == len(model.functions):
        return model
    try:
        from onnx import inliner
        return inliner.inline_selected_functions(model, keep, exclude=True)
    except Exception as e:
        raise ModelLoadError(f"{source}: cannot inline model-local functions ({e})") from None


def to_graph(model: ModelProto, source: str = "<model>", base_dir=None,
             budget: int = DEFAULT_MEMORY_BUDGET, *, _weights=None) -> Graph:
    """Translate a ModelProto into an (unsorted, uninferred) IR Graph.

    ``_weights`` (internal, from :func:`load_graph`): initializer payloads cut out of ``model``.
    """
    if model.ir_version < 3:
        raise ModelLoadError(f"{source}: IR version {model.ir_version} is older than 3")
    if _weights is not None and _rewritten(model):
        _weights.restore(model, source)  # the converters copy the model: give them all of it
        _weights = None
    model = _inline_foreign_functions(_upgrade(model, source), source)
    g = Graph(model.graph.name or "graph")
    g.source, g.ir_version, g.producer_name = source, model.ir_version, model.producer_name
    g.domain, g.doc_string, g.model_version = model.domain, model.doc_string, model.model_version
    g.graph_doc_string = model.graph.doc_string
    g.metadata_props = {p.key: p.value for p in model.metadata_props}
    g.opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version)
                for o in model.opset_import}
    g.functions = {(f.domain, f.name): function_from_proto(f, source) for f in model.functions}
    total = 0
    for i, t in enumerate(model.graph.initializer):
        if not t.name:
            raise ModelLoadError(f"{source}: an initializer has no name")
        if t.name in g.initializers:
            raise ModelLoadError(f"{source}: initializer '{t.name}' is defined twice")
        arr = tensor_to_array(t, source, base_dir, budget,
                              _data=None if _weights is None else _weights.get(i))
        total += arr.nbytes
        if total > budget:
            raise ModelLoadError(f"{source}: initializers exceed the memory budget of {budget} "
                                 "bytes")
        g.add_initializer(t.name, arr)
    if len(model.graph.sparse_initializer):
        raise UnsupportedOpError(f"{source}: sparse initializers are not supported")
    for vi in model.graph.input:
        shape, dtype = _shape_of(vi.type, f"input '{vi.name}'", source)
        if not vi.name:
            raise ModelLoadError(f"{source}: a graph input has no name")
        v = g.value(vi.name)
        if v in g.inputs:
            raise ModelLoadError(f"{source}: input '{vi.name}' is listed twice")
        if v.const is not None and model.ir_version < 4:
            continue  # IR < 4 lists every initializer as an input: a constant, as in onnxruntime
        if v.const is None:
            v.shape, v.dtype = shape, dtype
            if dtype is None:
                raise ModelLoadError(f"{source}: input '{vi.name}' has no element type")
            if shape is None:
                raise ModelLoadError(f"{source}: input '{vi.name}' has no shape")
        g.inputs.append(v)
    for vi in model.graph.value_info:
        if vi.name in g.values and g.values[vi.name].const is not None:
            continue
        shape, dtype = _shape_of(vi.type, f"value '{vi.name}'", source)
        v = g.value(vi.name)
        v.shape, v.dtype = shape, dtype
    produced = set(g.initializers) | {v.name for v in g.inputs}
    for i, np_ in enumerate(model.graph.node):
        name = np_.name or f"{np_.op_type}_{i}"
        ins = [g.value(x) if x else None for x in np_.input]
        outs = []
        for x in np_.output:
            if not x:
                outs.append(Value(g.fresh_name(f"{name}_unused")))
                continue
            if x in produced:
                raise ModelLoadError(f"{source}: value '{x}' is written by more than one "
                                     f"node or input (again by node '{name}')")
            produced.add(x)
            outs.append(g.value(x))
        attrs = {a.name: _attr(a, f"node '{name}'", source, base_dir, budget)
                 for a in np_.attribute}
        total += sum(v.nbytes for v in attrs.values() if isinstance(v, np.ndarray))
        if total > budget:
            raise ModelLoadError(f"{source}: initializers and constants exceed the memory "
                                 f"budget of {budget} bytes (at node '{name}')")
        domain = "" if np_.domain == "ai.onnx" else np_.domain
        g.add_node(Node(np_.op_type, ins, outs, attrs, name, domain))
    for vi in model.graph.output:
        if vi.name not in produced:
            raise ModelLoadError(f"{source}: graph output '{vi.name}' is never computed")
        v = g.value(vi.name)
        shape, dtype = _shape_of(vi.type, f"output '{vi.name}'", source)
        if v.const is None and v.producer is not None:
            v.shape = v.shape if shape is None else shape
            v.dtype = v.dtype if dtype is None else dtype
        g.outputs.append(v)
    if not g.outputs:
        raise ModelLoadError(f"{source}: the graph has no outputs")
    return g


