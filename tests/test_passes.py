"""passes/: structure, numerics (vs onnxruntime on the original model) and negative cases.

Every optimize call here re-verifies the IR after each modifying pass (CONVRT_VERIFY_PASSES).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import convrt
import passes
from convrt import compiler
from convrt.errors import InputError
from convrt.ir.verify import IRVerifyError, verify

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _verify_every_pass(monkeypatch):
    monkeypatch.setenv("CONVRT_VERIFY_PASSES", "1")


def make(text: str, consts: dict | None = None, overridable=()) -> onnx.ModelProto:
    """Parse ``text``; names in ``consts`` become initializers (removed from the inputs unless
    listed in ``overridable``, which keeps them as feed-overridable defaults)."""
    m = onnx.parser.parse_model(text)
    for name, arr in (consts or {}).items():
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
        if name in overridable and name not in {i.name for i in m.graph.input}:
            m.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(arr).dtype),
                np.shape(arr)))
        if name not in overridable:
            keep = [i for i in m.graph.input if i.name != name]
            del m.graph.input[:]
            m.graph.input.extend(keep)
    onnx.checker.check_model(m)
    return m


def w(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def bn_params(c):
    return {"s": (RNG.random(c) + 0.5).astype(np.float32), "bb": w(c), "mu": w(c),
            "var": (RNG.random(c) + 0.5).astype(np.float32)}


def ops(graph) -> collections.Counter:
    return collections.Counter(n.op_type for n in graph.nodes)


def optimize(model, level="all", disabled=()):
    g = compiler.load(model.SerializeToString())
    report = passes.optimize(g, level, disabled)
    return g, {r.name: r for r in report}


def check_numerics(model, graph, feeds, rtol=1e-4, atol=1e-5):
    """Original model in onnxruntime == optimized graph in convrt == its ONNX export in ORT."""
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    exported = convrt.from_graph(graph)
    onnx.checker.check_model(exported, full_check=True)
    data = exported.SerializeToString()
    sess = convrt.InferenceSession(data, convrt.SessionOptions(graph_optimization_level="disable"))
    got = sess.run(None, feeds)
    via_ort = ort.InferenceSession(data).run(None, feeds)
    for r, a, b in zip(ref, got, via_ort):
        np.testing.assert_allclose(a, r, rtol=rtol, atol=atol)
        np.testing.assert_allclose(b, r, rtol=rtol, atol=atol)


X8 = {"x": RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)}

# -- infrastructure ---------------------------------------------------------------------------


def test_unknown_pass_name_is_a_clear_error():
    g = compiler.load("sample_models/small_vgg.onnx")
    with pytest.raises(InputError, match="fold_batchnorm"):
        passes.optimize(g, disabled=("fold_batchnorn",))
    with pytest.raises(InputError, match="level"):
        passes.optimize(g, level="max")


def test_levels_and_disabled():
    m = "sample_models/small_vgg.onnx"
    g = compiler.load(m)
    n = len(g.nodes)
    assert passes.optimize(g, "disable") == [] and len(g.nodes) == n
    g = compiler.load(m)
    rep = passes.optimize(g, "basic")
    assert {r.name for r in rep} == {"fold_constants", "eliminate_identity", "fold_batchnorm",
                                     "fuse_conv_bias", "eliminate_dead_nodes"}
    assert "BatchNormalization" not in ops(g) and not any(x.domain for x in g.nodes)
    g = compiler.load(m)
    rep = passes.optimize(g, "all", disabled=["fuse_conv_activation"])
    assert ops(g)["Relu"] == 5 and "fuse_conv_activation" not in {r.name for r in rep}
    msgs = {r.name: r.message for r in rep}
    assert msgs["fold_batchnorm"] == "fold_batchnorm: 5 BatchNormalization folded into Conv"


def test_pipeline_is_explicit_and_bounded():
    assert [p.name for p in passes.DEFAULT_PIPELINE][0] == "fold_constants"
    calls = []

    class Flip(passes.Pass):
        name, level = "flip", "basic"

        def run(self, graph):
            calls.append(1)
            return passes.PassResult(self.name, True, {"flips": 1}, "")

    pm = passes.PassManager([Flip()], max_iterations=3, verify=False)
    (res,) = pm.run(compiler.load("sample_models/small_vgg.onnx"))
    assert len(calls) == 3 and res.stats == {"flips": 3}


def test_verify_catches_broken_use_lists():
    g = compiler.load("sample_models/small_vgg.onnx")
    verify(g)
    node = g.nodes[1]
    node.inputs[0].uses.clear()
    with pytest.raises(IRVerifyError, match="use-list"):
        verify(g)


# -- fold_constants ---------------------------------------------------------------------------
RESHAPE = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[2,4,8,8] x, float[N,4] z) => (float[2,256] y, float[N,4] y2) {
    s = Shape(x)
    i0 = Constant<value = int64[1] {0}>()
    d0 = Gather(s, i0)
    m1 = Constant<value = int64[1] {-1}>()
    shp = Concat<axis = 0>(d0, m1)
    r = Reshape(x, shp)
    kf = Cast<to = 1>(k)
    k2 = Mul(kf, kf)
    y = Add(r, k2)
    zs = Shape<end = 1>(z)
    zs1 = Cast<to = 1>(zs)
    y2 = Add(z, zs1)
}
"""


