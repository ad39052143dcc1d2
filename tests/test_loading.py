"""Loading without a protobuf copy of the weights (onnx_io.load_graph + convrt/_protowire.py).

Large raw_data of graph initializers is cut out of the message before protobuf parses it and
read straight into each initializer's array; everything unusual falls back to the full parse.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convrt
from convrt import _protowire as wire
from convrt.onnx_io import reader as onnx_io  # read_model, load_graph, to_graph

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
RNG = np.random.default_rng(0)
BIG, SMALL = 3000, 5  # elements: over / under wire.STRIP_MIN bytes for every dtype below


def _values(dtype, n):
    if dtype == np.bool_:
        return RNG.integers(0, 2, n).astype(bool)
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(-1000, 1000, n).astype(dtype)
    return RNG.standard_normal(n).astype(dtype)


def _typed(name, arr):
    """A TensorProto with the values in the typed field (float_data, int64_data...)."""
    arr = np.asarray(arr)
    if arr.dtype == np.float16:
        t = helper.make_tensor(name, TensorProto.FLOAT16, arr.shape,
                               arr.view(np.uint16).ravel().tolist())
    else:
        t = helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape,
                               arr.ravel().tolist())
    assert not t.HasField("raw_data")
    return t


def _model(inits, opset=13, functions=()):
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8,
                             functions=list(functions))


@pytest.fixture
def no_full_parse(monkeypatch):
    """Fail if load_graph falls back to read_model (the full parse)."""
    def boom(*a, **k):
        raise AssertionError("fell back to the full parse")
    monkeypatch.setattr(onnx_io, "read_model", boom)


def _all_inits():
    inits, want = [], {}
    for dtype in (np.float32, np.float64, np.int64, np.float16, np.bool_, np.int8, np.uint8,
                  np.int32):
        for size in (BIG, SMALL):
            a = _values(dtype, size).reshape(-1, 1) if size == BIG else _values(dtype, size)
            for kind in ("raw", "typed"):
                name = f"{np.dtype(dtype).name}_{size}_{kind}_" + "n" * len(inits)  # shifts
                t = numpy_helper.from_array(a, name) if kind == "raw" else _typed(name, a)
                inits.append(t)
                want[name] = numpy_helper.to_array(t)
    return inits, want


def test_field_numbers_match_onnx():
    assert onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number == wire.MODEL_GRAPH
    assert onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number == \
        wire.GRAPH_INITIALIZER
    assert onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number == \
        wire.TENSOR_RAW_DATA


@pytest.mark.parametrize("as_path", [True, False])
def test_arrays_equal_numpy_helper(tmp_path, no_full_parse, as_path):
    inits, want = _all_inits()
    data = _model(inits).SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    g = onnx_io.load_graph(str(path) if as_path else data)
    assert set(want) <= set(g.initializers)
    for name, w in want.items():
        got = g.initializers[name].const
        assert got.dtype == w.dtype and got.shape == w.shape, name
        np.testing.assert_array_equal(got, w, err_msg=name)
        assert got.flags.writeable and got.flags.c_contiguous and got.flags.aligned, name


def test_raw_offsets_are_mostly_unaligned_but_arrays_aligned(tmp_path):
    """Exporters do not align raw_data; the arrays must be aligned anyway (numpy's BLAS and
    the kernels assume it)."""
    inits = [numpy_helper.from_array(_values(np.float64, 500), "w" * k) for k in range(1, 9)]
    data = _model(inits).SerializeToString()
    _, spans = wire.strip_model(wire.BytesReader(data))
    assert len({off % 8 for off, _ in spans}) > 1
    for path_or_bytes in (data, _write(tmp_path, data)):
        g = onnx_io.load_graph(path_or_bytes)
        for t in inits:
            a = g.initializers[t.name].const
            assert a.flags.aligned and a.ctypes.data % 8 == 0
            np.testing.assert_array_equal(a, numpy_helper.to_array(t))


def _write(tmp_path, data, name="m.onnx"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_reduced_message_is_small_and_equivalent():
    inits, _ = _all_inits()
    model = _model(inits)
    data = model.SerializeToString()
    reduced, spans = wire.strip_model(wire.BytesReader(data))
    assert len(reduced) <= len(data) - sum(s[1] for s in spans if s)
    assert sum(1 for s in spans if s) == 8  # the raw BIG ones
    m = onnx.ModelProto()
    m.ParseFromString(reduced)
    for t, t0, span in zip(m.graph.initializer, model.graph.initializer, spans):
        if span is None:
            assert t == t0
        else:
            assert not t.HasField("raw_data") and len(t0.raw_data) >= wire.STRIP_MIN
            assert data[span[0]:span[0] + span[1]] == t0.raw_data
            t.raw_data = t0.raw_data
            assert t == t0
    assert m.graph.node == model.graph.node and m.opset_import == model.opset_import


def test_ml_dtype_and_rewritten_models_restore_payloads(tmp_path):
    """bfloat16 goes through numpy_helper; an opset-6 model and one with a model-local function
    are rewritten by onnx's converters, which get the payloads back."""
    bf = numpy_helper.from_array(_values(np.float32, BIG).astype(ml_dtypes.bfloat16), "bf")
    w = numpy_helper.from_array(_values(np.float32, BIG), "w")
    fn = helper.make_function("custom", "Twice", ["a"], ["b"],
                              [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 13)])
    models = [_model([bf, w]), _model([w], opset=6), _model([w], functions=[fn])]
    models[2].opset_import.append(helper.make_opsetid("custom", 1))
    for m in models:
        g = convrt.load(_write(tmp_path, m.SerializeToString()))
        np.testing.assert_array_equal(g.initializers["w"].const, numpy_helper.to_array(w))
    got = convrt.load(models[0].SerializeToString()).initializers["bf"].const
    np.testing.assert_array_equal(got, numpy_helper.to_array(bf))


