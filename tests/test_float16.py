"""Float16 models (convrt/float16.py): float16 weights, feeds and outputs, float32 compute.

The oracle is onnxruntime, which runs float16 models natively, and for the committed PyTorch
export ``sample_models/vgg_half.onnx`` PyTorch's own half output (``vgg_half.npz``).  Whole
models must agree within 1e-2 of max |y|, and the outputs must be float16.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convrt
from convrt import cli, compiler, float16, onnx_io
from convrt.ir.verify import verify
from oracle import run_ort

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
LEVELS = ("disable", "basic", "extended", "all")
RNG = np.random.default_rng(16)


def _h(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float16)


def _model(text: str, inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    m = onnx.parser.parse_model(text)
    m.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in (inits or {}).items())
    onnx.checker.check_model(m, full_check=True)
    return m


def _untyped(model: onnx.ModelProto, *names: str) -> onnx.ModelProto:
    """Clear the element type of graph outputs ``names`` (as oracle.node_model leaves them)."""
    for o in model.graph.output:
        if o.name in names:
            o.type.CopyFrom(helper.make_tensor_value_info(o.name, 0, None).type)
    return model


def _half_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make the float tensor attributes float16 (onnx.parser reads no float16 literals)."""
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t)
                                                     .astype(np.float16), a.t.name))
    onnx.checker.check_model(model, full_check=True)
    return model


def _session(model, level="all", **opts):
    return convrt.InferenceSession(model.SerializeToString() if isinstance(
        model, onnx.ModelProto) else model,
        convrt.SessionOptions(graph_optimization_level=level, **opts))


