"""What the ONNX specification says about an op: the questions ops and the registry ask.

The registry picks an op function by the schema version in force at the model's opset, and
``ops/infer.py`` checks a node's attribute names and types against that schema before the op
runs.  The answers come from ``onnx.defs``; asking through this module keeps the onnx import at
the ONNX boundary (convrt/onnx_io), so ops stay plain Python over the IR.

They are also kept on disk, one JSON file per installed onnx (named by its schema library's
path, size and time) in the kernels' cache directory: importing onnx costs about half a second
(``proto.py`` says why), and a process whose models ask only questions answered before never
imports it.  A missing, foreign or damaged file is only a cache miss: onnx answers, and the
file is written again (atomically) when the process exits.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np

from .proto import AttributeProto

_store: dict | None = None  # {"newest": int, "schemas": {"domain|op|opset": entry}}
_dirty = False  # answers onnx gave that the file lacks
_save_registered = False


def _stamp() -> str | None:
    """Names the installed onnx's schemas: its compiled library's path, size and mtime."""
    try:
        root = list(importlib.util.find_spec("onnx").submodule_search_locations)[0]
        lib = min(n for n in os.listdir(root) if n.startswith("onnx_cpp2py_export"))
        st = os.stat(os.path.join(root, lib))
    except Exception:
        return None
    return f"{os.path.join(root, lib)}|{st.st_size}|{st.st_mtime_ns}"


def _path() -> str | None:
    """The answers' file, in the kernels' cache directory (``numba.config.CACHE_DIR``, which
    ``kernels/_jit.py`` sets when the kernels load); None before that."""
    numba = sys.modules.get("numba")
    cache = getattr(getattr(numba, "config", None), "CACHE_DIR", None)
    stamp = _stamp() if cache else None
    if stamp is None:
        return None
    name = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    return os.path.join(cache, f"onnx-schemas-{name}.json")


def _valid(entry) -> bool:
    return entry is None or (
        isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int and
        isinstance(entry[1], dict) and all(isinstance(k, str) and type(v) is int
                                           for k, v in entry[1].items()))


def _read(path) -> dict:
    """The answers in ``path``: only well-formed entries; nothing when it is unreadable."""
    store = {"newest": None, "schemas": {}}
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if type(saved.get("newest")) is int:
            store["newest"] = saved["newest"]
        store["schemas"] = {k: v for k, v in saved["schemas"].items()
                            if isinstance(k, str) and _valid(v)}
    except Exception:  # none yet, unreadable or damaged: onnx answers
        pass
    return store


def _answers() -> dict:
    global _store
    if _store is None:
        _store = _read(_path())
    return _store


def _learned() -> None:
    """Note an answer onnx gave (written at exit)."""
    global _dirty, _save_registered
    _dirty = True
    if not _save_registered:
        _save_registered = True
        atexit.register(_save)


def _save() -> None:
    """Write the answers if onnx gave new ones (temporary file + rename: a reader never sees
    half a file)."""
    global _dirty
    if not _dirty:
        return
    try:
        path = _path()
        # what other processes wrote meanwhile stays: the file only ever gains answers
        merged = _read(path)
        merged["schemas"].update(_store["schemas"])
        merged["newest"] = _store["newest"] if _store["newest"] is not None else \
            merged["newest"]
        fd, tmp = tempfile.mkstemp(prefix=".onnx-schemas-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(merged, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        _dirty = False
    except Exception:  # a read-only cache: the next process asks onnx again
        pass


def newest_opset() -> int:
    """The newest default-domain opset the installed onnx describes."""
    store = _answers()
    if store["newest"] is None:
        import onnx.defs
        store["newest"] = int(onnx.defs.onnx_opset_version())
        _learned()
    return store["newest"]


def _schema(op_type: str, domain: str, opset: int):
    """[since_version, {attribute: AttributeProto type}] in force, or None (no schema)."""
    key = f"{domain}|{op_type}|{opset}"
    schemas = _answers()["schemas"]
    if key not in schemas:
        import onnx.defs
        try:
            s = onnx.defs.get_schema(op_type, opset, domain or "")
            schemas[key] = [int(s.since_version),
                            {name: int(a.type) for name, a in s.attributes.items()}]
        except Exception:  # onnx raises SchemaError for unknown ops/opsets
            schemas[key] = None
        _learned()
    return schemas[key]


def since_version(op_type: str, domain: str, opset: int) -> int | None:
    """The schema version in force for ``op_type`` at ``opset`` (None when onnx knows none)."""
    entry = _schema(op_type, domain, opset)
    return None if entry is None else entry[0]


@functools.lru_cache(maxsize=None)
def attribute_names(op_type: str, domain: str, opset: int) -> frozenset | None:
    """Attribute names the schema in force at ``opset`` allows (None: no schema)."""
    entry = _schema(op_type, domain, opset)
    return None if entry is None else frozenset(entry[1])


@functools.lru_cache(maxsize=4096)
def attribute_types(op_type: str, domain: str, opset: int) -> dict | None:
    """Attribute name -> ``AttributeProto.AttributeType`` in the schema in force (None: none)."""
    entry = _schema(op_type, domain, opset)
    return None if entry is None else dict(entry[1])


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