def test_fold_constants_shape_chain_cast_and_arithmetic():
    m = make(RESHAPE, {"k": np.array([3], np.int64)})
    g, rep = optimize(m)
    left = ops(g)
    assert left == {"Reshape": 1, "Add": 2, "Shape": 1, "Cast": 1}, left
    assert rep["fold_constants"].stats["nodes folded"] == 7
    feeds = {"x": X8["x"], "z": np.ones((3, 4), np.float32)}
    check_numerics(m, g, feeds)


def test_fold_constants_leaves_overridable_initializers():
    m = make(RESHAPE, {"k": np.array([3], np.int64)}, overridable=("k",))
    g, _ = optimize(m)
    assert ops(g)["Mul"] == 1 and ops(g)["Cast"] == 2  # k may be fed: Cast/Mul stay


# -- eliminate_identity / eliminate_dead_nodes ------------------------------------------------
IDENT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2,4,8,8] x) => (float[2,4,8,8] y, float[2,4,8,8] x2, float[2,4,8,8] m) {
    a = Relu(x)
    b = Identity(a)
    c, mask = Dropout(b)
    d = Sigmoid(c)
    y = Identity(d)
    x2 = Identity(x)
    e, mask2 = Dropout(a)
    m = Identity(e)
    dead = Tanh(x)
    unused = Shape(dead)
}
"""


def test_eliminate_identity_and_dropout():
    g, rep = optimize(make(IDENT))
    assert [v.name for v in g.outputs] == ["y", "x2", "m"]
    # x2 = Identity(graph input) must stay; m's Identity folds into the Dropout's writer
    assert ops(g) == {"Relu": 1, "Sigmoid": 1, "Identity": 1}, ops(g)
    assert rep["eliminate_identity"].stats == {"Identity removed": 3, "Dropout removed": 2}
    assert rep["eliminate_dead_nodes"].stats["nodes removed"] == 2
    check_numerics(make(IDENT), g, X8)


def test_unit_window_pooling_is_removed():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,4,8,8] x) => (float[2,4,8,8] y, float[2,4,8,8] z, float[2,4,4,4] k) {
        a = Relu(x)
        y = AveragePool<kernel_shape = [1,1], strides = [1,1]>(a)
        b = Sigmoid(x)
        p = MaxPool<kernel_shape = [1,1]>(b)
        z = Tanh(p)
        k = AveragePool<kernel_shape = [1,1], strides = [2,2]>(x)
    }
    """
    g, rep = optimize(make(text))
    assert ops(g) == {"Relu": 1, "Sigmoid": 1, "Tanh": 1, "AveragePool": 1}, ops(g)
    assert rep["eliminate_identity"].stats == {"AveragePool removed": 1, "MaxPool removed": 1}
    check_numerics(make(text), g, X8)


def test_dropout_with_used_mask_stays():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2,4] x) => (float[2,4] y, bool[2,4] mask, float[2,4] y2) {
        y, mask = Dropout(x)
        a = Relu(x)
        y2 = Dropout(a, r, t)
    }
    """
    m = make(text, {"r": np.array(0.5, np.float32), "t": np.array(False)})
    g, _ = optimize(m)
    assert ops(g) == {"Dropout": 1, "Relu": 1}  # the second one (training_mode constant false) goes


# -- fold_batchnorm ---------------------------------------------------------------------------
CONV_BN = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[N,4,8,8] x) => (float[N,6,8,8] y) {
    c = Conv<group = %d, pads = [1,1,1,1]>(x, W%s)
    y = BatchNormalization<epsilon = 0.001>(c, s, bb, mu, var)
}
"""


