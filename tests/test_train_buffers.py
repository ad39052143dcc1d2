"""A training step's big arrays are kept per node and shapes and reused (grads/registry.kept);
inference forwards (predict/evaluate) keep none, and what the trainer hands out is a copy."""

import numpy as np
from onnx import helper

from convrt.train import SGD, Trainer
from test_train_conv_dw import _conv_net


def _model(rng):
    """test_train_conv_dw's net with a symbolic batch and a MaxPool (a training forward that
    keeps its output and argmax) after the first convolution."""
    model = _conv_net(rng, 16)
    for v in (model.graph.input[0], model.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    g = model.graph
    relu = next(n for n in g.node if n.op_type == "Relu")
    relu.input[0] = "pooled"
    g.node.insert(1, helper.make_node("MaxPool", ["c1"], ["pooled"], kernel_shape=[2, 2],
                                      strides=[2, 2]))
    return model


def _kept_arrays(tr, batch):
    """id -> array of the ndarrays held in the step caches bound for ``batch`` images."""
    out = {}

    def walk(v):
        if isinstance(v, np.ndarray):
            out[id(v)] = v
        elif isinstance(v, (tuple, list)):
            for a in v:
                walk(a)
    for key, (_, steps) in tr.program._bound.items():
        if any(name == "x" and shape[0] == batch for name, shape, _ in key):
            for st in steps:
                for v in st.cache.values():
                    walk(v)
    return out


def test_steps_reuse_their_arrays_and_inference_keeps_none():
    rng = np.random.default_rng(0)
    tr = Trainer(_model(rng), optimizer=SGD(lr=0.01, momentum=0.9))
    x = rng.standard_normal((4, 3, 16, 16), dtype=np.float32)
    y = np.array([0, 1, 2, 3])
    tr.step({"x": x}, y)
    first = _kept_arrays(tr, 4)
    assert sum(a.nbytes for a in first.values()) > x.nbytes  # outputs and gradients kept
    tr.step({"x": x}, y)
    assert _kept_arrays(tr, 4).keys() == first.keys()  # the same arrays, refilled

    big = rng.standard_normal((32, 3, 16, 16), dtype=np.float32)
    pred = tr.predict({"x": big})
    assert pred.shape == (32, 5)
    assert sum(a.nbytes for a in _kept_arrays(tr, 32).values()) < big.nbytes


def test_gradients_are_copies_a_later_step_does_not_change():
    rng = np.random.default_rng(1)
    tr = Trainer(_model(rng), optimizer=SGD(lr=0.01))
    x = rng.standard_normal((4, 3, 16, 16), dtype=np.float32)
    y = np.array([0, 1, 2, 3])
    g = tr.gradients({"x": x}, y)
    before = {k: v.copy() for k, v in g.items()}
    tr.step({"x": x * 2}, y[::-1].copy())
    for k in g:
        assert np.array_equal(g[k], before[k]), k
