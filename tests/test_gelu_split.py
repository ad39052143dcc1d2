"""Erf, Gelu and Split (issue #21: ConvNeXt, YOLOv8) and the fuse_gelu pass.

Oracles: Python's float64 ``math.erf``/``math.erfc`` (onnx.reference's Erf computes in float32,
``otypes="f"``, so it is no float64 oracle), onnx.reference.ReferenceEvaluator and onnxruntime.
The float32 erf kernel is checked to 2 ulp of the correctly rounded value over a dense grid;
GELU to 16 ulp (its erfc tail keeps relative precision where 1 + erf(x / sqrt 2) cancels; the
worst case is just below x = -sqrt 2, where the small range's 1 - erf still cancels a little).
Measured on this machine (4 M float32, numba's threads, busy 2-core box): vector erf ~1.2-2.1 G
elements/s, ``erf_libm32`` (libm's scalar erff in the same loop) ~0.1 G/s; GELU ~1.1 G/s.
"""

from __future__ import annotations

import collections
import math
import pathlib
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convrt
from convrt.kernels import erf as K
from convrt.onnx_io.writer import from_graph

ort = pytest.importorskip("onnxruntime")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "sample_models"))
import builders  # noqa: E402

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 5.0, -5.0, -12.0]


def _grid(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-6, 6, 400_001), rng.standard_normal(200_000) * 3,
                        10.0 ** rng.uniform(-38, 1, 50_000)]).astype(dtype)
    return np.concatenate([x, -x])


def _ulps(got, exact):
    """|got - exact| in units of the float32 spacing at the correctly rounded value."""
    r = exact.astype(np.float32)
    return np.abs(got.astype(np.float64) - r) / np.spacing(np.abs(r)).astype(np.float64)