@pytest.mark.parametrize("group,bias", [(1, True), (2, False)])
def test_fold_batchnorm_into_conv(group, bias):
    consts = {"W": w(6, 4 // group, 3, 3), **bn_params(6)}
    if bias:
        consts["B"] = w(6)
    m = make(CONV_BN % (group, ", B" if bias else ""), consts)
    g, rep = optimize(m, "basic")
    assert ops(g) == {"Conv": 1} and rep["fold_batchnorm"].stats["into Conv"] == 1
    assert g.nodes[0].outputs[0].name == "y" and len(g.initializers) == 2
    check_numerics(m, g, X8)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_batchnorm_into_gemm(trans_b):
    text = f"""
    <ir_version: 8, opset_import: ["" : 15]>
    g (float[3,5] x) => (float[3,6] y) {{
        c = Gemm<transB = {trans_b}, beta = 0.5, alpha = 2.0>(x, W, C)
        y = BatchNormalization(c, s, bb, mu, var)
    }}
    """
    m = make(text, {"W": w(6, 5) if trans_b else w(5, 6), "C": w(1, 6), **bn_params(6)})
    g, rep = optimize(m, "basic")
    assert ops(g) == {"Gemm": 1}
    check_numerics(m, g, {"x": w(3, 5)})


def test_standalone_batchnorm_becomes_channel_affine():
    text = """
    <ir_version: 8, opset_import: ["" : 15]>
    g (float[N,6,8,8] x) => (float[N,6,4,4] y) {
        p = MaxPool<kernel_shape = [2,2], strides = [2,2]>(x)
        y = BatchNormalization(p, s, bb, mu, var)
    }
    """
    m = make(text, bn_params(6))
    g, _ = optimize(m, "basic")
    assert ops(g) == {"MaxPool": 1, "ChannelAffine": 1}
    check_numerics(m, g, {"x": w(2, 6, 8, 8)})


SHARED = """
<ir_version: 8, opset_import: ["" : 15]>
g (float[N,4,8,8] x) => (float[N,4,8,8] y, float[N,4,8,8] z) {
    c1 = Conv<pads = [1,1,1,1]>(x, W)
    y = BatchNormalization(c1, s, bb, mu, var)
    c2 = Conv<pads = [1,1,1,1]>(x, W)
    z = Relu(c2)
}
"""


def test_batchnorm_negative_cases():
    p = bn_params(4)
    # shared weights: W is not folded (the BN runs as a ChannelAffine), W unchanged
    wt = w(4, 4, 3, 3)
    m = make(SHARED, {"W": wt, **p})
    g, rep = optimize(m, "basic")
    assert rep["fold_batchnorm"].stats.get("into Conv", 0) == 0
    np.testing.assert_array_equal(g.initializers["W"].const, wt)
    check_numerics(m, g, X8)
    # weights fed as a graph input: nothing folds into the Conv
    text = CONV_BN.replace("float[N,4,8,8] x)", "float[N,4,8,8] x, float[6,4,3,3] W)") % (1, "")
    m = make(text, bn_params(6))
    g, _ = optimize(m, "basic")
    assert ops(g)["Conv"] == 1 and "BatchNormalization" not in ops(g)
    assert g.nodes[0].inputs[1].name == "W" and len(g.nodes[0].inputs) == 2
    # BN statistics overridable by a feed: the BN stays a BN
    m = make(CONV_BN % (1, ""), {"W": w(6, 4, 3, 3), **bn_params(6)}, overridable=("mu",))
    g, _ = optimize(m)
    assert ops(g)["BatchNormalization"] == 1
    # the conv output is also a graph output: not folded
    text = CONV_BN.replace("=> (float[N,6,8,8] y)", "=> (float[N,6,8,8] y, float[N,6,8,8] c)")
    m = make(text % (1, ""), {"W": w(6, 4, 3, 3), **bn_params(6)})
    g, _ = optimize(m)
    assert [n.op_type for n in g.nodes] == ["Conv", "ChannelAffine"]
    check_numerics(m, g, X8)


# -- fuse_conv_bias ---------------------------------------------------------------------------
BIAS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,8,8] x) => (float[N,6,8,8] y) {
    c = Conv<pads = [1,1,1,1]>(x, W)
    y = %s
}
"""


@pytest.mark.parametrize("expr,shape", [("Add(c, k)", (1, 6, 1, 1)), ("Add(k, c)", (6, 1, 1)),
                                        ("Sub(c, k)", (6, 1, 1)), ("Add(c, k)", ())])
def test_fuse_conv_bias(expr, shape):
    m = make(BIAS % expr, {"W": w(6, 4, 3, 3), "k": w(*shape)})
    g, _ = optimize(m, "basic")
    assert ops(g) == {"Conv": 1} and len(g.nodes[0].inputs) == 3
    check_numerics(m, g, X8)


def test_fuse_conv_bias_negative():
    # not per-channel
    g, _ = optimize(make(BIAS % "Add(c, k)", {"W": w(6, 4, 3, 3), "k": w(6, 8, 8)}))
    assert ops(g)["Add"] == 1
    # overridable constant
    m = make(BIAS % "Add(c, k)", {"W": w(6, 4, 3, 3), "k": w(6, 1, 1)}, overridable=("k",))
    assert ops(optimize(m)[0])["Add"] == 1
    # two consumers of the conv output
    text = BIAS.replace("y = %s", "y = Add(c, k)\n    z = Relu(c)").replace(
        "=> (float[N,6,8,8] y)", "=> (float[N,6,8,8] y, float[N,6,8,8] z)")
    m = make(text, {"W": w(6, 4, 3, 3), "k": w(6, 1, 1)})
    g, _ = optimize(m)
    assert ops(g)["Add"] == 1 and ops(g)["Conv"] == 1
    check_numerics(m, g, X8)


# -- fuse_conv_activation ---------------------------------------------------------------------
ACT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,8,8] x) => (float[N,4,8,8] y) {
    c = Conv<pads = [1,1,1,1], group = %d>(x, W%s)
    y = %s
}
"""


