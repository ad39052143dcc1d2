"""Graph inputs that carry shapes, and IR < 4 models whose initializers are listed as inputs,
through the public API (``InferenceSession``), with onnxruntime as the oracle."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import convrt
from convrt.runtime.session import MAX_PLANS


def _ort(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _model(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


RESHAPE = _model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 12] x, int64[2] shape) => (float[A, B] y) { y = Reshape (x, shape) }""")


def test_reshape_target_fed_at_run_time_plans_per_value():
    sess, ref = convrt.InferenceSession(RESHAPE), _ort(RESHAPE)
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    for shape in ([4, 6], [6, -1], [0, 12], [24, 1], [4, 6]):
        feeds = {"x": x, "shape": np.array(shape, np.int64)}
        (got,) = sess.run(None, feeds)
        (want,) = ref.run(None, feeds)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert len(sess._plans) == 4  # one per distinct value; the repeat reused its plan


def test_value_keyed_plans_stay_bounded():
    sess = convrt.InferenceSession(RESHAPE)
    x = np.zeros((1, 12), np.float32)
    for a in (1, 2, 3, 4, 6, 12, -1, 1, 2, 3, 4, 6, 12):
        sess.run(None, {"x": x, "shape": np.array([a, -1 if a != -1 else 12], np.int64)})
    assert len(sess._plans) <= MAX_PLANS


@pytest.mark.parametrize("text,feeds", [
    ("""g (float[2, 3, 4] x, int64[2] starts, int64[2] ends, int64[2] axes) => (float[2, A, B] y)
        { y = Slice (x, starts, ends, axes) }""",
     {"starts": np.array([1, 0], np.int64), "ends": np.array([3, -1], np.int64),
      "axes": np.array([1, 2], np.int64)}),
    ("""g (float[1, 2, 3, 3] x, int64[8] pads) => (float[1, 2, A, B] y)
        { y = Pad <mode = "reflect"> (x, pads) }""",
     {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}),
    ("""g (float[1, 2, 3, 1] x, int64[1] axes) => (float[A, B, C] y) { y = Squeeze (x, axes) }""",
     {"axes": np.array([-1], np.int64)}),
    ("""g (float[2, 3, 4] x, int64[2] axes) => (float[A, B, C] y)
        { y = ReduceMean <keepdims = 0> (x, axes) }""",
     {"axes": np.array([0, 2], np.int64)}),
    ("""g (int64[3] shape, float[1] x) => (float[A, B, C] y)
        { z = ConstantOfShape <value = float[1] {2.5}> (shape)  y = Add (z, x) }""",
     {"shape": np.array([2, 1, 3], np.int64)}),
])
def test_shape_carrying_inputs_match_onnxruntime(text, feeds):
    m = _model('<ir_version: 8, opset_import: ["" : 18]>\n' + text)
    rng = np.random.default_rng(0)
    for vi in m.graph.input:
        if vi.name not in feeds:
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    (got,) = convrt.InferenceSession(m).run(None, feeds)
    (want,) = _ort(m).run(None, feeds)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_float_inputs_stay_run_time_data():
    """Clip bounds fed as inputs change every run without a new plan."""
    m = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[3, 5] x, float lo, float hi) => (float[3, 5] y) { y = Clip (x, lo, hi) }""")
    sess, ref = convrt.InferenceSession(m), _ort(m)
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    for lo, hi in ((-0.5, 0.5), (0.0, 1.0), (1.0, -1.0)):
        feeds = {"x": x, "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}
        np.testing.assert_array_equal(sess.run(None, feeds)[0], ref.run(None, feeds)[0])
    assert len(sess._plans) == 1


def test_dropout_training_mode_input_checked_at_run_time():
    m = _model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 3] x, float r, bool t) => (float[2, 3] y) { y = Dropout (x, r, t) }""")
    sess = convrt.InferenceSession(m)
    x = np.ones((2, 3), np.float32)
    for r, t in ((0.5, False), (0.0, True)):
        (y,) = sess.run(None, {"x": x, "r": np.float32(r), "t": np.bool_(t)})
        np.testing.assert_array_equal(y, x)
    with pytest.raises(convrt.UnsupportedOpError, match="random mask"):
        sess.run(None, {"x": x, "r": np.float32(0.5), "t": np.bool_(True)})


# -- IR < 4: every initializer is also listed as a graph input, and is a constant ------------
def _ir3_conv() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])]
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4),
                           helper.make_node("Relu", ["y"], ["z"])], "ir3", inputs,
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)])
    m.ir_version = 3
    return m


def test_ir3_initializers_are_constants():
    m = _ir3_conv()
    sess = convrt.InferenceSession(m)
    assert [a.name for a in sess.get_inputs()] == ["x"]
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (got,) = sess.run(None, {"x": x})
    (want,) = _ort(m).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert len(sess.graph.nodes) == 1  # constant weights: Conv + Relu fused
    with pytest.raises(convrt.InputError, match="'w'"):
        sess.run(None, {"x": x, "w": np.zeros((4, 3, 3, 3), np.float32)})


def test_ir3_model_written_back_is_valid_onnx(tmp_path):
    g = convrt.load(_ir3_conv())
    out = convrt.from_graph(g)
    onnx.checker.check_model(out, full_check=True)
    assert out.ir_version >= 4 and [i.name for i in out.graph.input] == ["x"]


def test_light_zoo_model_through_cli(capsys):
    """A model-zoo CNN from the onnx wheel (IR 3) through ``convrt run``, as a user runs it."""
    import glob
    import os

    from convrt.cli import main
    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    path = sorted(glob.glob(os.path.join(light, "light_squeezenet.onnx")))[0]
    assert onnx.load(path).ir_version == 3
    assert main(["run", path]) in (0, None)
    out = capsys.readouterr().out
    assert "top-5" in out.lower() or "output" in out.lower()


def test_backend_drops_ir3_initializer_inputs_and_needs_no_rebuilding():
    from convrt.backend import prepare
    m = _ir3_conv()
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = numpy_helper.to_array(m.graph.initializer[0])
    b = numpy_helper.to_array(m.graph.initializer[1])
    (want,) = _ort(m).run(None, {"x": x})
    for given in ([x], [x, w, b]):  # test data may list the initializers too
        (got,) = prepare(m).run(given)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    rep = prepare(RESHAPE)
    for shape in ([3, 8], [8, 3]):
        (y,) = rep.run([np.zeros((2, 12), np.float32), np.array(shape, np.int64)])
        assert y.shape == tuple(shape)
    assert rep.session is not None and len(rep.session._plans) == 2
