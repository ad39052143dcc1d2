"""Reading and running a model without importing onnx (``convrt/onnx_io/proto.py`` and the
schema answers kept on disk by ``convrt/onnx_io/schemas.py``): the same outputs as the onnx
path, onnx's own classes once onnx is imported after all, and answers equal to ``onnx.defs``
whatever state the answers' file is in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.defs
import pytest

import convrt
from convrt.onnx_io import schemas
from convrt.ops import registry

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_models" / "small_vgg.onnx"

_RUN = """
import sys
import numpy as np
import convrt
s = convrt.InferenceSession(sys.argv[1])
x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
np.save(sys.argv[2], s.run(None, {s.get_inputs()[0].name: x})[0])
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "ml_dtypes"))))
"""


def _python(code: str, *args) -> str:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_a_model_loads_and_runs_without_importing_onnx(tmp_path):
    """The second process finds every schema answer on disk (the first may have asked onnx and
    written them at exit): it imports neither onnx nor ml_dtypes, and its output is the one this
    process computes on the onnx path."""
    _python(_RUN, SAMPLE, tmp_path / "first.npy")
    assert _python(_RUN, SAMPLE, tmp_path / "second.npy") == ""
    s = convrt.InferenceSession(onnx.load(str(SAMPLE)))  # a ModelProto: onnx's own parse
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    ref = s.run(None, {s.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(np.load(tmp_path / "second.npy"), ref)


def test_onnx_imported_afterwards_shares_the_classes():
    """protobuf accepts the descriptor file registered a second time by onnx's own module and
    hands out the same classes, so models of either origin are one type."""
    code = """
import sys
from convrt.onnx_io import proto, load_graph, to_graph
assert "onnx" not in sys.modules
g1 = load_graph(sys.argv[1])
import onnx
assert onnx.ModelProto is proto.ModelProto and onnx.TensorProto is proto.TensorProto
assert onnx.FunctionProto is proto.FunctionProto
m = onnx.load(sys.argv[1])
onnx.checker.check_model(m)
g2 = to_graph(m)
assert [n.op_type for n in g1.nodes] == [n.op_type for n in g2.nodes]
print("ok")
"""
    assert _python(code, SAMPLE) == "ok"


def _truth(op: str, opset: int):
    try:
        s = onnx.defs.get_schema(op, opset, "")
    except Exception:
        return None
    return [s.since_version, {n: int(a.type) for n, a in s.attributes.items()}]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The answers kept in a file of this test's own, starting from nothing in memory."""
    path = tmp_path / "answers.json"
    monkeypatch.setattr(schemas, "_path", lambda: str(path))
    monkeypatch.setattr(schemas, "_store", None)
    monkeypatch.setattr(schemas, "_dirty", False)
    monkeypatch.setattr(schemas, "_save_registered", True)  # no atexit write from the tests
    return path


_OPS = sorted({op for (domain, op) in registry._REGISTRY if domain == ""} | {"NoSuchOp"})
_OPSETS = (7, 11, 13, 17, onnx.defs.onnx_opset_version())


def test_schema_answers_equal_onnx_defs_and_survive_the_file(store):
    want = {(op, v): _truth(op, v) for op in _OPS for v in _OPSETS}
    for (op, v), truth in want.items():
        assert schemas._schema(op, "", v) == truth
        assert schemas.since_version(op, "", v) == (None if truth is None else truth[0])
    assert schemas.newest_opset() == onnx.defs.onnx_opset_version()
    schemas._save()
    schemas._store = None  # a new process: everything from the file
    for (op, v), truth in want.items():
        assert schemas._schema(op, "", v) == truth
    assert schemas.newest_opset() == onnx.defs.onnx_opset_version()
    assert not schemas._dirty  # nothing was asked of onnx this time


@pytest.mark.parametrize("content", [b"\x00garbage", b"[1, 2]", b'{"schemas": 5}',
                                     json.dumps({"newest": "x", "schemas": {
                                         "|Conv|13": [11.5, {}], "|Relu|13": [1, {"a": "b"}],
                                         "|Gemm|13": "no"}}).encode()])
def test_a_damaged_answers_file_is_only_a_miss(store, content):
    store.write_bytes(content)
    for op in ("Conv", "Relu", "Gemm"):
        assert schemas._schema(op, "", 13) == _truth(op, 13)
    assert schemas.newest_opset() == onnx.defs.onnx_opset_version()


def test_an_unwritable_answers_file_changes_nothing(tmp_path, monkeypatch, store):
    monkeypatch.setattr(schemas, "_path", lambda: str(tmp_path / "missing-dir" / "a.json"))
    assert schemas._schema("Conv", "", 13) == _truth("Conv", 13)
    schemas._save()  # cannot write there: silently kept in memory only
    assert schemas._dirty and not (tmp_path / "missing-dir").exists()


def test_answers_written_by_two_processes_add_up(store):
    """Each process writes what it learned into what the file holds by then, so a process that
    read the file before another one wrote it does not take the other's answers away."""
    schemas._schema("Conv", "", 13)  # process A asks...
    b_started_with = schemas._read(str(store))  # ...while process B has read the empty file
    schemas._save()
    schemas._store, schemas._dirty = b_started_with, False  # now B
    schemas._schema("Relu", "", 13)
    schemas._save()
    saved = json.loads(store.read_text())["schemas"]
    assert saved["|Conv|13"] == _truth("Conv", 13) and saved["|Relu|13"] == _truth("Relu", 13)