@pytest.mark.parametrize("act,op", [
    ("Relu(c)", "FusedConvRelu"), ("LeakyRelu<alpha = 0.2>(c)", "FusedConvLeakyRelu"),
    ("Clip(c, lo, hi)", "FusedConvClip"), ("Sigmoid(c)", "FusedConvSigmoid"),
    ("Tanh(c)", "FusedConvTanh"), ("Clip(c, , hi)", "FusedConvClip")])
@pytest.mark.parametrize("group", [1, 4])
def test_fuse_conv_activation(act, op, group):
    consts = {"W": w(4, 4 // group, 3, 3), "B": w(4), "lo": np.array(0, np.float32),
              "hi": np.array(0.5, np.float32)}
    m = make(ACT % (group, ", B" if group == 1 else "", act), consts)
    g, rep = optimize(m)
    assert [(n.domain, n.op_type) for n in g.nodes] == [("convrt", op)]
    assert ("convrt", op) in g.functions and g.opsets["convrt"] == 1
    check_numerics(m, g, X8)
    g, _ = optimize(m, "basic")
    assert not any(n.domain for n in g.nodes)


def test_fuse_conv_activation_negative():
    base = {"W": w(4, 4, 3, 3), "B": w(4), "lo": np.array(0, np.float32)}
    # conv output is a graph output
    text = (ACT % (1, ", B", "Relu(c)")).replace("=> (float[N,4,8,8] y)",
                                                 "=> (float[N,4,8,8] y, float[N,4,8,8] c)")
    assert ops(optimize(make(text, base))[0]) == {"Conv": 1, "Relu": 1}
    # Clip bound fed at run time
    text = (ACT % (1, ", B", "Clip(c, lo, hi)")).replace("float[N,4,8,8] x)",
                                                         "float[N,4,8,8] x, float hi)")
    m = make(text, base)
    assert ops(optimize(m)[0]) == {"Conv": 1, "Clip": 1}
    # two consumers
    text = (ACT % (1, ", B", "Relu(c)")).replace("y = Relu(c)", "y = Relu(c)\n    z = Tanh(c)") \
        .replace("=> (float[N,4,8,8] y)", "=> (float[N,4,8,8] y, float[N,4,8,8] z)")
    m = make(text, base)
    g, _ = optimize(m)
    assert ops(g) == {"Conv": 1, "Relu": 1, "Tanh": 1}
    check_numerics(m, g, X8)


# -- fuse_conv_maxpool ------------------------------------------------------------------------
POOL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,9,8] x) => (float[N,6,%s] y) {
    c = Conv<pads = [1,1,1,1]>(x, W, B)
    r = Relu(c)
    y = MaxPool<%s>(r)
}
"""


def test_fuse_conv_maxpool():
    m = make(POOL % ("4,4", "kernel_shape = [2,2], strides = [2,2]"), {"W": w(6, 4, 3, 3),
                                                                      "B": w(6)})
    g, rep = optimize(m)
    assert [(n.domain, n.op_type) for n in g.nodes] == [("convrt", "FusedConvReluMaxPool")]
    assert rep["fuse_conv_maxpool"].stats == {"Conv+Relu+MaxPool fused": 1}
    x = {"x": RNG.standard_normal((2, 4, 9, 8)).astype(np.float32)}
    check_numerics(m, g, x)  # also: the export (Conv -> Relu -> MaxPool body) in onnxruntime
    g, _ = optimize(m, "all", disabled=["fuse_conv_maxpool"])
    assert ops(g) == {"FusedConvRelu": 1, "MaxPool": 1}


@pytest.mark.parametrize("attrs, out, window", [
    ("kernel_shape = [3,3], strides = [2,2], pads = [1,1,1,1]", "5,4",
     ([3, 3], [2, 2], [1, 1, 1, 1])),  # ResNet's stem
    ("kernel_shape = [3,3], strides = [2,2]", "4,3", ([3, 3], [2, 2], [0, 0, 0, 0])),
    ("kernel_shape = [2,2]", "8,7", ([2, 2], [1, 1], [0, 0, 0, 0])),
    ("kernel_shape = [2,2], strides = [2,2], pads = [1,0,1,1]", "5,4",
     ([2, 2], [2, 2], [1, 0, 1, 1])),
])
def test_fuse_conv_maxpool_other_windows(attrs, out, window):
    """Any explicit floor-mode window fuses, its attributes on the fused node (the exported
    body's MaxPool refers to them: check_numerics runs the export in onnxruntime)."""
    m = make(POOL % (out, attrs), {"W": w(6, 4, 3, 3), "B": w(6)})
    g, _ = optimize(m)
    assert ops(g) == {"FusedConvReluMaxPool": 1}, attrs
    a = g.nodes[0].attrs
    assert (a["pool_kernel_shape"], a["pool_strides"], a["pool_pads"]) == window
    check_numerics(m, g, {"x": RNG.standard_normal((3, 4, 9, 8)).astype(np.float32)})


def test_fuse_conv_maxpool_keeps_an_older_definition():
    """A graph that already defines the fused op without the window attributes (an optimized
    model an older convrt wrote) fuses only the 2x2/2 pools its definition describes."""
    from convrt.ir import Function, FunctionNode

    m = make(POOL % ("4,3", "kernel_shape = [3,3], strides = [2,2]"),
             {"W": w(6, 4, 3, 3), "B": w(6)})
    g = compiler.load(m.SerializeToString())
    old = Function("convrt", "FusedConvReluMaxPool", ("X", "W", "B"), ("Y",), (
        FunctionNode("Conv", ("X", "W", "B"), ("c",)), FunctionNode("Relu", ("c",), ("r",)),
        FunctionNode("MaxPool", ("r",), ("Y",), {"kernel_shape": [2, 2], "strides": [2, 2]})),
        {"": 13})
    g.functions[("convrt", "FusedConvReluMaxPool")] = old
    passes.optimize(g)
    assert ops(g) == {"FusedConvRelu": 1, "MaxPool": 1}


@pytest.mark.parametrize("attrs, out", [
    ("kernel_shape = [2,2], strides = [2,2], ceil_mode = 1", "5,4"),
    ("kernel_shape = [2,2], strides = [2,2], dilations = [2,2]", "4,3"),
    ("kernel_shape = [2,2], strides = [2,2], auto_pad = \"SAME_UPPER\"", "5,4"),
])
def test_fuse_conv_maxpool_negative_pools(attrs, out):
    m = make(POOL % (out, attrs), {"W": w(6, 4, 3, 3), "B": w(6)})
    g, _ = optimize(m)
    assert ops(g) == {"FusedConvRelu": 1, "MaxPool": 1}, attrs
    check_numerics(m, g, {"x": RNG.standard_normal((1, 4, 9, 8)).astype(np.float32)})


def test_fuse_conv_maxpool_negative_graphs():
    consts = {"W": w(6, 4, 3, 3), "B": w(6)}
    text = POOL % ("4,4", "kernel_shape = [2,2], strides = [2,2]")
    # the activation output is also a graph output
    m = make(text.replace("=> (float[N,6,4,4] y)", "=> (float[N,6,4,4] y, float[N,6,9,8] r)"),
             consts)
    assert ops(optimize(m)[0]) == {"FusedConvRelu": 1, "MaxPool": 1}
    # a second reader of the activation
    m = make(text.replace("y = MaxPool", "z = Sigmoid(r)\n    y = MaxPool").replace(
        "=> (float[N,6,4,4] y)", "=> (float[N,6,4,4] y, float[N,6,9,8] z)"), consts)
    assert ops(optimize(m)[0]) == {"FusedConvRelu": 1, "MaxPool": 1, "Sigmoid": 1}
    # the pool's Indices are used
    m = make(text.replace("y = MaxPool<", "y, i = MaxPool<").replace(
        "=> (float[N,6,4,4] y)", "=> (float[N,6,4,4] y, int64[N,6,4,4] i)"), consts)
    assert ops(optimize(m)[0]) == {"FusedConvRelu": 1, "MaxPool": 1}
    # another activation (not fused with the pool)
    m = make(text.replace("Relu(c)", "Sigmoid(c)"), consts)
    assert ops(optimize(m)[0]) == {"FusedConvSigmoid": 1, "MaxPool": 1}


def test_fused_conv_maxpool_too_small_is_a_clear_error():
    """A hand-written FusedConvReluMaxPool whose convolution output is 1x1 fails at load with
    convrt's own error naming the node, not inside a kernel."""
    from convrt.errors import ConvrtError
    from convrt.ops.fused import function_proto

    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 1, 1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = onnx.helper.make_node("FusedConvReluMaxPool", ["x", "W", "B"], ["y"], name="cp",
                                 domain="convrt")
    g = onnx.helper.make_graph([node], "g", [x], [y], [
        numpy_helper.from_array(w(3, 2, 1, 1), "W"), numpy_helper.from_array(w(3), "B")])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13),
                                                 onnx.helper.make_opsetid("convrt", 1)],
                               functions=[function_proto("FusedConvReluMaxPool", 13)])
    with pytest.raises(ConvrtError, match="cp.*smaller than the 2x2 pool window"):
        convrt.InferenceSession(m.SerializeToString())
    # a window whose padding is as large as its kernel: one line naming the node
    node.attribute.extend([onnx.helper.make_attribute("pool_kernel_shape", [2, 2]),
                           onnx.helper.make_attribute("pool_pads", [0, 2, 0, 0])])
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 4
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 4
    m.graph.node[0].CopyFrom(node)
    with pytest.raises(ConvrtError, match="cp.*pool_pads .* smaller than pool_kernel_shape"):
        convrt.InferenceSession(m.SerializeToString())


