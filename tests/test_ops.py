"""Every core op over its edge cases, against onnx.reference.ReferenceEvaluator."""

import numpy as np
import pytest
from oracle import check_op

rng = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# -- Conv ------------------------------------------------------------------------------------
CONV_CASES = {
    "3x3": dict(x=(1, 3, 9, 9), w=(8, 3, 3, 3), attrs={}),
    "pads": dict(x=(2, 4, 8, 8), w=(16, 4, 3, 3), attrs={"pads": [1, 1, 1, 1]}),
    "asym_pads": dict(x=(1, 3, 7, 9), w=(5, 3, 3, 3), attrs={"pads": [0, 2, 1, 0]}),
    "stride2": dict(x=(1, 4, 10, 10), w=(8, 4, 3, 3), attrs={"strides": [2, 2],
                                                             "pads": [1, 1, 1, 1]}),
    "dilation2": dict(x=(1, 2, 11, 11), w=(4, 2, 3, 3), attrs={"dilations": [2, 2]}),
    "group2": dict(x=(1, 4, 6, 6), w=(6, 2, 3, 3), attrs={"group": 2, "pads": [1, 1, 1, 1]}),
    "depthwise": dict(x=(2, 8, 7, 7), w=(8, 1, 3, 3), attrs={"group": 8, "pads": [1, 1, 1, 1]}),
    "even_kernel": dict(x=(1, 3, 8, 8), w=(4, 3, 2, 2), attrs={}),
    "1x1": dict(x=(1, 16, 5, 5), w=(32, 16, 1, 1), attrs={}),
    "same_upper": dict(x=(1, 3, 7, 7), w=(4, 3, 4, 4), attrs={"auto_pad": "SAME_UPPER",
                                                              "strides": [2, 2]}),
    "same_lower": dict(x=(1, 3, 7, 7), w=(4, 3, 4, 4), attrs={"auto_pad": "SAME_LOWER",
                                                              "strides": [2, 2]}),
    "valid": dict(x=(1, 3, 7, 7), w=(4, 3, 3, 3), attrs={"auto_pad": "VALID"}),
    "stem7x7s2": dict(x=(1, 3, 32, 32), w=(16, 3, 7, 7), attrs={"strides": [2, 2],
                                                                "pads": [3, 3, 3, 3]}),
    "1d": dict(x=(2, 3, 11), w=(5, 3, 3), attrs={"pads": [1, 2], "strides": [2]}),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case, bias):
    c = CONV_CASES[case]
    w = randn(*c["w"])
    inputs = {"x": randn(*c["x"]), "w": w, "b": randn(c["w"][0]) if bias else None}
    check_op("Conv", inputs, c["attrs"], const=("w", "b"))


def test_conv_float64():
    inputs = {"x": randn(1, 3, 6, 6, dtype=np.float64), "w": randn(4, 3, 3, 3, dtype=np.float64),
              "b": randn(4, dtype=np.float64)}
    check_op("Conv", inputs, {"pads": [1, 1, 1, 1]}, const=("w", "b"), rtol=1e-10, atol=1e-12)


def test_conv_runtime_weights():
    """Weights fed at run time (not initializers) still work."""
    check_op("Conv", {"x": randn(1, 3, 6, 6), "w": randn(4, 3, 3, 3)}, {})


