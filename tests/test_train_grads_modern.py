"""Backward rules for ConvNeXt and YOLOv8 (issue #21): LayerNormalization (w.r.t. X, Scale and
B, several axes and broadcast Scale/B shapes), Erf, Gelu (both forms, and the fused
``convrt.Gelu``), Split (attribute, input and num_outputs forms, an unread output), Resize and
Upsample (YOLOv8's nearest x2; nearest, linear and cubic modes, sizes, axes, roi) against
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


def _fused_gelu(xs, op="Gelu"):
    """The convrt-domain Gelu / GeluTanh the fuse_gelu pass writes into pre-opset-20 models."""
    m = model([helper.make_node(op, ["X"], ["Y"], domain="convrt")], {"X": xs}, ["Y"],
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
    "GeluTanh": {"convrt_domain": _fused_gelu((3, 4, 5), "GeluTanh")},
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


def _resize(xs, scales=None, sizes=None, opset=13, roi=None, **attrs):
    inits, ins = {}, ["X", ""]
    if roi is not None:
        inits["r"] = np.array(roi, np.float32)
        ins[1] = "r"
    if scales is not None:
        inits["s"] = np.array(scales, np.float32)
        ins.append("s")
    else:
        inits["z"] = np.array(sizes, np.int64)
        ins += ["", "z"]
    return model([node("Resize", ins, **attrs)], {"X": xs}, ["Y"], inits, opset=opset)


CASES["Resize"] = {
    "yolo_nearest_x2": _resize((1, 2, 3, 4), [1, 1, 2, 2], coordinate_transformation_mode=
                               "asymmetric", mode="nearest", nearest_mode="floor"),
    "nearest_down_half_pixel": _resize((1, 2, 5, 7), [1, 1, 0.6, 0.5]),
    "linear_sizes": _resize((2, 1, 4, 5), sizes=[2, 1, 7, 3], mode="linear"),
    "cubic_align_corners": _resize((1, 1, 4, 5), [1, 1, 1.5, 0.8], mode="cubic",
                                   coordinate_transformation_mode="align_corners"),
    "linear_axes_not_larger": _resize((1, 2, 4, 6), sizes=[6, 6], opset=18, mode="linear",
                                      axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
    "crop_extrapolate": _resize((1, 1, 4, 4), [1, 1, 1.5, 1.5], roi=[0, 0, -0.2, 0.1,
                                                                      1, 1, 0.9, 1.3],
                                mode="linear", extrapolation_value=3.0,
                                coordinate_transformation_mode="tf_crop_and_resize"),
    "opset10_nearest": model([node("Resize", ["X", "s"], mode="nearest")], {"X": (1, 1, 3, 3)},
                             ["Y"], {"s": np.array([1, 1, 2, 1.5], np.float32)}, opset=10),
}
CASES["Upsample"] = {
    "opset9": model([node("Upsample", ["X", "s"], mode="nearest")], {"X": (1, 2, 2, 3)}, ["Y"],
                    {"s": np.array([1, 1, 2, 3], np.float32)}, opset=9),
    "opset7_linear": unary("Upsample", (1, 1, 3, 3), opset=7, mode="linear",
                           scales=[1.0, 1.0, 2.0, 2.0]),
}
PARAMS = [(op, name) for op, cases in sorted(CASES.items()) for name in cases]


@pytest.mark.parametrize("op,case", PARAMS, ids=[f"{o}-{c}" for o, c in PARAMS])
def test_backward_matches_finite_differences(op, case):
    graph = convrt.load(CASES[op][case])
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.standard_normal(v.shape) * (2.0 if "Erf" in op or "Gelu" in op else 1.0)
             for v in graph.runtime_inputs()}
    assert check_against_finite_differences(graph, feeds, rng) > 0


def _as_float64_with_inputs(m, wrt):
    """``m`` in float64 with the initializers named in ``wrt`` turned into graph inputs."""
    from onnx import TensorProto, numpy_helper

    g, feeds, keep = m.graph, {}, []
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        a = a.astype(np.float64) if a.dtype == np.float32 else a
        if t.name in wrt:
            feeds[t.name] = a
            g.input.append(helper.make_tensor_value_info(t.name, TensorProto.DOUBLE, a.shape))
        else:
            keep.append(numpy_helper.from_array(a, t.name))
    del g.initializer[:]
    g.initializer.extend(keep)
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m, feeds


@pytest.mark.parametrize("name, kw, prefixes", [
    ("convnext_tiny", {"image": 32, "num_classes": 5},
     ("features.0.1.", "features.1.0.block.2.", "features.1.0.block.3.", "features.1.0.layer",
      "features.2.0.")),
    ("yolov8n", {"image": 64, "batch": 1},
     ("model.2.cv1.", "model.2.m.0.cv2.", "model.9.cv1.", "model.12.cv1.", "model.22.cv2.0.2")),
])
def test_whole_model_gradients(name, kw, prefixes):
    """The rules composed: gradients of ConvNeXt's and YOLOv8n's weights (stem LayerNorm2d, a
    block's LayerNorm, Linear and layer scale, a downsample LayerNorm; C2f, SPPF, the Detect
    head's box branch through Resize, Split, DFL Softmax and the box decoding) against finite
    differences, in float64."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent
                           / "sample_models"))
    import builders

    m = builders.build(name, **kw)
    wrt = [t.name for t in m.graph.initializer if t.name.startswith(prefixes)
           and t.data_type == 1]
    m, feeds = _as_float64_with_inputs(m, wrt)
    rng = np.random.default_rng(0)
    inp = m.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    feeds[inp.name] = rng.standard_normal(shape)
    graph = convrt.load(m.SerializeToString())
    # check_against_finite_differences' absolute 1e-6 is below the differences' own rounding
    # here (sum(r * y) over YOLO's 84 x 84 outputs of up to ~500 is ~1e4: 1e-16 * 1e4 / 1e-6);
    # each sampled element is held to 1e-4 of the largest sampled gradient of its tensor instead
    from convrt.train import Program

    prog = Program(graph, list(feeds))
    out = graph.outputs[0].name
    y = prog.forward(feeds, {}, training=True, rng=np.random.default_rng(7)).env[out]
    r = rng.standard_normal(y.shape)
    grads = prog.backward(prog.forward(feeds, {}, training=True, rng=np.random.default_rng(7)),
                          {out: r})

    def loss(f):
        return np.sum(r * prog.forward(f, {}, training=True, rng=np.random.default_rng(7)).env[out])

    for name in wrt:
        g = grads[name].reshape(-1)
        idx = rng.choice(g.size, size=min(g.size, 8), replace=False)
        fds = []
        for i in idx:
            plus, minus = dict(feeds), dict(feeds)
            plus[name], minus[name] = feeds[name].copy(), feeds[name].copy()
            plus[name].reshape(-1)[i] += 1e-6
            minus[name].reshape(-1)[i] -= 1e-6
            fds.append((loss(plus) - loss(minus)) / 2e-6)
        fds = np.array(fds)
        assert np.abs(fds).max() > 0, name
        assert np.abs(fds - g[idx]).max() <= 1e-4 * np.abs(fds).max() + 1e-9, (name, fds, g[idx])
