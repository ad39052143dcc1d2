"""Regression tests for the hardening bugs the fuzzer and the audit found (issue #7).

Each test names the function that was fixed.  A regression here would mostly show up as a raw
Python exception, a huge allocation or an out-of-bounds kernel access instead of a ConvrtError.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

import convrt

SMALL_BUDGET = convrt.SessionOptions(memory_budget=64 << 20)


def _model(text: str, **inits) -> bytes:
    m = onnx.parser.parse_model(text)
    for k, v in inits.items():
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(v), k))
    return m.SerializeToString()


def _one_line(e):
    assert "\n" not in str(e), str(e)
    return str(e)


def test_clip_with_min_max_inputs_runs():
    """ops/activation.py:_unary: the kernel got (x, min, max, out) but took (x, out)."""
    data = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3] x) => (float[2,3] y) { y = Clip (x, lo, hi) }""",
                  lo=np.float32(-0.5), hi=np.float32(0.5))
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    for level in ("disable", "all"):
        s = convrt.InferenceSession(data, convrt.SessionOptions(graph_optimization_level=level))
        np.testing.assert_array_equal(s.run(None, {"x": x})[0], np.clip(x, -0.5, 0.5))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "MaxPool",
                                "AveragePool", "Conv"])
def test_empty_spatial_dims_refused(op):
    """ops/pool.py:_global, _pool_geometry; ops/conv.py:conv_geometry: an empty spatial axis
    made global_max_pool read x[..., 0] out of bounds (and the reshape fail while folding)."""
    attrs = "<kernel_shape=[1,1]>" if op in ("MaxPool", "AveragePool", "Conv") else ""
    args = "(x, w)" if op == "Conv" else "(x)"
    text = f"""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,2,0,3] x) => (float[2,2,1,1] y) {{ y = {op} {attrs} {args} }}"""
    data = _model(text, w=np.ones((2, 2, 1, 1), np.float32))
    with pytest.raises(convrt.ShapeError, match="empty") as ei:
        convrt.InferenceSession(data)
    _one_line(ei.value)


def test_global_pool_on_zero_channels_folds():
    """ops/pool.py:_global: reshape(n, c, -1) failed for a (5, 0, 3, 3) constant."""
    data = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[1] x) => (float[5,0,1,1] y, float[1] z) {
            y = GlobalAveragePool (k)
            z = Identity (x)
        }""", k=np.zeros((5, 0, 3, 3), np.float32))
    out = convrt.InferenceSession(data).run(None, {"x": np.ones(1, np.float32)})
    assert out[0].shape == (5, 0, 1, 1)


def test_batchnorm_empty_batch_runs():
    """ops/normalization.py:_bn: reshape(n, c, -1) failed at run time for a batch of 0."""
    data = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[N,3,2] x) => (float[N,3,2] y) { y = BatchNormalization (x, s, b, m, v) }""",
                  s=np.ones(3, np.float32), b=np.zeros(3, np.float32),
                  m=np.zeros(3, np.float32), v=np.ones(3, np.float32))
    s = convrt.InferenceSession(data, convrt.SessionOptions(graph_optimization_level="disable"))
    assert s.run(None, {"x": np.zeros((0, 3, 2), np.float32)})[0].shape == (0, 3, 2)


def test_conv_huge_stride_runs():
    """ops/conv.py:bind_conv: stride 2**63-1 overflowed the kernel's int64 row step."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    text = """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,2,5,5] x) => (float[1,4,1,3] y) {
            y = Conv <kernel_shape=[3,3], pads=[1,1,1,1], strides=[STRIDE,2]> (x, w)
        }"""
    big = convrt.InferenceSession(_model(text.replace("STRIDE", str(2**63 - 1)), w=w))
    small = convrt.InferenceSession(_model(text.replace("STRIDE", "7"), w=w))
    np.testing.assert_array_equal(big.run(None, {"x": x})[0], small.run(None, {"x": x})[0])


def test_conv_scratch_counts_in_budget():
    """runtime/plan.py:Plan._plan_memory + ops/conv.py: the padded input copy (GBs for huge
    pads with a huge stride and a 1x1 output) was allocated at run time outside the budget."""
    data = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,1,4,4] x) => (float[1,1,1,1] y) {
            y = Conv <kernel_shape=[1,1], pads=[20000,20000,20000,20000],
                      strides=[50000,50000]> (x, w)
        }""", w=np.ones((1, 1, 1, 1), np.float32))
    s = convrt.InferenceSession(data, SMALL_BUDGET)
    with pytest.raises(convrt.InputError, match="memory budget") as ei:
        s.run(None, {"x": np.ones((1, 1, 4, 4), np.float32)})
    _one_line(ei.value)