# -- pooling ---------------------------------------------------------------------------------
POOL_CASES = {
    "k2s2": dict(x=(1, 3, 8, 8), attrs={"kernel_shape": [2, 2], "strides": [2, 2]}),
    "k2s2_pads_odd": dict(x=(1, 2, 9, 11), attrs={"kernel_shape": [2, 2], "strides": [2, 2],
                                                  "pads": [1, 1, 0, 1]}),
    "k3s1p1": dict(x=(2, 2, 7, 7), attrs={"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "asym_pads": dict(x=(1, 2, 7, 6), attrs={"kernel_shape": [3, 3], "pads": [0, 1, 2, 0],
                                             "strides": [2, 1]}),
    "ceil": dict(x=(1, 2, 7, 7), attrs={"kernel_shape": [2, 2], "strides": [2, 2],
                                        "ceil_mode": 1}),
    "ceil_last_window_in_pad": dict(x=(1, 1, 6, 6), attrs={
        "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "same_upper": dict(x=(1, 2, 7, 7), attrs={"kernel_shape": [3, 3], "strides": [2, 2],
                                              "auto_pad": "SAME_UPPER"}),
    "same_lower": dict(x=(1, 2, 6, 6), attrs={"kernel_shape": [2, 2], "strides": [1, 1],
                                              "auto_pad": "SAME_LOWER"}),
    "valid": dict(x=(1, 2, 7, 7), attrs={"kernel_shape": [3, 3], "auto_pad": "VALID"}),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_maxpool(case):
    c = POOL_CASES[case]
    check_op("MaxPool", {"x": randn(*c["x"])}, c["attrs"])


def test_maxpool_dilation():
    check_op("MaxPool", {"x": randn(1, 2, 9, 9)}, {"kernel_shape": [3, 3], "dilations": [2, 2]})


@pytest.mark.parametrize("cip", [0, 1])
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_averagepool(case, cip):
    c = POOL_CASES[case]
    attrs = dict(c["attrs"], count_include_pad=cip)
    check_op("AveragePool", {"x": randn(*c["x"])}, attrs)


@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (2, 5, 7, 9), (1, 3, 56, 56), (1, 2, 1, 16)])
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op, shape):
    """Maps shorter and longer than the average's 16 partial sums, with and without a tail."""
    check_op(op, {"x": randn(*shape)})


def test_maxpool_nan_propagates():
    """A NaN in a window gives NaN (numpy's np.max and PyTorch agree; the reference evaluator
    skips NaNs and onnxruntime depends on the NaN's position, so numpy is the oracle here)."""
    from oracle import node_model

    import convrt
    x = randn(1, 1, 4, 6)
    x[0, 0, 1, 1] = np.nan  # second column of its window
    x[0, 0, 2, 4] = np.nan  # first column of its window
    model = node_model("MaxPool", {"x": x}, {"kernel_shape": [2, 2], "strides": [2, 2]})
    got = convrt.InferenceSession(model).run(None, {"x": x})[0]
    want = x.reshape(1, 1, 2, 2, 3, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[0, 0, 0, 0]) and np.isnan(got[0, 0, 1, 2])


# -- BatchNormalization ----------------------------------------------------------------------
@pytest.mark.parametrize("opset", [9, 14, 15])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3)])
def test_batchnorm(shape, opset):
    """The reference evaluator runs BN-9 in training mode whenever momentum is set (its bug:
    the spec's one-output form is inference), so opset 9 is checked by onnxruntime."""
    c = shape[1]
    inputs = {"x": randn(*shape), "s": randn(c), "b": randn(c), "m": randn(c),
              "v": rng.uniform(0.5, 2, c).astype(np.float32)}
    check_op("BatchNormalization", inputs, {"epsilon": 1e-3}, opset=opset,
             const=("s", "b", "m", "v"), oracle="onnxruntime" if opset < 14 else "reference")


# -- Gemm / MatMul ---------------------------------------------------------------------------
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (7,), (1, 7), (3, 7), (3, 1), ()])
def test_gemm(ta, tb, c_shape):
    a = randn(*((5, 3) if ta else (3, 5)))
    b = randn(*((7, 5) if tb else (5, 7)))
    c = None if c_shape is None else randn(*c_shape)
    check_op("Gemm", {"a": a, "b": b, "c": c},
             {"transA": ta, "transB": tb, "alpha": 0.5, "beta": 2.0}, const=("b", "c"))


def test_gemm_runtime_b():
    check_op("Gemm", {"a": randn(2, 4), "b": randn(4, 3)}, {})


@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("c_shape", [(7,), (1, 7), (3, 7), (3, 1), (1, 1), ()])
def test_gemm_fed_c(tb, c_shape):
    """C fed at run time (the kernels take it as a flat array and strides each run)."""
    check_op("Gemm", {"a": randn(3, 5), "b": randn(*((7, 5) if tb else (5, 7))),
                      "c": randn(*c_shape)}, {"transB": tb, "beta": 0.5}, const=("b",))


