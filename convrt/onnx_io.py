"""ONNX <-> IR: the only module that reads or writes ONNX protobufs.

Reading is defensive because models come from the internet: every tensor's byte length is
checked against ``prod(dims) x itemsize`` before it is viewed, external data must resolve to a
regular file inside the model's directory (no absolute paths, ``..``, symlinks or hard links
out), offsets and lengths must lie within that file, and nothing from the protobuf reaches a
kernel unvalidated.  Every failure is a :class:`~convrt.errors.ModelLoadError` naming the file
and the tensor, node or field at fault.

:func:`load_graph` (what ``convrt.load`` uses) reads a path or bytes without a protobuf copy of
the weights: :mod:`convrt._protowire` cuts large initializer ``raw_data`` out of the message,
protobuf parses the small remainder, and each payload is read (``pread`` for files, no mmap)
straight into its own aligned, writable array after the same checks.  Any doubt about the
bytes sends it down the ordinary ``read_model`` + ``to_graph`` path.
"""

from __future__ import annotations

import math
import os
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.defs
from google.protobuf.message import DecodeError
from onnx import AttributeProto, TensorProto, numpy_helper

from . import _protowire as wire
from .errors import ModelLoadError, UnsupportedOpError
from .ir import Graph, Node, Value

MIN_OPSET = 7
DEFAULT_MEMORY_BUDGET = 8 << 30  # bytes of initializers/buffers a model may declare

_DTYPES = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16, TensorProto.INT8: np.int8, TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32, TensorProto.INT64: np.int64, TensorProto.UINT8: np.uint8,
    TensorProto.UINT16: np.uint16, TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}
for _name in ("BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
              "FLOAT8E8M0", "FLOAT4E2M1", "UINT4", "INT4", "UINT2", "INT2"):
    # ml_dtypes types (as onnx maps them): values Cast converts to and from
    try:
        _DTYPES[getattr(TensorProto, _name)] = onnx.helper.tensor_dtype_to_np_dtype(
            getattr(TensorProto, _name))
    except Exception:  # an older onnx without that type
        pass
_ONNX_TYPE = {np.dtype(v): k for k, v in _DTYPES.items()}


def np_dtype(elem_type: int, what: str, source: str) -> np.dtype:
    dt = _DTYPES.get(elem_type)
    if dt is None:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() \
            else str(elem_type)
        raise UnsupportedOpError(f"{source}: {what} has unsupported element type {name}")
    return np.dtype(dt)


def onnx_type(dtype) -> int:
    return _ONNX_TYPE[np.dtype(dtype)]


# -- reading ----------------------------------------------------------------------------------
def read_model(src, base_dir: str | os.PathLike | None = None):
    """Parse ``src`` (path, bytes or ModelProto) -> (ModelProto, source label, base dir)."""
    if isinstance(src, onnx.ModelProto):
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
    model = onnx.ModelProto()
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
                t.raw_data = _payload_bytes(data, f"tensor '{t.name}'", source)
        self.spans = []


def _payload_bytes(data, what: str, source: str) -> bytes:
    reader, offset, length = data
    try:
        return bytes(reader.get(offset, offset + length))
    except (OSError, wire.Malformed):
        raise ModelLoadError(f"{source}: {what}: the file changed while it was read") from None


def _payload_array(data, dt: np.dtype, n: int, what: str, source: str) -> np.ndarray:
    """One fresh (aligned, writable, C-contiguous) array filled straight from the source."""
    reader, offset, length = data
    arr = np.empty(n, dt)
    try:
        reader.readinto(memoryview(arr.view(np.uint8)), offset)
    except OSError as e:
        raise ModelLoadError(f"{source}: {what}: cannot read its data ({e.strerror})") from None
    except wire.Malformed:
        raise ModelLoadError(f"{source}: {what}: the file changed while it was read") from None
    return arr


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
        model = onnx.ModelProto()
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
        return to_graph(model, source, base_dir, budget, _weights=weights)
    except RecursionError:
        raise ModelLoadError(f"{source}: model nests too deeply") from None
    finally:
        if fd is not None:
            os.close(fd)


