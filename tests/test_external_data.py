"""External data: loads only from regular files inside the model's directory.

One test per attack class (CVE-2022-25882 / CVE-2024-27318 style traversal, absolute paths,
symlinks and hard links out, ranges outside the file, length mismatches, bytes models without a
base directory).  Each must be refused with ModelLoadError *before* the target is opened: every
``open``/``os.open`` during the load is recorded and only the model file itself may appear.
"""

from __future__ import annotations

import builtins
import io
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convrt

W = np.arange(16, dtype=np.float32).reshape(4, 4) / 7


def _model(location: str | None = None, offset: int | None = None,
           length: int | None = None) -> onnx.ModelProto:
    """y = x @ W (+ b), with W stored externally at ``location`` when given."""
    w = numpy_helper.from_array(W, "W")
    if location is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", offset), ("length", length)):
            if v is not None:
                e = w.external_data.add()
                e.key, e.value = k, str(v)
    b = numpy_helper.from_array(np.linspace(-1, 1, 4, dtype=np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _cpu_accounting(path: str) -> bool:
    """The kernel's CPU-quota files, which a session reads to size its thread pool
    (convrt/runtime/threads.py): not data, and not on the model's behalf."""
    return (path.startswith("/proc/") and path.endswith("/cgroup")) or \
        (path.startswith("/sys/fs/cgroup/") and path.endswith("/cpu.max"))


@pytest.fixture
def opened(monkeypatch):
    """Every path opened through open/io.open/os.open during the test (resolved), but the
    CPU-quota files."""
    seen: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def record(path):
        path = os.path.realpath(os.fsdecode(path))
        if not _cpu_accounting(path):
            seen.append(path)

    def rec_open(file, *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)):
            record(file)
        return real_open(file, *a, **k)

    def rec_os_open(path, *a, **k):
        record(path)
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", rec_open)
    monkeypatch.setattr(io, "open", rec_open)
    monkeypatch.setattr(os, "open", rec_os_open)
    return seen


@pytest.fixture
def layout(tmp_path):
    """tmp/model/ (the model's directory) and tmp/secret.bin (outside it, W-sized)."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())
    return model_dir, secret


def _refused(model_dir, model, opened, match):
    path = model_dir / "m.onnx"
    path.write_bytes(model.SerializeToString())
    del opened[:]
    with pytest.raises(convrt.ModelLoadError, match=match) as ei:
        convrt.InferenceSession(str(path))
    assert "\n" not in str(ei.value) and "'W'" in str(ei.value)
    assert set(opened) <= {os.path.realpath(path)}, f"opened {opened}"


@pytest.mark.parametrize("loc", ["../secret.bin", "sub/../../secret.bin", "..\\secret.bin",
                                 "./../secret.bin"])
def test_parent_traversal_refused(layout, opened, loc):
    model_dir, _ = layout
    (model_dir / "sub").mkdir()
    _refused(model_dir, _model(loc), opened, "leaves the model directory")


def test_absolute_path_refused(layout, opened):
    model_dir, secret = layout
    _refused(model_dir, _model(str(secret)), opened, "absolute path")


def test_symlink_out_refused(layout, opened):
    model_dir, secret = layout
    os.symlink(secret, model_dir / "link.bin")
    _refused(model_dir, _model("link.bin"), opened, "outside the model directory")


def test_symlinked_directory_out_refused(layout, opened):
    model_dir, secret = layout
    os.symlink(secret.parent, model_dir / "dir")
    _refused(model_dir, _model("dir/secret.bin"), opened, "outside the model directory")


def test_symlink_inside_refused(layout, opened):
    model_dir, _ = layout
    (model_dir / "w.bin").write_bytes(W.tobytes())
    os.symlink(model_dir / "w.bin", model_dir / "alias.bin")
    _refused(model_dir, _model("alias.bin"), opened, "symbolic link")


def test_hard_link_out_refused(layout, opened):
    model_dir, secret = layout
    os.link(secret, model_dir / "hard.bin")
    _refused(model_dir, _model("hard.bin"), opened, "hard link")


@pytest.mark.parametrize("offset,length", [(8, 64), (72, 0), (-8, 64), (1 << 62, 64),
                                           (0, 1 << 62)])
def test_range_outside_file_refused(layout, opened, offset, length):
    model_dir, _ = layout
    (model_dir / "w.bin").write_bytes(W.tobytes())  # 64 bytes
    _refused(model_dir, _model("w.bin", offset, length), opened, "outside")


@pytest.mark.parametrize("offset,length", [(0, 32), (16, 48)])
def test_length_mismatch_refused(layout, opened, offset, length):
    model_dir, _ = layout
    (model_dir / "w.bin").write_bytes(W.tobytes())
    _refused(model_dir, _model("w.bin", offset, length), opened, "length")


def test_not_a_regular_file_or_missing(layout, opened):
    model_dir, _ = layout
    (model_dir / "d").mkdir()
    _refused(model_dir, _model("d"), opened, "not a regular file")
    _refused(model_dir, _model("missing.bin"), opened, "not found")
    _refused(model_dir, _model(""), opened, "missing or invalid location")


def test_bytes_model_needs_base_dir(layout, opened):
    model_dir, _ = layout
    (model_dir / "w.bin").write_bytes(W.tobytes())
    data = _model("w.bin").SerializeToString()
    for src in (data, _model("w.bin")):
        del opened[:]
        with pytest.raises(convrt.ModelLoadError, match="base_dir"):
            convrt.InferenceSession(src)
        with pytest.raises(convrt.ModelLoadError, match="base_dir"):
            convrt.load(src)
        assert opened == []
    # the explicit base directory is subject to the same containment rules
    with pytest.raises(convrt.ModelLoadError, match="leaves the model directory"):
        convrt.load(_model("../secret.bin").SerializeToString(), base_dir=model_dir)
    x = np.ones((2, 4), np.float32)
    sess = convrt.InferenceSession(data, base_dir=str(model_dir))
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ W + np.linspace(-1, 1, 4),
                               rtol=1e-5)


def test_offset_inside_file_loads(layout):
    model_dir, _ = layout
    (model_dir / "w.bin").write_bytes(b"\0" * 8 + W.tobytes() + b"\0" * 8)
    path = model_dir / "m.onnx"
    path.write_bytes(_model("w.bin", 8, 64).SerializeToString())
    x = np.eye(2, 4, dtype=np.float32)
    np.testing.assert_allclose(convrt.InferenceSession(path).run(None, {"x": x})[0],
                               x @ W + np.linspace(-1, 1, 4), rtol=1e-5)


def test_save_as_external_data_roundtrip(tmp_path):
    """A model written by onnx.save_model(save_as_external_data=True) loads and runs."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    fc = rng.standard_normal((10, 8 * 4 * 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)],
        "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / "net.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="net.weights", size_threshold=0)
    assert (tmp_path / "net.weights").stat().st_size >= w.nbytes + fc.nbytes
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = convrt.InferenceSession(str(path)).run(None, {"x": x})[0]
    ort = pytest.importorskip("onnxruntime")
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