def test_gemm_kernels_compile_once_for_every_bias_shape_and_batch():
    """Gemm's C reaches the kernels as (flat array, strides): a bias broadcast over batch 1 and
    over batch 4, a full C, no C and read-only feeds all share one compiled variant (the
    broadcast views they replace typed 'C' at one row, 'A' at more, and read-only apart)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import convrt
    from convrt.kernels import gemm

    def session(tb, c):
        inits = [numpy_helper.from_array(randn(*((7, 5) if tb else (5, 7))), "b")]
        if c is not None:
            inits.append(numpy_helper.from_array(c, "c"))
        node = helper.make_node("Gemm", ["a", "b"] + (["c"] if c is not None else []), ["y"],
                                transB=tb)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
            "a", TensorProto.FLOAT, ["n", 5])], [helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, ["n", 7])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        return convrt.InferenceSession(model.SerializeToString())

    def variants():
        return len(gemm.gemm_nt.signatures) + len(gemm.gemm_packed.signatures)

    def run_all(tb):
        for c in (randn(7), None, randn(1, 7)):
            s = session(tb, c)
            for n in (1, 4):
                a = randn(n, 5)
                a.setflags(write=False)
                s.run(None, {"a": a})

    for tb in (0, 1):
        session(tb, randn(7)).run(None, {"a": randn(2, 5)})
    before = variants()
    run_all(0)
    run_all(1)
    assert variants() == before


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)),
                                   ((3, 4), (4,)), ((2, 1, 3, 4), (5, 4, 2))])
@pytest.mark.parametrize("const_b", [True, False])
def test_matmul(sa, sb, const_b):
    check_op("MatMul", {"a": randn(*sa), "b": randn(*sb)}, const=("b",) if const_b else ())


# -- elementwise -----------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("sa,sb", [((2, 3, 4, 4), (2, 3, 4, 4)), ((2, 3, 4, 4), (1, 3, 1, 1)),
                                   ((2, 3, 4, 4), (4,)), ((3, 1), (1, 5)), ((), (2, 2))])
def test_binary(op, sa, sb):
    b = randn(*sb)
    if op == "Div":
        b = np.where(np.abs(b) < 0.1, 1.0, b).astype(np.float32)
    check_op(op, {"a": randn(*sa), "b": b})


def test_binary_int_div_truncates():
    a = np.array([7, -7, 9, -9], np.int64)
    b = np.array([2, 2, -4, -4], np.int64)
    check_op("Div", {"a": a, "b": b})


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}),
                                      ("Sigmoid", {}), ("Tanh", {})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unary(op, attrs, dtype):
    x = randn(2, 3, 5, dtype=dtype) * 4
    x.flat[0], x.flat[1] = np.nan, np.inf
    check_op(op, {"x": x}, attrs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("form", ["attr6", "inputs", "min_only", "max_only", "none"])
def test_clip(form):
    x = randn(3, 4) * 3
    if form == "attr6":
        check_op("Clip", {"x": x}, {"min": -0.5, "max": 0.5}, opset=6)
        return
    lo = np.array(-0.5, np.float32) if form in ("inputs", "min_only") else None
    hi = np.array(6.0 if form != "max_only" else 0.2, np.float32) if form in (
        "inputs", "max_only") else None
    check_op("Clip", {"x": x, "lo": lo, "hi": hi}, const=("lo", "hi"))


# -- Softmax / LogSoftmax --------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, 2])
def test_softmax(op, opset, axis):
    """Opset < 13 flattens from `axis` on; the reference evaluator applies the opset-13 rule to
    every version, so onnxruntime is the oracle there."""
    attrs = {} if axis is None else {"axis": axis}
    check_op(op, {"x": randn(2, 3, 4) * 3}, attrs, opset=opset, rtol=1e-5, atol=1e-6,
             oracle="onnxruntime" if opset < 13 else "reference")


# -- shape ops -------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1, 4])
def test_flatten(axis):
    check_op("Flatten", {"x": randn(2, 3, 4, 5)}, {"axis": axis})


@pytest.mark.parametrize("shape,allowzero", [([0, -1], 0), ([-1], 0), ([2, 0, 5, 4], 0),
                                              ([6, 20], 0), ([2, 3, 0, 20], 1), ([4, 5, 6], 1)])
def test_reshape(shape, allowzero):
    x = randn(2, 3, 4, 5)
    if allowzero and 0 in shape:
        x = randn(2, 3, 0, 20)
    check_op("Reshape", {"x": x, "s": np.array(shape, np.int64)}, {"allowzero": allowzero},
             const=("s",))


@pytest.mark.parametrize("opset", [7, 12, 13])
def test_dropout_inference(opset):
    inputs = {"x": randn(3, 4)}
    if opset >= 12:
        inputs["ratio"] = np.array(0.3, np.float32)
    got = check_op("Dropout", inputs, {} if opset >= 12 else {"ratio": 0.3}, opset=opset,
                   const=("ratio",))
    np.testing.assert_array_equal(got[0], inputs["x"])


def test_dropout_mask_output():
    check_op("Dropout", {"x": randn(3, 4)}, n_outputs=2)


def test_identity():
    check_op("Identity", {"x": randn(2, 2)})


@pytest.mark.parametrize("attr,value", [("value", np.arange(6, dtype=np.float32).reshape(2, 3)),
                                        ("value_float", 2.5), ("value_floats", [1.0, 2.0]),
                                        ("value_int", 7), ("value_ints", [1, 2, 3])])
def test_constant(attr, value):
    from onnx import numpy_helper
    v = numpy_helper.from_array(value) if isinstance(value, np.ndarray) else value
    check_op("Constant", {}, {attr: v})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for s in shapes[1:]:
        s[axis] += 1
    check_op("Concat", {f"x{i}": randn(*s) for i, s in enumerate(shapes)}, {"axis": axis})


@pytest.mark.parametrize("attrs,opset", [({}, 13), ({"start": 1}, 15), ({"start": -2, "end": -1},
                                                                         15), ({"end": 10}, 15)])
def test_shape(attrs, opset):
    check_op("Shape", {"x": randn(2, 3, 4)}, attrs, opset=opset)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("idx", [[0, 2], [[1], [-1]], 1])
def test_gather(axis, idx):
    check_op("Gather", {"x": randn(3, 4, 5), "i": np.array(idx, np.int64)}, {"axis": axis})


def test_gather_const_indices():
    check_op("Gather", {"x": randn(3, 4), "i": np.array([2, 0], np.int64)}, {}, const=("i",))


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [[0], [1, -1], [0, 3]])
def test_unsqueeze(opset, axes):
    x = randn(3, 4)
    if opset >= 13:
        check_op("Unsqueeze", {"x": x, "a": np.array(axes, np.int64)}, opset=opset, const=("a",))
    else:
        check_op("Unsqueeze", {"x": x}, {"axes": axes}, opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axes", [None, [0], [0, -1]])
def test_squeeze(opset, axes):
    x = randn(1, 3, 1)
    if opset >= 13:
        a = None if axes is None else np.array(axes, np.int64)
        check_op("Squeeze", {"x": x, "a": a}, opset=opset, const=("a",))
    else:
        check_op("Squeeze", {"x": x}, {} if axes is None else {"axes": axes}, opset=opset)


@pytest.mark.parametrize("src,to", [(np.float32, 7), (np.float32, 11), (np.int64, 1),
                                    (np.float64, 1), (np.int32, 9), (np.float32, 6)])
def test_cast(src, to):
    x = (randn(3, 4) * 10).astype(src)
    check_op("Cast", {"x": x}, {"to": to})


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("axes,keep", [(None, 1), ([1], 1), ([2, 3], 0), ([-1], 0)])
def test_reduce_mean(opset, axes, keep):
    x = randn(2, 3, 4, 5)
    if opset >= 18:
        a = None if axes is None else np.array(axes, np.int64)
        check_op("ReduceMean", {"x": x, "a": a}, {"keepdims": keep}, opset=opset, const=("a",))
    else:
        attrs = {"keepdims": keep} if axes is None else {"keepdims": keep, "axes": axes}
        check_op("ReduceMean", {"x": x}, attrs, opset=opset)


def test_pad_with_symbolic_batch():
    """Regression (found by the fuzzer): Pad's load-time inference on a symbolic batch dim."""
    import onnx.parser
    from oracle import assert_close, run_both

    m = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 18]>
    g (float[N,2,3,3] x) => (float[N,2,5,5] y) {
        p = Constant<value = int64[8] {0,0,1,1,0,0,1,1}>()
        y = Pad<mode = "reflect">(x, p)
    }""")
    got, ref = run_both(m, {"x": randn(3, 2, 3, 3)})
    assert_close(got, ref)


def test_opset_newer_than_onnx_is_refused():
    import onnx
    from oracle import node_model

    import convrt
    m = node_model("Relu", {"x": randn(2)}, opset=onnx.defs.onnx_opset_version() + 1)
    with pytest.raises(convrt.UnsupportedOpError, match="newer"):
        convrt.load(m)