def _external_bytes(t: TensorProto, nbytes: int, base_dir, source: str) -> bytes:
    info = {e.key: e.value for e in t.external_data}
    where = f"{source}: initializer '{t.name}' external data"
    if base_dir is None:
        raise ModelLoadError(f"{where}: the model was loaded from bytes; pass base_dir to "
                             "say where its external files are")
    loc = info.get("location", "")
    if not loc or "\x00" in loc:
        raise ModelLoadError(f"{where}: missing or invalid location")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise ModelLoadError(f"{where}: absolute path {loc!r} is not allowed")
    parts = Path(loc.replace("\\", "/")).parts
    if ".." in parts:
        raise ModelLoadError(f"{where}: path {loc!r} leaves the model directory")
    root = Path(base_dir).resolve()
    path = root.joinpath(*parts)
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ModelLoadError(f"{where}: file {loc!r} not found") from None
    if root != real and root not in real.parents:
        raise ModelLoadError(f"{where}: {loc!r} resolves outside the model directory")
    try:
        st = os.lstat(path)
    except OSError:
        raise ModelLoadError(f"{where}: file {loc!r} not found") from None
    if stat.S_ISLNK(st.st_mode):
        raise ModelLoadError(f"{where}: {loc!r} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{where}: {loc!r} is not a regular file")
    if st.st_nlink > 1:
        raise ModelLoadError(f"{where}: {loc!r} is a hard link")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise ModelLoadError(f"{where}: offset/length are not integers") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise ModelLoadError(f"{where}: range [{offset}, {offset + length}) lies outside "
                             f"the {st.st_size}-byte file {loc!r}")
    if length != nbytes:
        raise ModelLoadError(f"{where}: length {length} != {nbytes} bytes the tensor needs")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) |
                     getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in must not block
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):  # swapped after the checks
            os.close(fd)
            raise ModelLoadError(f"{where}: {loc!r} changed while it was being opened")
        with os.fdopen(fd, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        raise ModelLoadError(f"{where}: cannot read {loc!r} ({e.strerror})") from None
    if len(data) != length:
        raise ModelLoadError(f"{where}: {loc!r} is shorter than declared")
    return data


def tensor_to_array(t: TensorProto, source: str, base_dir=None,
                    budget: int = DEFAULT_MEMORY_BUDGET, *, _data=None) -> np.ndarray:
    """Decode a TensorProto after checking dims, sizes and byte counts.

    ``_data`` (internal, from :func:`load_graph`): ``(reader, offset, length)`` of raw_data that
    was cut out of ``t`` before parsing; it stands in for ``t.raw_data``.
    """
    what = f"tensor '{t.name}'"
    dt = np_dtype(t.data_type, what, source)
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{source}: {what} has negative dims {dims}")
    # numpy cannot shape such an array even when a 0 dim makes it empty
    if math.prod(max(d, 1) for d in dims) * dt.itemsize >= 1 << 62:
        raise ModelLoadError(f"{source}: {what} has dims {dims}, too large for an array")
    n = math.prod(dims)
    nbytes = n * dt.itemsize
    if nbytes > budget:
        raise ModelLoadError(f"{source}: {what} needs {nbytes} bytes, over the memory budget "
                             f"of {budget}")
    if dt.kind == "V" and t.data_location != TensorProto.EXTERNAL:
        if _data is not None:
            t.raw_data = _payload_bytes(_data, what, source)
        try:  # ml_dtypes (float8, int4...): sub-byte packing is onnx's to decode
            arr = numpy_helper.to_array(t)
        except Exception as e:
            raise ModelLoadError(f"{source}: {what} cannot be decoded ({e})") from None
        if arr.dtype != dt or list(arr.shape) != dims:
            raise ModelLoadError(f"{source}: {what} does not decode to {dims} of {dt}")
        return arr
    if t.segment.end or t.segment.begin:
        raise UnsupportedOpError(f"{source}: {what} is segmented; not supported")
    if t.data_location == TensorProto.EXTERNAL:
        raw = _external_bytes(t, nbytes, base_dir, source)
    elif _data is not None:
        if _data[2] != nbytes:
            raise ModelLoadError(f"{source}: {what} has {_data[2]} bytes of data, dims {dims} "
                                 f"of {dt} need {nbytes}")
        return _payload_array(_data, dt, n, what, source).reshape(dims)
    elif t.HasField("raw_data"):
        raw = t.raw_data
    else:
        raw = None
    if raw is not None:
        if len(raw) != nbytes:
            raise ModelLoadError(f"{source}: {what} has {len(raw)} bytes of data, dims {dims} "
                                 f"of {dt} need {nbytes}")
        return np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt).reshape(dims)
    if dt == np.float32:
        field = t.float_data
    elif dt == np.float64:
        field = t.double_data
    elif dt == np.int64:
        field = t.int64_data
    elif dt in (np.uint32, np.uint64):
        field = t.uint64_data
    else:
        field = t.int32_data
    if len(field) != n:
        raise ModelLoadError(f"{source}: {what} has {len(field)} values, dims {dims} need {n}")
    try:
        if dt == np.float16:
            return np.array(field, dtype=np.uint16).view(np.float16).reshape(dims)
        return np.array(field, dtype=np.int64 if dt.kind in "iub" else dt).astype(dt) \
            .reshape(dims)
    except OverflowError:
        raise ModelLoadError(f"{source}: {what} has values out of range for {dt}") from None


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
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:  # ops may have changed in versions this onnx cannot describe
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


def to_graph(model: onnx.ModelProto, source: str = "<model>", base_dir=None,
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
    g.functions = {(f.domain, f.name): f for f in model.functions}
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


# -- writing ----------------------------------------------------------------------------------
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
                                   functions=list(g.functions.values()))
    # IR 4 is the first where an initializer need not be listed as an input
    model.ir_version = max(g.ir_version, 7 if g.functions else 4)
    return model


def save(g: Graph, path: str | os.PathLike) -> None:
    onnx.save_model(from_graph(g), str(path))
