"""Backward rules added for fine-tuning exported CNNs (issue #23), each against float64 central
finite differences exactly as ``test_train_grads.py`` checks the others (its model helpers, its
tolerance).  ``CASES`` here counts for that file's ``test_every_rule_has_a_case``.

Ops with kinks (HardSigmoid/HardSwish at their clamp points, PRelu/Elu/Selu at 0, Max/Min where
inputs cross, GlobalMaxPool where two cells tie) get inputs kept away from the kinks, so the
differences stay on one side; Sqrt, Log and Pow's base get positive inputs.  ConvTranspose is
checked with strides, output_padding, groups, dilations, asymmetric pads, output_shape with
SAME_UPPER and 1-D; LRN with odd and even window sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_train_grads import binary, check_against_finite_differences, model, node, pool, unary

import convrt


def _nary(op, *shapes):
    names = [f"I{i}" for i in range(len(shapes))]
    return model([node(op, names)], dict(zip(names, shapes)), ["Y"])


def _slice10(xs, starts, ends, axes=None, steps=None, opset=13):
    inits = {"s": np.array(starts, np.int64), "e": np.array(ends, np.int64)}
    ins = ["X", "s", "e"]
    if axes is not None:
        inits["a"] = np.array(axes, np.int64)
        ins.append("a")
    if steps is not None:
        inits["t"] = np.array(steps, np.int64)
        ins.append("t")
    return model([node("Slice", ins)], {"X": xs}, ["Y"], inits, opset=opset)


def _pad(xs, pads, value=0.0, axes=None, opset=13):
    inits = {"p": np.array(pads, np.int64), "v": np.array(value)}
    ins = ["X", "p", "v"]
    if axes is not None:
        inits["a"] = np.array(axes, np.int64)
        ins.append("a")
    return model([node("Pad", ins, mode="constant")], {"X": xs}, ["Y"], inits, opset=opset)


def _reduce_mean18(xs, axes, keepdims=1):
    return model([node("ReduceMean", ["X", "a"], keepdims=keepdims)], {"X": xs}, ["Y"],
                 {"a": np.array(axes, np.int64)}, opset=18)


CASES = {
    "ReduceMean": {
        "axes_attr_keepdims": unary("ReduceMean", (2, 3, 4, 5), axes=[2, 3]),
        "axes_attr_drop_neg": unary("ReduceMean", (2, 3, 4), axes=[-1, 0], keepdims=0),
        "all_axes": unary("ReduceMean", (2, 3, 4), keepdims=0),
        "axes_input_opset18": _reduce_mean18((2, 3, 4, 5), [2, 3], keepdims=0),
    },
    "HardSigmoid": {
        "default": unary("HardSigmoid", (3, 4, 5)),
        "alpha_beta": unary("HardSigmoid", (3, 4, 5), alpha=1 / 6, beta=0.5),
    },
    "HardSwish": {"hardswish": unary("HardSwish", (3, 4, 5), opset=14)},
    "Pad": {
        "opset13_value": _pad((2, 3, 4), [0, 1, 2, 0, 2, 1], value=0.5),
        "negative_crop": _pad((2, 3, 5), [0, -1, 1, 0, 1, -2]),
        "opset18_axes": _pad((2, 3, 4, 4), [1, 2, 0, 1], axes=[2, -1], opset=18),
        "attrs_opset10": model([node("Pad", ["X"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=1.0)],
                              {"X": (1, 2, 3, 3)}, ["Y"], opset=10),
    },
    "Transpose": {
        "perm": unary("Transpose", (2, 3, 4), perm=[1, 2, 0]),
        "default_reverse": unary("Transpose", (2, 3, 4)),
    },
    "Slice": {
        "axes_steps": _slice10((4, 5, 6), [1, 0], [4, 6], axes=[0, 2], steps=[2, 3]),
        "negative_step_clamped": _slice10((3, 7), [-1, 100], [-100, 1], steps=[-1, -2]),
        "no_axes": _slice10((4, 5), [1, 1], [3, -1]),
        "attrs_opset1": unary("Slice", (3, 6), opset=1, starts=[1], ends=[5], axes=[1]),
    },
    "PRelu": {
        "per_channel": binary("PRelu", (2, 3, 4, 4), (3, 1, 1)),
        "scalar_slope": binary("PRelu", (3, 5), (1,)),
    },
    "Elu": {"alpha0.7": unary("Elu", alpha=0.7)},
    "Selu": {"default": unary("Selu")},
    "GlobalMaxPool": {"gmp": pool("GlobalMaxPool", (2, 3, 4, 5))},
    "Pow": {
        "bcast_exponent": binary("Pow", (2, 3, 4), (4,)),
        "scalar_exponent": binary("Pow", (3, 4), ()),
    },
    "Sqrt": {"sqrt": unary("Sqrt")},
    "Exp": {"exp": unary("Exp")},
    "Log": {"log": unary("Log")},
    "Max": {"three_bcast": _nary("Max", (2, 3, 4), (3, 1), (4,)), "one": _nary("Max", (3, 4))},
    "Min": {"two_bcast": _nary("Min", (2, 3, 4), (1, 4))},
    "Sum": {"three_bcast": _nary("Sum", (2, 3, 4), (3, 1), ())},
    "Mean": {"two_bcast": _nary("Mean", (2, 3, 4), (2, 1, 4))},
}


def _convt(xs, ws, bias=True, **attrs):
    ins = ["X", "W"] + (["B"] if bias else [])
    shapes = {"X": xs, "W": ws}
    if bias:
        shapes["B"] = (ws[1] * attrs.get("group", 1),)
    return model([node("ConvTranspose", ins, **attrs)], shapes, ["Y"])


CASES["ConvTranspose"] = {
    "3x3_s2_pad1_outpad1": _convt((2, 3, 4, 5), (3, 4, 3, 3), strides=[2, 2],
                                  pads=[1, 1, 1, 1], output_padding=[1, 1]),
    "group2_dil2_asym_nobias": _convt((1, 4, 3, 4), (4, 3, 2, 3), bias=False, group=2,
                                      dilations=[2, 1], pads=[0, 1, 1, 0]),
    "output_shape_same_upper": _convt((1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2],
                                      output_shape=[6, 6], auto_pad="SAME_UPPER"),
    "conv1d_stride3": _convt((2, 2, 5), (2, 3, 4), strides=[3], pads=[1, 2]),
}
CASES["LRN"] = {
    "size5_alexnet": unary("LRN", (2, 7, 3, 3), size=5, alpha=0.5, beta=0.75, bias=2.0),
    "size2_even": unary("LRN", (1, 4, 5), size=2, alpha=1.0, beta=0.6, bias=1.0),
    "size3_default_alpha": unary("LRN", (2, 3, 2, 2), size=3),
}
PARAMS = [(op, name) for op, cases in sorted(CASES.items()) for name in cases]

POSITIVE = {"Sqrt", "Log"}
KINK_AT_ZERO = {"PRelu", "Elu", "Selu"}


def _away(a, kinks, margin=0.15):
    """Move every value at least ``margin`` away from each kink."""
    for k in kinks:
        d = a - k
        a = np.where(np.abs(d) < margin, k + np.where(d >= 0, 1, -1) * (margin + np.abs(d)), a)
    return a


def _feeds(graph, rng, op):
    feeds = {}
    for v in graph.runtime_inputs():
        a = rng.standard_normal(v.shape)
        if op in POSITIVE or (op == "Pow" and v.name == "A"):
            a = np.abs(a) + 0.5
        elif op == "HardSigmoid":
            a = _away(a * 4, [-2.5, 2.5, -3.0, 3.0])  # both cases' clamp points
        elif op == "HardSwish":
            a = _away(a * 4, [-3.0, 3.0])
        elif op in KINK_AT_ZERO and v.name != "B":
            a = _away(a, [0.0])
        elif op in ("Max", "Min"):
            a = a * 3 + 0.37 * len(feeds)  # different offsets per input: no near-ties
        elif op == "GlobalMaxPool":  # a clear maximum per plane
            a = np.round(a * 8) + rng.random(v.shape) * 0.01
        feeds[v.name] = np.asarray(a, np.float64)
    if op in ("Max", "Min"):  # keep every pair of broadcast inputs apart by > 1e-3
        arrs = np.broadcast_arrays(*feeds.values())
        for i in range(len(arrs)):
            for j in range(i):
                assert np.min(np.abs(arrs[i] - arrs[j])) > 1e-3
    return feeds


@pytest.mark.parametrize("op,case", PARAMS, ids=[f"{o}-{c}" for o, c in PARAMS])
def test_backward_matches_finite_differences(op, case):
    graph = convrt.load(CASES[op][case])
    rng = np.random.default_rng(0)
    assert check_against_finite_differences(graph, _feeds(graph, rng, op), rng) > 0


def reference_max_pool_argmax(x, out_hw, kernel, strides, dilations, pads):
    """MaxPool with argmax from the definition, one window at a time: the first maximum of the
    cells inside the input (row by row), the first NaN once one is met; -inf and index -1
    for a window with no cell inside."""
    (oh, ow), (kh, kw), (sh, sw), (dh, dw), (pt, pl) = out_hw, kernel, strides, dilations, pads
    n, c, h, w = x.shape
    out = np.empty((n, c, oh, ow), x.dtype)
    arg = np.empty((n, c, oh, ow), np.int64)
    for i, j, y, xo in np.ndindex(n, c, oh, ow):
        m, best = -np.inf, -1
        for a, b in np.ndindex(kh, kw):
            yy, xx = y * sh - pt + a * dh, xo * sw - pl + b * dw
            if 0 <= yy < h and 0 <= xx < w and m == m:
                v = x[i, j, yy, xx]
                if best < 0 or v > m or v != v:
                    m, best = v, yy * w + xx
        out[i, j, y, xo], arg[i, j, y, xo] = m, best
    return out, arg


def _tied_input(rng, shape):
    """Small integers (many ties), NaN, -inf and inf, one plane of -inf only (the first) and
    two NaN side by side in the last plane (one window, the first wins)."""
    x = rng.integers(-2, 3, shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 4, replace=False)] = [np.nan, -np.inf, np.nan, np.inf]
    x[0, 0] = -np.inf
    x[-1, -1, 0, :2] = np.nan
    return x


# (input shape, kernel, strides, dilations, pads top/left, output size): ResNet's stem pool,
# dilation, windows past the end (ceil mode), stride 3, windows wider than the input
POOLS = [((2, 3, 9, 9), (3, 3), (2, 2), (1, 1), (1, 1), (5, 5)),
         ((1, 2, 7, 9), (2, 2), (2, 2), (1, 2), (0, 0), (4, 4)),
         ((2, 2, 6, 6), (3, 2), (1, 2), (2, 1), (2, 1), (6, 4)),
         ((1, 2, 10, 11), (3, 3), (3, 3), (1, 1), (1, 1), (4, 4)),
         ((1, 1, 2, 3), (5, 5), (1, 1), (1, 1), (2, 2), (2, 3))]


@pytest.mark.parametrize("shape,kernel,strides,dilations,pads,out_hw", POOLS)
def test_maxpool_argmax_kernel_matches_definition(shape, kernel, strides, dilations, pads,
                                                  out_hw):
    """The training pool's maxima and argmax: ties (first wins), -inf, inf and NaN (the first
    NaN wins)."""
    from convrt.train.kernels import pool as P

    x = _tied_input(np.random.default_rng(3), shape)
    want, warg = reference_max_pool_argmax(x, out_hw, kernel, strides, dilations, pads)
    got = np.empty(want.shape, np.float32)
    garg = np.empty(want.shape, np.int64)
    P.max_pool2d_argmax(x, got, garg, *kernel, *strides, *dilations, *pads, 2)
    np.testing.assert_array_equal(garg, warg)
    np.testing.assert_array_equal(got, want)  # NaN positions equal too


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9), (3, 1, 2, 2)])
def test_maxpool_2x2_fast_path_matches_definition(shape):
    """The 2x2/2 training pool (``max_pool2x2_argmax``); odd sizes drop the last row/column
    as floor mode does."""
    from convrt.train.kernels import pool as P

    x = _tied_input(np.random.default_rng(3), shape)
    oh, ow = shape[2] // 2, shape[3] // 2
    want, warg = reference_max_pool_argmax(x, (oh, ow), (2, 2), (2, 2), (1, 1), (0, 0))
    got = np.empty(want.shape, np.float32)
    garg = np.empty(want.shape, np.int64)
    P.max_pool2x2_argmax(x, got, garg)
    np.testing.assert_array_equal(garg, warg)
    np.testing.assert_array_equal(got, want)  # NaN positions equal too