def _rel(got, ref) -> float:
    """max |got - ref| / max |ref|, in float64."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _cnn():
    text = """<ir_version: 8, opset_import: ["" : 17]>
    cnn (float16[2, 3, 16, 16] x) => (float16[2, 10] y) {
        c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        r1 = Relu (c1)
        p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
        c2 = Conv (p1, w2)
        a = Add (c2, p1)
        cat = Concat <axis = 1> (a, p1)
        g = GlobalAveragePool (cat)
        f = Flatten (g)
        y = Gemm <transB = 1> (f, wg, bg)
    }"""
    inits = {"w1": _h(8, 3, 3, 3, scale=0.3), "b1": _h(8, scale=0.1),
             "w2": _h(8, 8, 1, 1, scale=0.3), "wg": _h(10, 16, scale=0.3), "bg": _h(10)}
    return _model(text, inits), {"x": _h(2, 3, 16, 16)}


def _batchnorm():
    text = """<ir_version: 8, opset_import: ["" : 15]>
    bn (float16[2, 4, 5, 5] x) => (float16[2, 4, 5, 5] y) {
        y = BatchNormalization <epsilon = 0.001> (x, s, b, m, v)
    }"""
    inits = {"s": _h(4), "b": _h(4), "m": _h(4, scale=0.2),
             "v": RNG.uniform(0.5, 2.0, 4).astype(np.float16)}
    return _model(text, inits), {"x": _h(2, 4, 5, 5)}


def _softmax():
    text = """<ir_version: 8, opset_import: ["" : 13]>
    sm (float16[3, 7] x) => (float16[3, 7] y) { y = Softmax <axis = -1> (x) }"""
    return _model(text), {"x": _h(3, 7, scale=3.0)}


GRAPHS = {"cnn": _cnn, "batchnorm": _batchnorm, "softmax": _softmax}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_small_graphs_match_onnxruntime(name):
    model, feeds = GRAPHS[name]()
    (ref,) = run_ort(model, feeds)
    assert ref.dtype == np.float16
    sess = _session(model)
    assert [a.type for a in sess.get_inputs()] == ["tensor(float16)"]
    assert [a.type for a in sess.get_outputs()] == ["tensor(float16)"]
    (got,) = sess.run(None, feeds)
    assert got.dtype == np.float16 and got.shape == ref.shape
    assert np.isfinite(got).all()
    assert _rel(got, ref) <= 1e-2


def test_feeds_are_validated_as_float16():
    model, feeds = _softmax()
    sess = _session(model)
    with pytest.raises(convrt.InputError, match="dtype float32, expected float16"):
        sess.run(None, {"x": feeds["x"].astype(np.float32)})


def _vgg():
    with np.load(SAMPLES / "vgg_half.npz") as z:
        return str(SAMPLES / "vgg_half.onnx"), z["x"], z["y"]


def test_vgg_half_export_matches_pytorch_and_onnxruntime():
    path, x, y = _vgg()
    assert x.dtype == y.dtype == np.float16
    assert (SAMPLES / "vgg_half.onnx").stat().st_size < 2**20
    m = onnx.load(path)
    assert all(t.data_type == TensorProto.FLOAT16 for t in m.graph.initializer)
    sess = _session(path)
    (got,) = sess.run(None, {"input": x})
    assert got.dtype == np.float16 and got.shape == y.shape
    assert _rel(got, y) <= 1e-2  # PyTorch half on the CPU
    (ref,) = run_ort(m, {"input": x})
    assert ref.dtype == np.float16
    assert _rel(got, ref) <= 1e-2
    assert _rel(ref, y) <= 1e-2  # the two oracles agree as well


@pytest.mark.parametrize("level", LEVELS)
def test_every_optimization_level(level):
    path, x, y = _vgg()
    sess = _session(path, level)
    (got,) = sess.run(None, {"input": x})
    assert got.dtype == np.float16
    assert _rel(got, y) <= 1e-2
    verify(sess.graph)
    assert all(v.dtype != np.float16 for v in sess.graph.initializers.values())
    if level != "disable":
        assert sess.pass_report and len(sess.graph.nodes) < sess.unoptimized_node_count
    (got2,) = sess.run(None, {"input": np.concatenate([x, x])})  # the symbolic batch dim
    assert got2.dtype == np.float16 and got2.shape == (2, 10)
    assert _rel(got2[:1], y) <= 1e-2 and _rel(got2[1:], y) <= 1e-2


@pytest.mark.parametrize("level", LEVELS)
def test_small_cnn_every_level(level):
    model, feeds = _cnn()
    (ref,) = run_ort(model, feeds)
    (got,) = _session(model, level).run(None, feeds)
    assert got.dtype == np.float16 and _rel(got, ref) <= 1e-2


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,what", [(np.nan, "1 NaN"), (np.inf, "1 infinite"),
                                      (-np.inf, "1 infinite")])
def test_non_finite_float16_weight_is_a_load_error(bad, what):
    model, _ = _cnn()
    t = next(t for t in model.graph.initializer if t.name == "w2")
    w = numpy_helper.to_array(t).copy()
    w.flat[5] = bad
    t.CopyFrom(numpy_helper.from_array(w, "w2"))
    with pytest.raises(convrt.ModelLoadError) as e:
        _session(model)
    msg = str(e.value)
    assert "\n" not in msg and "'w2'" in msg and what in msg


def test_float32_nan_weight_behaves_as_before():
    """The finiteness check is for float16 models only; a float32 NaN weight still loads and
    propagates as onnxruntime propagates it."""
    m = _model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y) { y = Add (x, w) }""",
               {"w": np.array([1.0, np.nan, 2.0], np.float32)})
    x = np.ones((2, 3), np.float32)
    (got,) = _session(m).run(None, {"x": x})
    (ref,) = run_ort(m, {"x": x})
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_declared_float16_output_computing_int_is_a_shape_error():
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float16[2, 3] x) => (float16[2] y) { y = Shape (x) }""")
    with pytest.raises(convrt.ShapeError, match="'y' is declared float16 but computes to int64"):
        _session(m)


def test_float32_weights_count_against_the_memory_budget():
    model, feeds = _cnn()
    f16 = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    with pytest.raises(convrt.ModelLoadError, match="as float32, over the memory budget"):
        _session(model, memory_budget=f16 + 16)
    (got,) = _session(model, memory_budget=1 << 20).run(None, feeds)
    assert got.dtype == np.float16


# -- range: float32 inside, float16 on the way out ------------------------------------------
def _scale_model():
    return _model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float16[4] x) => (float16[4] big, float16[4] back) {
            big = Mul (x, k)
            back = Div (big, k)
        }""", {"k": np.array([1000.0], np.float16)})