# -- fuse_conv_add_relu -----------------------------------------------------------------------
RES = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,8,8] x) => (float[N,4,8,8] y) {
    a = Conv<pads = [1,1,1,1]>(x, W1, B1)
    r = Relu(a)
    c = Conv<pads = [1,1,1,1]>(r, W2)
    s = %s
    y = Relu(s)
}
"""


@pytest.mark.parametrize("add", ["Add(c, x)", "Add(x, c)", "Sum(c, x)", "Sum(x, c)"])
def test_fuse_conv_add_relu(add):
    m = make(RES % add, {"W1": w(4, 4, 3, 3), "B1": w(4), "W2": w(4, 4, 3, 3)})
    g, rep = optimize(m)
    assert [n.op_type for n in g.nodes] == ["FusedConvRelu", "FusedConvAddRelu"]
    check_numerics(m, g, X8)


def test_fuse_conv_add_relu_negative():
    # broadcasting residual (per-channel constant) is not a residual: only the bias folds
    m = make(RES % "Add(c, k)", {"W1": w(4, 4, 3, 3), "B1": w(4), "W2": w(4, 4, 3, 3),
                                 "k": w(4, 1, 1)})
    g, _ = optimize(m)
    assert [n.op_type for n in g.nodes] == ["FusedConvRelu", "FusedConvRelu"]
    # the Add output is a graph output: the Relu cannot join, Conv + Add still fuse (writing s)
    text = (RES % "Add(c, x)").replace("=> (float[N,4,8,8] y)",
                                        "=> (float[N,4,8,8] y, float[N,4,8,8] s)")
    m = make(text, {"W1": w(4, 4, 3, 3), "B1": w(4), "W2": w(4, 4, 3, 3)})
    g, _ = optimize(m)
    assert ops(g) == {"FusedConvRelu": 1, "FusedConvAdd": 1, "Relu": 1}, ops(g)
    check_numerics(m, g, X8)
    # the conv output itself is a graph output: nothing fuses with the Add
    text = (RES % "Add(c, x)").replace("=> (float[N,4,8,8] y)",
                                        "=> (float[N,4,8,8] y, float[N,4,8,8] c)")
    m = make(text, {"W1": w(4, 4, 3, 3), "B1": w(4), "W2": w(4, 4, 3, 3)})
    g, _ = optimize(m)
    assert ops(g)["Add"] == 1 and "FusedConvAdd" not in ops(g), ops(g)
    check_numerics(m, g, X8)


def test_sum_of_three_is_not_a_residual():
    m = make(RES % "Sum(c, x, r)", {"W1": w(4, 4, 3, 3), "B1": w(4), "W2": w(4, 4, 3, 3)})
    g, _ = optimize(m)
    assert ops(g)["Sum"] == 1 and "FusedConvAddRelu" not in ops(g), ops(g)
    check_numerics(m, g, X8)


def test_fuse_conv_add_without_activation():
    """MobileNetV2's residual: Conv (linear bottleneck) + Add, no Relu after."""
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,4,8,8] x) => (float[N,4,8,8] y) {
        c = Conv<pads = [0,0,0,0]>(x, W, B)
        y = Add(x, c)
    }
    """
    m = make(text, {"W": w(4, 4, 1, 1), "B": w(4)})
    g, rep = optimize(m)
    assert ops(g) == {"FusedConvAdd": 1}, ops(g)
    assert rep["fuse_conv_add_relu"].stats == {"Conv+Add fused": 1}
    check_numerics(m, g, X8)


# -- fuse_gemm_activation ---------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    "g1 = Gemm<transB = 1, alpha = 0.5>(x, Wt, C)\n y = Relu(g1)",
    "g1 = Gemm(x, W)\n y = Relu(g1)",
    "g1 = MatMul(x, W)\n g2 = Add(g1, C)\n y = Relu(g2)",
    "g1 = MatMul(x, W)\n y = Relu(g1)"])
def test_fuse_gemm_activation(body):
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,5] x) => (float[N,6] y) {{
        {body}
    }}
    """
    m = make(text, {"W": w(5, 6), "Wt": w(6, 5), "C": w(6)})
    g, _ = optimize(m)
    assert [n.op_type for n in g.nodes] == ["FusedGemmRelu"]
    check_numerics(m, g, {"x": w(3, 5)})


