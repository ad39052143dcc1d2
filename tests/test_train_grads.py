"""Every backward rule against float64 central finite differences.

``CASES`` holds at least one small model per op with a registered rule (the edge cases peers
get wrong: strides, asymmetric pads, dilations, groups, 1-D conv, Gemm transposes and C shapes,
broadcasting, legacy Softmax axes...).  ``test_every_rule_has_a_case`` fails when a rule is
registered without a case here.  The loss is ``sum(R * Y)`` with a fixed random ``R`` per output;
Dropout masks are reseeded identically for every evaluation.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import convrt
from convrt.train import Program, registered_grads, unbroadcast

F64 = TensorProto.DOUBLE


def model(nodes, inputs, outputs, inits=None, opset=13):
    """inputs: name -> shape (float64 feeds); inits: name -> array (constants)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, F64, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, F64, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def node(op, ins, outs=("Y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), **attrs)


def unary(op, shape=(2, 3, 4), opset=13, **attrs):
    return model([node(op, ["X"], **attrs)], {"X": shape}, ["Y"], opset=opset)


def conv(xs, ws, bias=True, **attrs):
    ins = ["X", "W"] + (["B"] if bias else [])
    shapes = {"X": xs, "W": ws}
    if bias:
        shapes["B"] = (ws[0],)
    return model([node("Conv", ins, **attrs)], shapes, ["Y"])


def binary(op, a, b):
    return model([node(op, ["A", "B"])], {"A": a, "B": b}, ["Y"])


def pool(op, xs=(2, 2, 6, 7), opset=13, **attrs):
    return model([node(op, ["X"], **attrs)], {"X": xs}, ["Y"], opset=opset)


def bn(xs, opset=15, momentum=0.9):
    c = xs[1]
    return model([node("BatchNormalization", ["X", "S", "B", "M", "V"], epsilon=1e-5,
                       momentum=momentum)],
                 {"X": xs, "S": (c,), "B": (c,)}, ["Y"],
                 {"M": np.linspace(-1, 1, c), "V": np.linspace(0.5, 2, c)}, opset=opset)


def gemm(a, b, c=None, **attrs):
    ins, shapes = ["A", "B"], {"A": a, "B": b}
    if c is not None:
        ins.append("C")
        shapes["C"] = c
    return model([node("Gemm", ins, **attrs)], shapes, ["Y"])


CASES = {
    "Conv": {
        "3x3_pad1": conv((2, 3, 5, 5), (4, 3, 3, 3), pads=[1, 1, 1, 1]),
        "stride2_asym_pads_dil2": conv((1, 2, 7, 8), (3, 2, 3, 2), strides=[2, 2],
                                       pads=[1, 0, 2, 1], dilations=[2, 1]),
        "group2_nobias": conv((2, 4, 5, 5), (6, 2, 3, 3), bias=False, group=2,
                              pads=[1, 1, 1, 1]),
        "depthwise_stride2": conv((1, 3, 6, 6), (3, 1, 3, 3), group=3, strides=[2, 2]),
        "same_upper_even_kernel": conv((1, 2, 5, 5), (2, 2, 2, 2), auto_pad="SAME_UPPER"),
        "conv1d": conv((2, 2, 9), (3, 2, 3), strides=[2], pads=[1, 2]),
        # unit stride, one group: dX by the forward kernels (grads/conv.py _dx_by_forward_conv)
        "1x1_unit": conv((2, 5, 4, 6), (7, 5, 1, 1)),
        "5x5_asym_pads": conv((1, 3, 7, 6), (4, 3, 5, 5), pads=[0, 1, 2, 3]),
        "deep_3x3": conv((2, 24, 6, 7), (20, 24, 3, 3), pads=[1, 1, 1, 1]),
        "3x3_pad3_beyond_kernel": conv((1, 2, 4, 4), (3, 2, 3, 3), pads=[3, 0, 3, 1]),
    },
    "Gemm": {
        "plain": gemm((3, 4), (4, 5)),
        "transB_bias_vector": gemm((3, 4), (5, 4), (5,), transB=1),
        "transA_alpha_beta_C_full": gemm((4, 3), (4, 5), (3, 5), transA=1, alpha=0.5,
                                         beta=2.0),
        "both_trans_C_scalar": gemm((4, 3), (5, 4), (1,), transA=1, transB=1),
    },
    "MatMul": {
        "2d": binary("MatMul", (3, 4), (4, 2)),
        "batched_bcast": binary("MatMul", (2, 3, 4), (4, 5)),
        "bcast_batch1": binary("MatMul", (1, 3, 4), (2, 4, 2)),
        "vec_mat": binary("MatMul", (4,), (2, 4, 3)),
        "mat_vec": binary("MatMul", (3, 4), (4,)),
    },
    "Relu": {"relu": unary("Relu")},
    "LeakyRelu": {"alpha0.2": unary("LeakyRelu", alpha=0.2)},
    "Sigmoid": {"sigmoid": unary("Sigmoid")},
    "Tanh": {"tanh": unary("Tanh")},
    "Clip": {
        "inputs_opset13": model([node("Clip", ["X", "lo", "hi"])], {"X": (3, 4)}, ["Y"],
                                {"lo": np.array(-0.5), "hi": np.array(0.7)}),
        "attrs_opset10": unary("Clip", (3, 4), opset=10, min=-0.5, max=0.7),
    },
    "Softmax": {
        "axis_last": unary("Softmax", (2, 3, 4)),
        "axis1": unary("Softmax", (2, 3, 4), axis=1),
        "legacy_opset11_axis1": unary("Softmax", (2, 3, 4), opset=11, axis=1),
    },
    "LogSoftmax": {
        "axis_last": unary("LogSoftmax", (2, 3, 4)),
        "axis1": unary("LogSoftmax", (2, 3, 4), axis=1),
        "legacy_opset11_axis1": unary("LogSoftmax", (2, 3, 4), opset=11, axis=1),
    },
    "MaxPool": {
        "2x2_s2": pool("MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        "3x3_s2_pad1": pool("MaxPool", kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1]),
        "ceil_dil": pool("MaxPool", kernel_shape=[2, 2], strides=[2, 2], dilations=[1, 2],
                         ceil_mode=1),
    },
    "AveragePool": {
        "2x2_s2": pool("AveragePool", kernel_shape=[2, 2], strides=[2, 2]),
        "pads_exclude": pool("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                             pads=[1, 0, 1, 2]),
        "pads_include_ceil": pool("AveragePool", kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1], count_include_pad=1, ceil_mode=1),
    },
    "GlobalAveragePool": {"gap": pool("GlobalAveragePool")},
    "BatchNormalization": {
        "nchw_opset15": bn((4, 3, 2, 3)),
        "nc_opset9": bn((5, 3), opset=9),
    },
    "Dropout": {
        "ratio_input": model([node("Dropout", ["X", "r"])], {"X": (4, 6)}, ["Y"],
                             {"r": np.array(0.3)}),
        "attr_opset10_mask": model([node("Dropout", ["X"], ["Y", "mask"], ratio=0.4)],
                                   {"X": (4, 6)}, ["Y"], opset=10),
    },
    "Add": {"bcast": binary("Add", (2, 3, 4), (3, 1)), "same": binary("Add", (3, 4), (3, 4))},
    "Sub": {"bcast": binary("Sub", (3, 1), (2, 3, 4))},
    "Mul": {"bcast": binary("Mul", (2, 3, 4), (4,)), "scalar": binary("Mul", (3, 4), ())},
    "Div": {"bcast": binary("Div", (2, 3, 4), (1, 3, 1))},
    "Identity": {"identity": unary("Identity")},
    "Flatten": {"axis2": unary("Flatten", (2, 3, 4, 2), axis=2)},
    "Reshape": {
        "zero_minus1": model([node("Reshape", ["X", "s"])], {"X": (2, 3, 4)}, ["Y"],
                             {"s": np.array([0, -1, 2], np.int64)}),
    },
    "Squeeze": {
        "axes_input": model([node("Squeeze", ["X", "a"])], {"X": (2, 1, 4)}, ["Y"],
                            {"a": np.array([1], np.int64)}),
    },
    "Unsqueeze": {
        "axes_input": model([node("Unsqueeze", ["X", "a"])], {"X": (2, 4)}, ["Y"],
                            {"a": np.array([0, 3], np.int64)}),
    },
    "Concat": {
        "axis1": model([node("Concat", ["A", "B", "C"], axis=1)],
                       {"A": (2, 1, 3), "B": (2, 4, 3), "C": (2, 2, 3)}, ["Y"]),
        "axis_neg": model([node("Concat", ["A", "B"], axis=-1)], {"A": (2, 3), "B": (2, 1)},
                          ["Y"]),
    },
}

# Ops with a kink at 0: keep inputs away from it so finite differences stay on one side.
KINKED = {"Relu", "LeakyRelu", "Clip"}
PARAMS = [(op, name) for op, cases in sorted(CASES.items()) for name in cases]


def test_every_rule_has_a_case():
    from test_train_grads_modern import CASES as MODERN  # ConvNeXt / YOLOv8 (issue #21)
    from test_train_grads_more import CASES as MORE  # the rules added for issue #23

    missing = sorted(set(registered_grads()) - set(CASES) - set(MORE) - set(MODERN))
    assert not missing, f"backward rules without a finite-difference case: {missing}"


def _feeds(graph, rng, op):
    feeds = {}
    for v in graph.runtime_inputs():
        a = rng.standard_normal(v.shape)
        if op in KINKED:
            a = np.where(np.abs(a) < 0.1, a + np.sign(a + 1e-12) * 0.2, a)
            if op == "Clip":
                a = np.where(np.abs(np.abs(a - 0.1) - 0.6) < 0.05, a + 0.13, a)
        if op == "Div" and v.name == "B":
            a = np.sign(a) * (np.abs(a) + 0.5)
        feeds[v.name] = np.asarray(a, np.float64)
    return feeds


def check_against_finite_differences(graph, feeds: dict, rng) -> int:
    """Every input's gradient (of sum(r * y) for a random r) against float64 central differences
    at up to 12 random elements each; returns how many elements were checked."""
    wrt = list(feeds)
    prog = Program(graph, wrt)
    out = graph.outputs[0].name

    def run(f):
        return prog.forward(f, {}, training=True, rng=np.random.default_rng(7)).env[out]

    y = run(feeds)
    r = rng.standard_normal(y.shape)
    tape = prog.forward(feeds, {}, training=True, rng=np.random.default_rng(7))
    grads = prog.backward(tape, {out: r})
    eps = 1e-6
    checked = 0
    for name in wrt:
        g = grads[name]
        assert g.shape == feeds[name].shape and g.dtype == np.float64
        flat = feeds[name].reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, 12), replace=False)
        for i in idx:
            plus, minus = {k: v.copy() for k, v in feeds.items()}, {k: v.copy()
                                                                    for k, v in feeds.items()}
            plus[name].reshape(-1)[i] += eps
            minus[name].reshape(-1)[i] -= eps
            fd = (np.sum(r * run(plus)) - np.sum(r * run(minus))) / (2 * eps)
            an = g.reshape(-1)[i]
            assert abs(fd - an) <= 1e-6 + 1e-5 * abs(fd), (name, int(i), fd, an)
            checked += 1
    return checked


@pytest.mark.parametrize("op,case", PARAMS, ids=[f"{o}-{c}" for o, c in PARAMS])
def test_backward_matches_finite_differences(op, case):
    graph = convrt.load(CASES[op][case])
    rng = np.random.default_rng(0)
    assert check_against_finite_differences(graph, _feeds(graph, rng, op), rng) > 0


def test_unbroadcast_sums_leading_and_unit_dims():
    g = np.ones((2, 3, 4))
    assert unbroadcast(g, (3, 1)).tolist() == [[8.0]] * 3
    assert unbroadcast(g, ()).item() == 24.0
    assert unbroadcast(g, (1, 3, 4)).shape == (1, 3, 4)