def _raw_len_varint(data: bytes, name: str):
    """(offset, width) of the raw_data length varint of initializer ``name``."""
    r = wire.BytesReader(data)
    m = onnx.ModelProto()
    m.ParseFromString(data)
    names = [t.name for t in m.graph.initializer]
    _, spans = wire.strip_model(r)
    off, length = spans[names.index(name)]
    width = len(wire.encode_varint(length))
    assert wire._varint(r, off - width, off) == (length, off)
    return off - width, width


def _big_model():
    inits = [numpy_helper.from_array(_values(np.float32, 4096).reshape(64, 64), "w"),
             numpy_helper.from_array(_values(np.float32, 64), "b")]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]),
                           helper.make_node("Add", ["m", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _refused(src, exc=convrt.ConvrtError):
    with pytest.raises(exc) as ei:
        convrt.InferenceSession(src)
    assert "\n" not in str(ei.value)
    return str(ei.value)


@pytest.mark.parametrize("as_path", [True, False])
def test_truncated_model_refused(tmp_path, as_path):
    data = _big_model().SerializeToString()
    w_at, _ = _raw_len_varint(data, "w")
    cuts = sorted({1, 2, 5, 9, 17, w_at - 3, w_at, w_at + 2, w_at + 1000, w_at + 16386,
                   len(data) // 2, len(data) - 30, len(data) - 1})
    for cut in cuts:
        src = _write(tmp_path, data[:cut]) if as_path else data[:cut]
        _refused(src)
    for cut in (w_at + 2, w_at + 1000, w_at + 16386):  # inside the weights: no model left
        _refused(_write(tmp_path, data[:cut]) if as_path else data[:cut], convrt.ModelLoadError)


@pytest.mark.parametrize("as_path", [True, False])
def test_raw_length_past_eof_or_message_refused(tmp_path, as_path):
    data = _big_model().SerializeToString()
    at, width = _raw_len_varint(data, "w")
    length = wire._varint(wire.BytesReader(data), at, at + width)[0]
    for new in (length + 4, length + 1000, (1 << (7 * width)) - 1, length - 4):
        enc = wire.encode_varint(new)
        if len(enc) != width:
            continue
        bad = data[:at] + enc + data[at + width:]
        _refused(_write(tmp_path, bad) if as_path else bad, convrt.ModelLoadError)
    # a 10-byte varint that never ends, and one claiming 2**63 bytes
    for enc in (b"\xff" * 10, wire.encode_varint(1 << 63)):
        bad = data[:at] + enc + data[at + width:]
        _refused(_write(tmp_path, bad) if as_path else bad, convrt.ModelLoadError)


def test_length_mismatch_and_budget_refused(tmp_path):
    t = numpy_helper.from_array(_values(np.float32, 1000), "w")
    t.dims[:] = [999]
    msg = _refused(_write(tmp_path, _model([t]).SerializeToString()), convrt.ModelLoadError)
    assert "4000 bytes of data" in msg and "'w'" in msg
    big = numpy_helper.from_array(_values(np.float32, 1 << 16), "w")
    with pytest.raises(convrt.ModelLoadError, match="memory budget"):
        convrt.load(_write(tmp_path, _model([big]).SerializeToString()), memory_budget=1 << 16)


def test_empty_tensor_with_huge_dims_refused(tmp_path):
    """A zero dim makes the byte count 0 and the data empty, but numpy cannot shape an array
    whose other dims overflow (a fuzzer finding): a one-line load error, not a ValueError."""
    t = numpy_helper.from_array(np.zeros(0, np.float32), "w")
    t.dims[:] = [0, 1 << 40, 1 << 40]
    msg = _refused(_write(tmp_path, _model([t]).SerializeToString()), convrt.ModelLoadError)
    assert "too large" in msg and "'w'" in msg


def test_merged_fields_fall_back_to_protobuf(tmp_path):
    """A graph given twice (protobuf merges) and a raw_data given twice (last wins)."""
    w = numpy_helper.from_array(_values(np.float32, 2000), "w")
    extra = onnx.ModelProto(graph=onnx.GraphProto(initializer=[
        numpy_helper.from_array(_values(np.float32, 2000), "v")]))
    data = _model([w]).SerializeToString() + extra.SerializeToString()
    g = convrt.load(_write(tmp_path, data))
    np.testing.assert_array_equal(g.initializers["v"].const,
                                  numpy_helper.to_array(extra.graph.initializer[0]))
    t = numpy_helper.from_array(_values(np.float32, 2000), "w")
    second = _values(np.float32, 2000)
    t_bytes = t.SerializeToString() + bytes([(9 << 3) | 2]) + \
        wire.encode_varint(second.nbytes) + second.tobytes()
    t2 = TensorProto()
    t2.ParseFromString(t_bytes)
    g = convrt.load(_write(tmp_path, _model([t2]).SerializeToString()))
    np.testing.assert_array_equal(g.initializers["w"].const, second)


def test_file_shrinking_while_loading_refused(tmp_path):
    path = _write(tmp_path, _big_model().SerializeToString())
    model, source, base_dir, weights, fd = onnx_io._read_reduced(path, None)
    try:
        os.truncate(path, 100)
        with pytest.raises(convrt.ModelLoadError, match="changed while it was read"):
            onnx_io.to_graph(model, source, base_dir, _weights=weights)
    finally:
        os.close(fd)


def test_no_file_held_and_weights_independent_of_file(tmp_path):
    path = _write(tmp_path, _big_model().SerializeToString())
    fds = len(os.listdir("/proc/self/fd"))
    g = convrt.load(path)
    assert len(os.listdir("/proc/self/fd")) == fds
    before = g.initializers["w"].const.copy()
    Path(path).write_bytes(b"\0" * os.path.getsize(path))  # rewritten in place (same inode)
    os.truncate(path, 10)
    np.testing.assert_array_equal(g.initializers["w"].const, before)
    assert g.initializers["w"].const.base is None or \
        g.initializers["w"].const.base.flags.owndata


def test_small_vgg_matches_onnxruntime(no_full_parse):
    ort = pytest.importorskip("onnxruntime")
    path = SAMPLES / "small_vgg.onnx"
    if not path.exists():
        pytest.skip("sample_models/small_vgg.onnx missing")
    want_sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = want_sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 2 for d in inp.shape]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = want_sess.run(None, {inp.name: x})
    for src in (str(path), path.read_bytes()):
        got = convrt.InferenceSession(src).run(None, {inp.name: x})
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def test_same_graph_as_full_parse():
    path = SAMPLES / "small_vgg.onnx"
    if not path.exists():
        pytest.skip("sample_models/small_vgg.onnx missing")
    fast = onnx_io.load_graph(str(path))
    slow = onnx_io.to_graph(*onnx_io.read_model(str(path)))
    assert list(fast.initializers) == list(slow.initializers)
    for name, v in slow.initializers.items():
        np.testing.assert_array_equal(fast.initializers[name].const, v.const)
        assert fast.initializers[name].const.dtype == v.const.dtype
    assert [n.op_type for n in fast.nodes] == [n.op_type for n in slow.nodes]


def _outcome(load):
    try:
        g = load()
    except convrt.ConvrtError as e:
        return type(e).__name__, str(e)
    return [(k, v.const.dtype, v.const.shape, v.const.tobytes())
            for k, v in g.initializers.items()], [n.op_type for n in g.nodes]


def test_mutated_models_load_like_the_full_parse():
    """Differential fuzz: byte-mutated and truncated models give the same arrays, or the same
    error, through load_graph as through read_model + to_graph."""
    import random

    rng = random.Random(1234)
    bases = [_big_model().SerializeToString(), _model(_all_inits()[0]).SerializeToString()]
    for _ in range(150):
        d = bytearray(rng.choice(bases))
        if rng.random() < 0.3:
            d = d[:rng.randrange(len(d))]
        else:
            spans = [s for s in wire.strip_model(wire.BytesReader(bytes(d)))[1] if s]
            for _ in range(rng.randint(1, 3)):  # mostly outside the weights: the framing
                i = rng.randrange(len(d))
                while any(o <= i < o + n for o, n in spans) and rng.random() < 0.95:
                    i = rng.randrange(len(d))
                d[i] = rng.choice([rng.randrange(256), 0, 0xFF, 0x80])
        d = bytes(d)
        fast = _outcome(lambda: onnx_io.load_graph(d))
        slow = _outcome(lambda: onnx_io.to_graph(*onnx_io.read_model(d)))
        assert fast == slow