def test_output_overflow_becomes_inf_like_onnxruntime():
    x = np.array([100.0, -100.0, 1.0, 60.0], np.float16)  # 1e5 > 65504, float16's max
    model = _scale_model()
    big_ref, _ = run_ort(model, {"x": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy: overflow encountered in cast
        big, back = _session(model).run(None, {"x": x})
    assert big.dtype == np.float16
    np.testing.assert_array_equal(big, big_ref)  # +inf, -inf, 1000, 60000
    assert np.isposinf(big[0]) and np.isneginf(big[1])
    # the intermediate is float32 here (PyTorch half and onnxruntime overflow it to inf):
    # Div reads the float32 product, not the graph output, so x * 1000 / 1000 == x
    np.testing.assert_array_equal(back, x)


# -- the rewrite itself ----------------------------------------------------------------------
def test_cast_to_float16_inside_a_float32_graph_still_rounds():
    """A float32 model with a Cast to FLOAT16: the value is rounded to float16 exactly as
    onnxruntime does, and a Relu on it with no declared output type returns float16."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[5] x) => (float[5] y, z) {
            h = Cast <to = 10> (x)
            y = Cast <to = 1> (h)
            z = Relu (h)
        }""")
    _untyped(m, "z")
    x = np.array([0.1, -1.0001, 3.14159, 70000.0, 1e-8], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y, z = _session(m).run(None, {"x": x})
        ref = ReferenceEvaluator(m).run(None, {"x": x})
    assert y.dtype == np.float32 and z.dtype == np.float16 == ref[1].dtype
    np.testing.assert_array_equal(y, ref[0])
    np.testing.assert_array_equal(z, ref[1])


def test_undeclared_output_types_follow_the_model():
    """Outputs without a declared type are float16 where the model computes float16 and float32
    where it casts to float (onnxruntime's inferred types are the oracle)."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float16[2, 3] x) => (float16[2, 3] a, float[2, 3] b, float16[2, 3] c) {
            a = Relu (x)
            b = Cast <to = 1> (a)
            s = Shape (x)
            c = ConstantOfShape <value = float[1] {0.5}> (s)
        }""")
    _untyped(_half_constants(m), "a", "b", "c")
    x = _h(2, 3)
    got = _session(m).run(None, {"x": x})
    ref = run_ort(m, {"x": x})
    assert [g.dtype for g in got] == [r.dtype for r in ref] == [np.float16, np.float32,
                                                               np.float16]
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


def test_constants_and_a_graph_output_read_inside():
    """Constant and ConstantOfShape values in float16; an output that other nodes also read."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float16[2, 3] x) => (float16[2, 3] y, float16[2, 3] z) {
            k = Constant <value = float[1] {1.5}> ()
            y = Mul (x, k)
            s = Shape (x)
            o = ConstantOfShape <value = float[1] {0.25}> (s)
            z = Add (y, o)
        }""")
    _half_constants(m)
    x = _h(2, 3)
    got = _session(m, "disable").run(None, {"x": x})
    ref = run_ort(m, {"x": x})
    for g, r in zip(got, ref):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g.astype(np.float32), r.astype(np.float32), rtol=1e-3)


def test_rewrite_structure_and_names():
    model, _ = _cnn()
    g = compiler.load(model)
    verify(g)
    assert [v.name for v in g.inputs] == ["x"] and g.inputs[0].dtype == np.float16
    assert [v.name for v in g.outputs] == ["y"] and g.outputs[0].dtype == np.float16
    first, last = g.nodes[0], g.nodes[-1]
    assert (first.op_type, first.attrs, first.inputs[0].name) == ("Cast", {"to": 1}, "x")
    assert (last.op_type, last.attrs, last.inputs[0].name) == ("Cast", {"to": 10}, "y__f32")
    assert g.values["w1"].const.dtype == np.float32
    for name in ("c1", "r1", "p1", "cat"):  # intermediate values keep their names, in float32
        assert g.values[name].dtype == np.float32
    float32 = onnx.parser.parse_model(onnx.printer.to_text(model).replace("float16", "float"))
    assert float16.lower(onnx_io.to_graph(float32)) is None  # float32 graphs: untouched


def test_dtype_attributes_are_rewritten():
    """Ops that name their output type (EyeLike, RandomNormal...) make float32 instead."""
    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 3] x) => (float16[3, 3] y, float16[2] r) {
            y = EyeLike <dtype = 10> (x)
            r = RandomNormal <dtype = 10, shape = [2]> ()
        }""")
    g = onnx_io.to_graph(m)
    low = float16.lower(g)
    assert [n.attrs["dtype"] for n in g.nodes] == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert {"y", "r"} <= low.derived


def test_overridable_float16_initializer():
    """An initializer that is also a graph input (IR >= 4): a float16 default that a float16
    feed may replace."""
    m = _model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float16[2] x, float16[2] b) => (float16[2] y) { y = Add (x, b) }""",
               {"b": np.array([1.0, 2.0], np.float16)})
    sess = _session(m)
    x = np.array([0.5, 0.25], np.float16)
    (y,) = sess.run(None, {"x": x})
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, np.array([1.5, 2.25], np.float16))
    (y,) = sess.run(None, {"x": x, "b": np.array([10.0, 20.0], np.float16)})
    np.testing.assert_array_equal(y, np.array([10.5, 20.25], np.float16))


def test_optimize_writes_float32_inside_float16_outside(tmp_path, capsys):
    path, x, y = _vgg()
    out = tmp_path / "opt.onnx"
    assert cli.main(["optimize", path, "-o", str(out)]) == 0
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert m.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert all(t.data_type == TensorProto.FLOAT for t in m.graph.initializer)
    (ref,) = run_ort(m, {"input": x})  # onnxruntime runs the written model
    assert ref.dtype == np.float16 and _rel(ref, y) <= 1e-2
    sess = _session(str(out))
    (got,) = sess.run(None, {"input": x})
    assert got.dtype == np.float16 and _rel(got, y) <= 1e-2
    assert len(sess.graph.nodes) == len(m.graph.node)  # reloading adds no second Cast
    assert cli.main(["inspect", path, "--optimized"]) == 0
    text = capsys.readouterr().out
    assert "input_to_float32" in text and "logits_to_float16" in text