def test_fuse_gemm_activation_negative():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N,5] x) => (float[N,6] y, float[N,6] g1) {
        g1 = Gemm(x, W)
        y = Relu(g1)
    }
    """
    g, _ = optimize(make(text, {"W": w(5, 6)}))
    assert ops(g) == {"Gemm": 1, "Relu": 1}


# -- whole models -----------------------------------------------------------------------------
def test_vgg16_bn_optimized_matches_onnxruntime():
    from builders import vgg

    m = vgg(16, batch_norm=True, image=32, num_classes=10, hidden=64)
    g, rep = optimize(m)
    left = ops(g)
    assert "BatchNormalization" not in left and "Dropout" not in left
    relu_after_conv = [n for n in g.nodes if n.op_type == "Relu" and n.inputs[0].producer
                       is not None and "Conv" in n.inputs[0].producer.op_type]
    assert not relu_after_conv and left["FusedGemmRelu"] == 2
    assert left["FusedConvRelu"] == 8 and left["FusedConvReluMaxPool"] == 5
    assert "MaxPool" not in left
    assert len(g.nodes) == 17 and len(m.graph.node) == 52
    check_numerics(m, g, {"input": RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)})


def test_optimized_output_reloads_unchanged():
    g, _ = optimize(onnx.load("sample_models/small_vgg.onnx"))
    data = convrt.from_graph(g).SerializeToString()
    g2 = compiler.load(data)
    assert [n.op_type for n in g2.nodes] == [n.op_type for n in g.nodes]
    assert not any(r.modified for r in passes.optimize(g2))


def test_cli_optimize_output_runs_in_onnxruntime(tmp_path, capsys):
    from convrt.cli import main

    out = tmp_path / "vgg_opt.onnx"
    assert main(["optimize", "sample_models/small_vgg.onnx", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "24 -> 8 nodes" in text and "wrote" in text
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert {f.name for f in m.functions} == {"FusedConvRelu", "FusedConvReluMaxPool",
                                             "FusedGemmRelu"}
    x = RNG.standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession("sample_models/small_vgg.onnx").run(None, {"input": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    mine = convrt.InferenceSession(str(out)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-5)
    assert main(["optimize", "sample_models/small_vgg.onnx", "-o", str(out),
                 "--disable", "nope"]) == 1
    assert "valid pass names" in capsys.readouterr().err


def test_resnet18_blocks_fuse():
    from builders import resnet18

    g, rep = optimize(resnet18(num_classes=10, image=32))
    assert ops(g)["FusedConvAddRelu"] == 8 and "BatchNormalization" not in ops(g)
    assert "Add" not in ops(g) and "Relu" not in ops(g)
    assert rep["fold_batchnorm"].stats["into Conv"] == 20


# -- fuse_silu and the hard activations (issue #21) -------------------------------------------
SILU = """
<ir_version: 8, opset_import: ["" : 14]>
g (float[N,4,8,8] x) => (float[N,4,8,8] y) {
    c = Conv<pads = [1,1,1,1], group = %d>(x, W, B)
    %s
}
"""
X8W = {"x": (RNG.standard_normal((2, 4, 8, 8)) * 4).astype(np.float32)}


@pytest.mark.parametrize("body,op", [
    ("s = Sigmoid(c)\n    y = Mul(c, s)", "FusedConvSilu"),
    ("s = Sigmoid(c)\n    y = Mul(s, c)", "FusedConvSilu"),
    ("y = HardSwish(c)", "FusedConvHardSwish"),
    ("y = HardSigmoid<alpha = 0.3, beta = 0.4>(c)", "FusedConvHardSigmoid"),
    ("y = HardSigmoid(c)", "FusedConvHardSigmoid")])
@pytest.mark.parametrize("group", [1, 4])
def test_fuse_conv_silu_and_hard_activations(body, op, group):
    m = make(SILU % (group, body), {"W": w(4, 4 // group, 3, 3), "B": w(4)})
    g, rep = optimize(m)
    assert [(n.domain, n.op_type) for n in g.nodes] == [("convrt", op)]
    assert ("convrt", op) in g.functions
    check_numerics(m, g, X8W)  # convrt vs ort on the original, and ort on the export


def test_standalone_silu_is_one_kernel():
    m = make("""
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,8,8] x) => (float[N,4,8,8] y, float[N,4,8,8] r) {
    r = Relu(x)
    s = Sigmoid(x)
    y = Mul(x, s)
}
""")
    g, rep = optimize(m)
    assert ops(g) == {"Relu": 1, "Silu": 1}
    assert rep["fuse_silu"].stats == {"SiLU": 1}
    check_numerics(m, g, X8W)  # onnxruntime's own sigmoid is an approximation (MLAS)
    x = X8W["x"].astype(np.float64)
    y = convrt.InferenceSession(m.SerializeToString()).run(["y"], X8W)[0]
    np.testing.assert_allclose(y, x / (1 + np.exp(-x)), rtol=5e-7, atol=0)


def test_fuse_silu_negative():
    base = {"W": w(4, 4, 3, 3), "B": w(4)}
    # Mul reads two different values: a gate, not a SiLU
    m = make("""