def _model(nodes, inputs, outputs, inits=(), opset=17, elem=F32):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, elem, s)
                                       for n, s in inputs.items()],
                          [helper.make_tensor_value_info(n, elem, None) for n in outputs],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _ort(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _run(model, feeds, level="all"):
    opts = convrt.SessionOptions()
    opts.graph_optimization_level = level
    return convrt.InferenceSession(model.SerializeToString(), opts).run(None, feeds)


# -- kernels -----------------------------------------------------------------------------------
def test_erf32_within_2_ulp():
    x = _grid()
    out = np.empty_like(x)
    K.erf(x, out)
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert _ulps(out, exact).max() <= 2


def test_gelu32_within_16_ulp_and_tanh_form():
    x = _grid()
    xd = x.astype(np.float64)
    out = np.empty_like(x)
    K.gelu(x, out)
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in xd])
    normal = np.abs(exact) > np.finfo(np.float32).tiny
    assert _ulps(out, exact)[normal].max() <= 16
    assert np.abs(out - exact)[~normal].max() <= 1e-42  # subnormal results: absolute
    K.gelu(x, out, "tanh")
    v = math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)
    with np.errstate(over="ignore"):
        exact = xd / (1 + np.exp(-2 * v))  # = 0.5 x (1 + tanh v), without its cancellation
    normal = np.abs(exact) > np.finfo(np.float32).tiny
    assert (np.abs(out - exact)[normal] / np.abs(exact[normal])).max() < 2e-5


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_float64_kernels_match_math(approximate):
    x = _grid(np.float64)
    out = np.empty_like(x)
    K.erf(x, out)
    assert np.array_equal(out, [math.erf(v) for v in x])
    K.gelu(x, out, approximate)
    if approximate == "none":
        exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x])
    else:
        exact = x / (1 + np.exp(-2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    # 1e-12: the deep tail's exponent x^2 / 2 carries x's rounding (relative 3e-14 at x = -12)
    assert np.allclose(out, exact, rtol=1e-12, atol=1e-300)


# -- ops ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("elem, dtype", [(F32, np.float32), (F64, np.float64)])
def test_erf_op_specials(opset, elem, dtype):
    x = np.array(SPECIALS, dtype)
    m = _model([helper.make_node("Erf", ["x"], ["y"])], {"x": [len(x)]}, ["y"], opset=opset,
               elem=elem)
    y = _run(m, {"x": x})[0]
    with np.errstate(over="ignore"):
        exact = np.array([math.erf(v) for v in x.astype(np.float64)]).astype(dtype)
    np.testing.assert_array_equal(y, exact)  # NaN in the same places, signs of zero included
    assert np.array_equal(np.signbit(y), np.signbit(exact))
    if dtype == np.float32:  # onnxruntime has no float64 Erf
        np.testing.assert_array_equal(y, _ort(m, {"x": x})[0])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op_float32_matches_references(approximate):
    x = (np.random.default_rng(1).standard_normal((2, 3, 50)) * 3).astype(np.float32)
    m = _model([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)],
               {"x": list(x.shape)}, ["y"], opset=20)
    y = _run(m, {"x": x})[0]
    # the references compute 1 + erf / 1 + tanh in float32, which cancels for x < -3: an
    # absolute tolerance there; the float64 formula is the tight oracle
    for ref in (ReferenceEvaluator(m).run(None, {"x": x})[0], _ort(m, {"x": x})[0]):
        np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-6)
    xd = x.astype(np.float64)
    if approximate == "none":
        exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in xd.reshape(-1)])
    else:
        exact = xd / (1 + np.exp(-2 * math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))
    np.testing.assert_allclose(y.reshape(-1), exact.reshape(-1), rtol=2e-5, atol=1e-30)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op_float64_and_specials(approximate):
    x = np.array(SPECIALS + list(np.linspace(-8, 8, 33)), np.float64)
    m = _model([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)],
               {"x": [len(x)]}, ["y"], opset=20, elem=F64)
    y = _run(m, {"x": x})[0]
    with np.errstate(over="ignore", invalid="ignore"):
        if approximate == "none":
            exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) if v >= 0 else
                              0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x])
        else:
            exact = x / (1 + np.exp(-2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(y, exact, rtol=1e-12, atol=1e-300)
    assert np.isnan(y[0]) and y[1] == np.inf and np.isnan(y[2])  # -inf * 0, as the formula
    m32 = _model([helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)],
                 {"x": [len(x)]}, ["y"], opset=20)
    x32 = x.astype(np.float32)
    y32, ref = _run(m32, {"x": x32})[0], _ort(m32, {"x": x32})[0]
    assert np.array_equal(np.isnan(y32), np.isnan(ref)) and np.array_equal(
        np.isinf(y32), np.isinf(ref))


def test_gelu_bad_approximate_is_one_line_shape_error():
    m = _model([helper.make_node("Gelu", ["x"], ["y"], name="g0", approximate="erf")],
               {"x": [4]}, ["y"], opset=20)
    with pytest.raises(convrt.ShapeError, match=r"node 'g0' \(Gelu\).*approximate 'erf'") as e:
        convrt.InferenceSession(m.SerializeToString())
    assert "\n" not in str(e.value)


# -- Split -------------------------------------------------------------------------------------
def _split_model(opset, n, sizes=None, axis=1, num_outputs=None, shape=(2, 6, 3)):
    ins, inits, attrs = ["x"], [], {"axis": axis}
    if sizes is not None:
        if opset >= 13:
            ins.append("s")
            inits.append(("s", np.array(sizes, np.int64)))
        else:
            attrs["split"] = sizes
    if num_outputs is not None:
        attrs["num_outputs"] = num_outputs
    outs = [f"y{i}" for i in range(n)]
    return _model([helper.make_node("Split", ins, outs, name="split0", **attrs)],
                  {"x": list(shape)}, outs, inits, opset=opset)


@pytest.mark.parametrize("opset, n, sizes, axis, num_outputs", [
    (2, 2, [2, 4], 1, None), (11, 2, None, 1, None), (11, 2, [1, 1], -3, None),
    (13, 3, [1, 2, 3], 1, None), (13, 2, [3, 0], 2, None), (13, 3, None, -2, None),
    (18, 2, [5, 1], 1, None), (18, 4, None, 1, 4), (18, 3, None, 1, 3), (18, 2, None, 2, 2)])
def test_split_matches_reference(opset, n, sizes, axis, num_outputs):
    x = np.arange(36, dtype=np.float32).reshape(2, 6, 3)
    m = _split_model(opset, n, sizes, axis, num_outputs)
    got = _run(m, {"x": x})
    ref = ReferenceEvaluator(m).run(None, {"x": x})
    assert len(got) == n and all(np.array_equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("opset, n, sizes, num_outputs, msg", [
    (13, 2, [2, 3], None, r"split \[2, 3\] sums to 5, not the size 6 of axis 1"),
    (2, 2, [4, 4], None, r"split \[4, 4\] sums to 8"),
    (11, 4, None, None, "does not split evenly into 4 outputs"),
    (13, 2, [7, -1], None, "negative size"),
    (13, 3, [2, 4], None, r"has 2 entries for 3 outputs"),
    (18, 2, [3, 3], 2, "either the split input or num_outputs"),
    (18, 3, None, 2, "num_outputs 2 differs from the node's 3 outputs"),
    (18, 5, None, 5, "cannot be split into 5 outputs"),
])
def test_split_bad_sizes_are_one_line_shape_errors(opset, n, sizes, num_outputs, msg):
    m = _split_model(opset, n, sizes, 1, num_outputs)
    with pytest.raises(convrt.ShapeError, match=r"node 'split0' \(Split\).*" + msg) as e:
        convrt.InferenceSession(m.SerializeToString()).run(
            None, {"x": np.zeros((2, 6, 3), np.float32)})
    assert "\n" not in str(e.value)


# -- fuse_gelu ---------------------------------------------------------------------------------
def _gelu_chain(form="torch", scale="div", swap=False, opset=17, elem=F32, c=None,
                extra_output=None):
    """The decomposed GELU.  form "torch": Mul(Mul(x, p), 0.5); "hf": Mul(Mul(x, 0.5), p);
    scale "div": Div(x, sqrt 2) or "mul": Mul(x, 1/sqrt 2); swap: commuted operands."""
    dt = np.float32 if elem == F32 else np.float64
    c = (math.sqrt(2) if scale == "div" else 1 / math.sqrt(2)) if c is None else c
    inits = [("c", np.array(c, dt)), ("one", np.array(1.0, dt)), ("half", np.array(0.5, dt))]

    def mk(op, a, b, out):
        return helper.make_node(op, [b, a] if swap and op != "Div" else [a, b], [out])
    nodes = [mk("Div" if scale == "div" else "Mul", "x", "c", "u"),
             helper.make_node("Erf", ["u"], ["e"], name="erf0"), mk("Add", "e", "one", "p")]
    if form == "torch":
        nodes += [mk("Mul", "x", "p", "m"), mk("Mul", "m", "half", "y")]
    else:
        nodes += [mk("Mul", "x", "half", "h"), mk("Mul", "h", "p", "y")]
    outs = ["y"] + ([extra_output] if extra_output else [])
    return _model(nodes, {"x": [2, 3, 8]}, outs, inits, opset=opset, elem=elem)


def _optimized(m):
    g = convrt.load(m.SerializeToString())
    results = convrt.optimize(g)
    return g, collections.Counter((n.domain + "." if n.domain else "") + n.op_type
                                  for n in g.nodes), results


@pytest.mark.parametrize("form", ["torch", "hf"])
@pytest.mark.parametrize("scale", ["div", "mul"])
@pytest.mark.parametrize("swap", [False, True])
def test_fuse_gelu_fires_and_keeps_numerics(form, scale, swap):
    m = _gelu_chain(form, scale, swap)
    g, ops, results = _optimized(m)
    assert ops == {"convrt.Gelu": 1}, ops
    assert any(r.name == "fuse_gelu" and r.stats == {"GELU": 1} for r in results)
    x = (np.random.default_rng(2).standard_normal((2, 3, 8)) * 3).astype(np.float32)
    ref = _ort(m, {"x": x})[0]
    np.testing.assert_allclose(_run(m, {"x": x})[0], ref, rtol=1e-6, atol=2e-7)
    out = from_graph(g)  # the optimized model exported: a convrt.Gelu function, valid ONNX
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_allclose(_ort(out, {"x": x})[0], ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_run(out, {"x": x})[0], ref, rtol=1e-6, atol=2e-7)


@pytest.mark.parametrize("opset, elem, expect", [
    (20, F32, {"Gelu": 1}), (20, F64, {"Gelu": 1}), (17, F64, {"convrt.Gelu": 1}),
    (13, F64, {"Div": 1, "Erf": 1, "Add": 1, "Mul": 2}),  # no CastLike for the body
    (11, F32, {"Div": 1, "Erf": 1, "Add": 1, "Mul": 2}),  # no Constant value_float
])
def test_fuse_gelu_by_opset_and_dtype(opset, elem, expect):
    m = _gelu_chain(opset=opset, elem=elem)
    g, ops, _ = _optimized(m)
    assert ops == expect, ops
    dt = np.float32 if elem == F32 else np.float64
    x = np.linspace(-6, 6, 48).reshape(2, 3, 8).astype(dt)
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.reshape(-1)])
    tol = 1e-6 if dt == np.float32 else 1e-14
    np.testing.assert_allclose(_run(m, {"x": x})[0].reshape(-1), exact, rtol=tol, atol=1e-7)
    out = from_graph(g)
    onnx.checker.check_model(out, full_check=True)
    if dt == np.float64:  # onnxruntime has no float64 Erf; the reference expands the body
        np.testing.assert_allclose(ReferenceEvaluator(out).run(None, {"x": x})[0].reshape(-1),
                                   exact, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_allclose(_ort(out, {"x": x})[0].reshape(-1), exact, rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.parametrize("kw", [
    {"c": 1.5},  # not sqrt 2
    {"c": math.sqrt(2) * (1 + 1e-4)},
    {"scale": "mul", "c": math.sqrt(2)},  # Mul by sqrt 2 is not Div by it
    {"extra_output": "e"},  # Erf's output is also a graph output
    {"extra_output": "p"},
    {"extra_output": "m"},
    {"form": "hf", "extra_output": "h"},
])
def test_fuse_gelu_negative_cases(kw):
    m = _gelu_chain(**kw)
    _, ops, _ = _optimized(m)
    assert ops["Erf"] == 1 and "convrt.Gelu" not in ops, ops


def test_fuse_gelu_leaves_a_chain_whose_add_is_read_elsewhere():
    m = _gelu_chain()
    m.graph.node.append(helper.make_node("Sqrt", ["p"], ["z"]))  # 1 + erf >= 0
    m.graph.output.append(helper.make_tensor_value_info("z", F32, None))
    _, ops, _ = _optimized(m)
    assert ops["Erf"] == 1 and "convrt.Gelu" not in ops, ops


# -- ConvNeXt-tiny -----------------------------------------------------------------------------
def test_convnext_gelus_fused_and_optimized_export_runs_in_onnxruntime():
    m = builders.build("convnext_tiny", image=32)
    g, ops, _ = _optimized(m)
    assert ops["convrt.Gelu"] == 18 and ops["Erf"] == 0, ops
    out = from_graph(g)
    onnx.checker.check_model(out)
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = _ort(m, {"input": x})[0]
    scale = np.abs(ref).max()
    assert np.abs(_ort(out, {"input": x})[0] - ref).max() <= 1e-4 * scale
    assert np.abs(_run(m, {"input": x})[0] - ref).max() <= 1e-4 * scale


def _gelu_tanh_chain(cube="mul", tail="torch", swap=False, opset=17, elem=F32, kappa=0.044715,
                     extra_output=None):
    """PyTorch's tanh GELU export (cube "mul": Mul(x, Mul(x, x))) or Hugging Face's gelu_new
    (cube "pow": Pow(x, 3); tail "hf": Mul(Mul(x, 0.5), p))."""
    dt = np.float32 if elem == F32 else np.float64
    inits = [("beta", np.array(math.sqrt(2 / math.pi), dt)), ("kappa", np.array(kappa, dt)),
             ("one", np.array(1.0, dt)), ("half", np.array(0.5, dt)),
             ("three", np.array(3.0, dt))]

    def mk(op, a, b, out):
        return helper.make_node(op, [b, a] if swap and op != "Pow" else [a, b], [out])
    if cube == "pow":
        nodes = [mk("Pow", "x", "three", "cube")]
    else:
        nodes = [mk("Mul", "x", "x", "sq"), mk("Mul", "x", "sq", "cube")]
    nodes += [mk("Mul", "kappa", "cube", "kc"), mk("Add", "x", "kc", "s"),
              mk("Mul", "beta", "s", "inner"), helper.make_node("Tanh", ["inner"], ["t"]),
              mk("Add", "one", "t", "p")]
    if tail == "torch":
        nodes += [mk("Mul", "x", "p", "m"), mk("Mul", "half", "m", "y")]
    else:
        nodes += [mk("Mul", "x", "half", "h"), mk("Mul", "h", "p", "y")]
    outs = ["y"] + ([extra_output] if extra_output else [])
    return _model(nodes, {"x": [2, 3, 8]}, outs, inits, opset=opset, elem=elem)


@pytest.mark.parametrize("cube", ["mul", "pow"])
@pytest.mark.parametrize("tail", ["torch", "hf"])
@pytest.mark.parametrize("swap", [False, True])
def test_fuse_gelu_tanh_form(cube, tail, swap):
    m = _gelu_tanh_chain(cube, tail, swap)
    g, ops, _ = _optimized(m)
    assert ops == {"convrt.GeluTanh": 1}, ops
    x = (np.random.default_rng(5).standard_normal((2, 3, 8)) * 3).astype(np.float32)
    ref = _ort(m, {"x": x})[0]
    np.testing.assert_allclose(_run(m, {"x": x})[0], ref, rtol=2e-6, atol=1e-6)
    out = from_graph(g)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_allclose(_ort(out, {"x": x})[0], ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_run(out, {"x": x})[0], ref, rtol=2e-6, atol=1e-6)


def test_fuse_gelu_tanh_form_opset20_is_the_standard_op():
    g, ops, _ = _optimized(_gelu_tanh_chain(opset=20, elem=F64))
    assert ops == {"Gelu": 1} and g.nodes[0].attrs.get("approximate") == "tanh", ops


@pytest.mark.parametrize("kw", [{"kappa": 0.05}, {"extra_output": "sq"},
                                {"extra_output": "inner"}, {"extra_output": "t"}])
def test_fuse_gelu_tanh_form_negative_cases(kw):
    _, ops, _ = _optimized(_gelu_tanh_chain(**kw))
    assert ops["Tanh"] == 1 and "convrt.GeluTanh" not in ops, ops


# -- LayerNormalization's row kernel (ConvNeXt) ---------------------------------------------------
@pytest.mark.parametrize("elem, dtype", [(F32, np.float32), (F64, np.float64)])
@pytest.mark.parametrize("xs, axis, ss, const, bias", [
    ((2, 5, 5, 96), -1, (96,), True, True),  # ConvNeXt's NHWC LayerNorm
    ((2, 3, 4, 6), 2, (1, 6), True, True),  # Scale broadcast over the normalized dims
    ((3, 7), 0, (3, 7), False, True),  # Scale, B as graph inputs
    ((2, 3, 8), -1, (8,), True, False),  # no B
    ((0, 4), 1, (4,), True, True),  # no rows
])
def test_layer_norm_rows_match_reference(elem, dtype, xs, axis, ss, const, bias):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(xs) * 3 + 1).astype(dtype)
    s = rng.uniform(0.5, 1.5, ss).astype(dtype)
    b = rng.standard_normal(ss).astype(dtype)
    ins = ["x", "s"] + (["b"] if bias else [])
    feeds, inputs, inits = {"x": x}, {"x": list(xs)}, []
    for name, v in (("s", s), ("b", b))[:len(ins) - 1]:
        if const:
            inits.append((name, v))
        else:
            feeds[name], inputs[name] = v, list(v.shape)
    m = _model([helper.make_node("LayerNormalization", ins, ["y"], axis=axis, epsilon=1e-6)],
               inputs, ["y"], inits, opset=17, elem=elem)
    y = _run(m, feeds)[0]
    a = axis % len(xs)
    xd = x.astype(np.float64)
    axes = tuple(range(a, len(xs)))
    exact = (xd - xd.mean(axis=axes, keepdims=True)) / np.sqrt(
        xd.var(axis=axes, keepdims=True) + 1e-6) * s + (b if bias else 0)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, exact, rtol=tol, atol=tol)
    if dtype == np.float32 and x.size:
        np.testing.assert_allclose(y, ReferenceEvaluator(m).run(None, feeds)[0], rtol=1e-5,
                                   atol=1e-5)
