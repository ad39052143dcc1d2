"""ONNX tensors and element types <-> numpy: the checked decoding of every initializer.

Every tensor's byte length is checked against ``prod(dims) x itemsize`` before it is viewed;
external data must resolve to a regular file inside the model's directory (no absolute paths,
``..``, symlinks or hard links out) and offsets and lengths must lie within that file.  The
element-type tables live here too, so that ops (Cast) and the float16 lowering can map ONNX
type numbers to numpy dtypes without importing onnx themselves.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np

from .. import _protowire as wire
from ..errors import ModelLoadError, UnsupportedOpError
from .proto import TensorProto

DEFAULT_MEMORY_BUDGET = 8 << 30  # bytes of initializers/buffers a model may declare

_DTYPES = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16, TensorProto.INT8: np.int8, TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32, TensorProto.INT64: np.int64, TensorProto.UINT8: np.uint8,
    TensorProto.UINT16: np.uint16, TensorProto.UINT32: np.uint32,
    TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}
_ONNX_TYPE = {np.dtype(v): k for k, v in _DTYPES.items()}

# -- element types as Cast's ``to`` names them ------------------------------------------------
ELEM_STRING = TensorProto.STRING
ELEM_BFLOAT16 = TensorProto.BFLOAT16
# the ml_dtypes types (bfloat16, float8, float4, int4, int2) Cast converts to and from
EXOTIC_ELEM_TYPES = frozenset(getattr(TensorProto, n) for n in (
    "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1",
    "UINT4", "INT4", "UINT2", "INT2", "FLOAT8E8M0") if hasattr(TensorProto, n))


_exotic_added = False


def _exotic() -> None:
    """Add the ml_dtypes types (as onnx maps them) to the tables, on first need: that needs
    onnx's helper, whose import costs half a second (``proto.py``)."""
    global _exotic_added
    if _exotic_added:
        return
    _exotic_added = True
    import onnx.helper
    for t in EXOTIC_ELEM_TYPES:
        try:
            dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t))
        except Exception:  # an older onnx without that type
            continue
        _DTYPES[t] = dt
        _ONNX_TYPE[dt] = t


def np_dtype(elem_type: int, what: str, source: str) -> np.dtype:
    dt = _DTYPES.get(elem_type)
    if dt is None and elem_type in EXOTIC_ELEM_TYPES:
        _exotic()
        dt = _DTYPES.get(elem_type)
    if dt is None:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() \
            else str(elem_type)
        raise UnsupportedOpError(f"{source}: {what} has unsupported element type {name}")
    return np.dtype(dt)


def onnx_type(dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype not in _ONNX_TYPE and dtype.kind == "V":
        _exotic()
    return _ONNX_TYPE[dtype]


def elem_type_dtype(elem_type: int) -> np.dtype:
    """The numpy (or ml_dtypes) dtype of ONNX element type ``elem_type``; raises when onnx maps
    it to none."""
    import onnx.helper
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(elem_type)))


def elem_type_name(elem_type: int):
    """ONNX's name of an element type ("FLOAT"), or the number itself when it has none."""
    return TensorProto.DataType.Name(elem_type) \
        if elem_type in TensorProto.DataType.values() else elem_type


def payload_bytes(data, what: str, source: str) -> bytes:
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
            t.raw_data = payload_bytes(_data, what, source)
        try:  # ml_dtypes (float8, int4...): sub-byte packing is onnx's to decode
            from onnx import numpy_helper
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
