"""Backward rules for ConvNeXt and YOLOv8 (issue #21): LayerNormalization (w.r.t. X, Scale and
B, several axes and broadcast Scale/B shapes), Erf, Gelu (both forms, and the fused
``convrt.Gelu``), Split (attribute, input and num_outputs forms, an unread output) against
float64 central finite differences, with ``test_train_grads.py``'s checker and tolerance.
``CASES`` here counts for that file's ``test_every_rule_has_a_case``.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from test_train_grads import check_against_finite_differences, model, node, unary

import convrt


def _ln(xs, ss, bias=True, **attrs):
    ins = ["X", "S"] + (["B"] if bias else [])
    shapes = {"X": xs, "S": ss}
    if bias:
        shapes["B"] = ss
    return model([node("LayerNormalization", ins, **attrs)], shapes, ["Y"], opset=17)


def _split13(xs, sizes, axis, read=None):
    outs = [f"Y{i}" for i in range(len(sizes))]
    nodes = [node("Split", ["X", "s"], outs, axis=axis)]
    read = outs if read is None else read
    # one graph output that reads the chosen pieces: an unread piece gets no gradient
    nodes.append(node("Concat", read, ["Y"], axis=axis))
    return model(nodes, {"X": xs}, ["Y"], {"s": np.array(sizes, np.int64)})


def _fused_gelu(xs):
    """The convrt-domain Gelu the fuse_gelu pass writes into pre-opset-20 models."""
    m = model([helper.make_node("Gelu", ["X"], ["Y"], domain="convrt")], {"X": xs}, ["Y"],
              opset=17)
    m.opset_import.append(helper.make_opsetid("convrt", 1))
    return m


CASES = {
    "LayerNormalization": {
        "last_axis": _ln((2, 3, 5), (5,), epsilon=1e-5),
        "two_axes_nhwc": _ln((2, 3, 4, 6), (4, 6), axis=-2),
        "axis1_scale_bcast_no_bias": _ln((2, 3, 4), (1, 4), bias=False, axis=1),
    },
    "Erf": {"erf": unary("Erf", (3, 4, 5))},
    "Gelu": {
        "none": unary("Gelu", (3, 4, 5), opset=20),
        "tanh": unary("Gelu", (3, 4, 5), opset=20, approximate="tanh"),
        "convrt_domain": _fused_gelu((3, 4, 5)),
    },
    "Split": {
        "input_sizes": _split13((2, 6, 3), [2, 1, 3], axis=1),
        "unread_piece": _split13((2, 6, 3), [2, 4], axis=1, read=["Y1"]),
        "attr_opset11_neg_axis": model([node("Split", ["X"], ["A", "B"], axis=-1, split=[1, 3]),
                                        node("Concat", ["B", "A"], ["Y"], axis=-1)],
                                       {"X": (3, 4)}, ["Y"], opset=11),
        "num_outputs_opset18": model([node("Split", ["X"], ["A", "B", "C"], axis=0,
                                           num_outputs=3),
                                      node("Concat", ["C", "A", "B"], ["Y"], axis=0)],
                                     {"X": (7, 2)}, ["Y"], opset=18),
    },
}
PARAMS = [(op, name) for op, cases in sorted(CASES.items()) for name in cases]


@pytest.mark.parametrize("op,case", PARAMS, ids=[f"{o}-{c}" for o, c in PARAMS])
def test_backward_matches_finite_differences(op, case):
    graph = convrt.load(CASES[op][case])
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape) * (2.0 if op in ("Erf", "Gelu") else 1.0)
             for v in graph.runtime_inputs()}
    assert check_against_finite_differences(graph, feeds, rng) > 0