def test_activation_size_does_not_wrap_int64():
    """runtime/plan.py (np.prod in int64) and ops/infer.py (fold size check): a 2**32 x 2**32
    output wrapped to 0 bytes, passed the budget and would have been written out of bounds."""
    p = 2**32 - 1
    data = _model(f"""<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,1,1,1] x) => (float[1,1,4294967296,4294967296] y) {{
            y = Conv <kernel_shape=[1,1], pads=[{p},{p},0,0]> (x, w)
        }}""", w=np.ones((1, 1, 1, 1), np.float32))
    s = convrt.InferenceSession(data, SMALL_BUDGET)
    with pytest.raises(convrt.InputError, match="memory budget"):
        s.run(None, {"x": np.ones((1, 1, 1, 1), np.float32)})
    # the same with a constant input: load-time folding must not try it either
    data = _model(f"""<ir_version: 8, opset_import: ["" : 13]>
        g () => (float[1,1,4294967296,4294967296] y) {{
            y = Conv <kernel_shape=[1,1], pads=[{p},{p},0,0]> (k, w)
        }}""", w=np.ones((1, 1, 1, 1), np.float32), k=np.ones((1, 1, 1, 1), np.float32))
    s = convrt.InferenceSession(data, SMALL_BUDGET)
    with pytest.raises(convrt.InputError, match="memory budget"):
        s.run(None, {})


def test_batchnorm_bad_epsilon_refused_before_passes():
    """ops/normalization.py:_bn and compiler.optimize: an INTS epsilon crashed fold_batchnorm
    with a TypeError; a GRAPH-typed one gave a multi-line message."""
    base = """<ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,2,2] x) => (float[1,3,2,2] y) {
            y = BatchNormalization <epsilon=EPS> (x, s, b, m, v)
        }"""
    ones = np.ones(3, np.float32)
    for eps in ("[1, 2]", "\"abc\""):
        data = _model(base.replace("EPS", eps), s=ones, b=ones, m=ones, v=ones)
        with pytest.raises(convrt.ShapeError, match="epsilon") as ei:
            convrt.InferenceSession(data)
        _one_line(ei.value)
    m = onnx.parser.parse_model(base.replace("EPS", "1e-5"))
    for k in "sbmv":
        m.graph.initializer.append(numpy_helper.from_array(ones, k))
    attr = m.graph.node[0].attribute[0]
    attr.CopyFrom(onnx.helper.make_attribute("epsilon", onnx.helper.make_graph([], "g", [], [])))
    with pytest.raises(convrt.ShapeError) as ei:
        convrt.InferenceSession(m.SerializeToString())
    _one_line(ei.value)


def test_messages_are_one_line_whatever_the_names():
    """errors.py:ConvrtError: node and value names from the file may contain newlines."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2] x) => (float[2] y) { y = NoSuchOp (x) }""")
    m.graph.node[0].name = "evil\nname\r\nhere"
    with pytest.raises(convrt.UnsupportedOpError) as ei:
        convrt.InferenceSession(m.SerializeToString())
    assert "evil name  here" in _one_line(ei.value) or "evil" in _one_line(ei.value)


def test_constant_attribute_tensors_count_in_budget():
    """onnx_io.py:to_graph/_attr: Constant value tensors bypassed the memory budget."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2] x) => (float[2] y) { y = Identity (x) }""")
    big = numpy_helper.from_array(np.zeros(1 << 18, np.float32))  # 1 MiB
    for i in range(3):
        m.graph.node.append(onnx.helper.make_node("Constant", [], [f"c{i}"], value=big))
    opts = convrt.SessionOptions(memory_budget=(1 << 21) + 1000)  # 2 MiB: 2 fit, 3 do not
    with pytest.raises(convrt.ModelLoadError, match="budget"):
        convrt.InferenceSession(m.SerializeToString(), opts)
    del m.graph.node[-1]
    convrt.InferenceSession(m.SerializeToString(), opts)


def test_constant_must_be_numeric():
    """ops/shape.py:Constant: a GRAPH-typed value became an object array."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2] x) => (float[2] y, float[1] c) {
            c = Constant <value_float=1.0> ()
            y = Identity (x)
        }""")
    m.graph.node[0].attribute[0].CopyFrom(
        onnx.helper.make_attribute("value", onnx.helper.make_graph([], "g", [], [])))
    with pytest.raises(convrt.ConvrtError) as ei:
        convrt.InferenceSession(m.SerializeToString())
    _one_line(ei.value)


