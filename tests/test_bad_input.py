"""Bad models and bad feeds through the public API: the right ConvrtError, one line, culprit named.

Also the CLI: ``python -m convrt.cli run BAD.onnx`` prints one line (no traceback) and fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

import convrt

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "sample_models" / "digits_vgg.onnx"

GOOD = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,3] x) => (float[N,3] y) {
    r = Relu (x)
    y = Add (r, x)
}"""


def _bytes(text: str) -> bytes:
    return onnx.parser.parse_model(text).SerializeToString()


def _raises(cls, src, *culprits, **kw):
    with pytest.raises(cls) as ei:
        convrt.InferenceSession(src, **kw)
    _one_line(ei.value, *culprits)
    return ei.value


def _one_line(err, *culprits):
    msg = str(err)
    assert msg and "\n" not in msg, msg
    for c in culprits:
        assert c in msg, f"{c!r} not named in: {msg}"


# -- models -------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    _raises(convrt.ModelLoadError, str(tmp_path / "nope.onnx"), "nope.onnx", "no such file")
    with pytest.raises(convrt.ModelLoadError):
        convrt.load(tmp_path / "nope.onnx")


def test_directory_and_bad_paths(tmp_path):
    _raises(convrt.ModelLoadError, str(tmp_path), "directory")
    _raises(convrt.ModelLoadError, "bad\0name.onnx", "invalid path")
    _raises(convrt.ModelLoadError, 12345, "int")


@pytest.mark.parametrize("data", [b"", b"this is not onnx at all", b"\x08\x07" * 3,
                                  bytes(range(256)) * 4, b"\xff" * 64])
def test_not_onnx(tmp_path, data):
    p = tmp_path / "junk.onnx"
    p.write_bytes(data)
    _raises(convrt.ModelLoadError, str(p), "junk.onnx")
    _raises(convrt.ModelLoadError, data, "<bytes>")


@pytest.mark.parametrize("frac", [0.01, 0.3, 0.77, 0.999])
def test_truncated_protobuf(tmp_path, frac):
    data = SMALL.read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[:int(len(data) * frac)])
    _raises(convrt.ModelLoadError, str(p), "cut.onnx")


def test_node_reads_undefined_value():
    text = GOOD.replace("y = Add (r, x)", "y = Add (r, ghost)")
    _raises(convrt.ModelLoadError, _bytes(text), "ghost", "undefined")


def test_cycle():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,3] x) => (float[N,3] y) {
        a = Add (x, b)
        b = Relu (a)
        y = Relu (b)
    }"""
    _raises(convrt.ModelLoadError, _bytes(text), "cycle")


def test_all_unsupported_ops_in_one_error():
    text = """
    <ir_version: 8, opset_import: ["" : 13, "acme" : 1]>
    g (float[N,3] x) => (float[N,3] y) {
        a = FooBarOp (x)
        b = acme.Frobnicate (a)
        y = Relu (b)
    }"""
    _raises(convrt.UnsupportedOpError, _bytes(text), "FooBarOp", "acme.Frobnicate")


def test_no_graph_and_no_opset():
    m = onnx.parser.parse_model(GOOD)
    del m.graph.output[:]
    del m.graph.node[:]
    _raises(convrt.ModelLoadError, m.SerializeToString(), "no graph")
    m = onnx.parser.parse_model(GOOD)
    del m.opset_import[:]
    _raises(convrt.ModelLoadError, m.SerializeToString(), "opset")


def test_wrong_attribute_and_weight_shape():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1,4,8,8] x) => (float[1,6,8,8] y) {
        y = Conv <kernel_shape=[3,3], pads=[1,1,1,1], group=2> (x, w)
    }"""
    m = onnx.parser.parse_model(text)
    w = np.zeros((6, 3, 3, 3), np.float32)  # C/group = 2, not 3
    m.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    _raises(convrt.ShapeError, m.SerializeToString(), "Conv", "group")
    m.graph.node[0].attribute[2].i = 0  # group 0
    _raises(convrt.ShapeError, m.SerializeToString(), "group")


# -- feeds --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sess():
    return convrt.InferenceSession(_bytes(GOOD))


def test_good_feed_runs(sess):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0) + x)


@pytest.mark.parametrize("feeds,culprits", [
    ({"x": np.zeros((1, 3), np.float32), "z": np.zeros(1, np.float32)}, ["'z'", "unknown"]),
    ({"x": np.zeros((1, 3), np.float64)}, ["'x'", "dtype", "float64"]),
    ({"x": np.zeros((1, 3), np.int64)}, ["'x'", "dtype"]),
    ({"x": np.zeros((3,), np.float32)}, ["'x'", "rank"]),
    ({"x": np.zeros((1, 1, 3), np.float32)}, ["'x'", "rank"]),
    ({"x": np.zeros((1, 4), np.float32)}, ["'x'", "dim 1"]),
    ({}, ["missing", "'x'"]),
    ({"x": "not an array"}, ["'x'"]),
    ({"x": [[1.0, 2.0, 3.0]]}, ["'x'", "dtype"]),
])
def test_bad_feeds(sess, feeds, culprits):
    with pytest.raises(convrt.InputError) as ei:
        sess.run(None, feeds)
    _one_line(ei.value, *culprits)


def test_bad_run_arguments(sess):
    with pytest.raises(convrt.InputError) as ei:
        sess.run(["nope"], {"x": np.zeros((1, 3), np.float32)})
    _one_line(ei.value, "nope")
    with pytest.raises(convrt.InputError):
        sess.run(None, [np.zeros((1, 3), np.float32)])


def test_symbolic_dim_must_agree():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,3] a, float[N,3] b) => (float[N,3] y) {
        y = Add (a, b)
    }"""
    s = convrt.InferenceSession(_bytes(text))
    with pytest.raises(convrt.InputError) as ei:
        s.run(None, {"a": np.zeros((2, 3), np.float32), "b": np.zeros((3, 3), np.float32)})
    _one_line(ei.value, "'b'", "'N'")


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_one_line_no_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(_bytes(GOOD.replace("Relu", "NoSuchOp")))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    for model, culprit in ((bad, "NoSuchOp"), (junk, "junk.onnx"),
                           (tmp_path / "missing.onnx", "missing.onnx")):
        r = subprocess.run([sys.executable, "-m", "convrt.cli", "run", str(model)],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and culprit in lines[0], r.stderr