<ir_version: 8, opset_import: ["" : 13]>
g (float[N,4,8,8] x, float[N,4,8,8] z) => (float[N,4,8,8] y) {
    s = Sigmoid(z)
    y = Mul(x, s)
}
""")
    g, _ = optimize(m)
    assert ops(g) == {"Sigmoid": 1, "Mul": 1}
    # Mul(s, s): reads the Sigmoid's output twice
    m = make(SILU % (1, "s = Sigmoid(c)\n    y = Mul(s, s)"), base)
    assert ops(optimize(m)[0]) == {"FusedConvSigmoid": 1, "Mul": 1}
    # Sigmoid output read elsewhere: the Sigmoid must stay, no fusion
    text = (SILU % (1, "s = Sigmoid(c)\n    y = Mul(c, s)")).replace(
        "=> (float[N,4,8,8] y)", "=> (float[N,4,8,8] y, float[N,4,8,8] s)")
    g, _ = optimize(make(text, base))
    assert ops(g) == {"Conv": 1, "Sigmoid": 1, "Mul": 1}
    check_numerics(make(text, base), g, X8W)
    # conv output read by a third node: standalone SiLU, the Conv stays
    text = (SILU % (1, "s = Sigmoid(c)\n    y = Mul(c, s)\n    t = Relu(c)")).replace(
        "=> (float[N,4,8,8] y)", "=> (float[N,4,8,8] y, float[N,4,8,8] t)")
    g, _ = optimize(make(text, base))
    assert ops(g) == {"Conv": 1, "Silu": 1, "Relu": 1}
    check_numerics(make(text, base), g, X8W)