def test_unreadable_external_file(tmp_path, monkeypatch):
    """onnx_io.py:_external_bytes: os.open sat outside the try, so EACCES escaped raw."""
    arr = np.arange(4, dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(arr.tobytes())
    t = numpy_helper.from_array(arr, "w")
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "w.bin"
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[4] x) => (float[4] y) { y = Add (x, w) }""")
    m.graph.initializer.append(t)
    real = os.open

    def deny(path, *a, **k):
        if str(path).endswith("w.bin"):
            raise PermissionError(13, "Permission denied")
        return real(path, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(convrt.ModelLoadError, match="cannot read"):
        convrt.load(m.SerializeToString(), base_dir=tmp_path)


def test_run_time_kernel_failures_are_convrt_errors(monkeypatch):
    """runtime/plan.py:Plan.run: an exception from a kernel (a validation gap) leaves as a
    one-line ShapeError naming the node, never as a raw exception."""
    data = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3] x) => (float[2,3] y) { y = Relu (x) }""")
    s = convrt.InferenceSession(data)
    plan = s.plan_for({"x": convrt.ops.TensorInfo((2, 3), np.dtype(np.float32))})

    def boom(env):
        raise IndexError("index 7 is out of bounds")

    first = next(i for i, lab in enumerate(plan.labels) if lab is not None)
    monkeypatch.setattr(plan, "calls", plan.calls[:first] + [boom] + plan.calls[first + 1:])
    with pytest.raises(convrt.ShapeError, match="Relu.*failed at run time.*IndexError") as ei:
        s.run(None, {"x": np.ones((2, 3), np.float32)})
    _one_line(ei.value)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_model_path_not_a_regular_file(tmp_path, special):
    """onnx_io.py:read_model: /dev/zero read until MemoryError, a FIFO blocked forever."""
    if special == "fifo":
        special = tmp_path / "model.onnx"
        os.mkfifo(special)
    if not os.path.exists(special):
        pytest.skip(f"{special} does not exist here")
    with pytest.raises(convrt.ModelLoadError, match="not a regular file"):
        convrt.InferenceSession(str(special))


def test_attribute_types_checked_against_schema():
    """ops/infer.py:_call (+ registry.attr_type_ok): Gemm transB='SAME_UPPER' (a STRING where
    the schema says INT) was accepted and crashed fuse_gemm_activation with a ValueError."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3] x) => (float[2,4] y) { y = Gemm <transB=1> (x, w) }""")
    m.graph.initializer.append(numpy_helper.from_array(np.ones((4, 3), np.float32), "w"))
    for bad in ("SAME_UPPER", [1, 2], 1.5):
        m.graph.node[0].attribute[0].CopyFrom(onnx.helper.make_attribute("transB", bad))
        with pytest.raises(convrt.ShapeError, match="wrong type") as ei:
            convrt.InferenceSession(m.SerializeToString())
        _one_line(ei.value)


@pytest.mark.parametrize("dims", [[1 << 20, 1 << 20], [1 << 32, 1 << 32], [3, 1 << 62]])
def test_huge_constant_of_shape_refused_before_allocating(dims):
    """runtime/plan.py:_plan_memory, ops/infer.py fold limits: a 12-byte shape input that asks
    for terabytes is refused by the budget, never allocated (and never wrapped in int64)."""
    data = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[1] x) => (float[A,B] y, float[1] z) {
            y = ConstantOfShape <value=float[1] {1.5}> (shp)
            z = Identity (x)
        }""".replace("A", str(dims[0])).replace("B", str(dims[1])),
                  shp=np.array(dims, np.int64))
    with pytest.raises(convrt.InputError, match="memory budget") as ei:
        s = convrt.InferenceSession(data, SMALL_BUDGET)
        s.run(None, {"x": np.ones(1, np.float32)})
    _one_line(ei.value)


def test_trailing_omitted_input_when_folding():
    """ops/infer.py:_evaluate passed a trailing omitted input ("") to the kernel as None when
    folding constants (np.concatenate got None); the plan never did."""
    data = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3] x) => (float[3,2] y) {
            shp = Concat <axis=0> (a, b, "")
            y = Reshape (x, shp)
        }""", a=np.array([3], np.int64), b=np.array([2], np.int64))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(convrt.InferenceSession(data).run(None, {"x": x})[0],
                                  x.reshape(3, 2))
