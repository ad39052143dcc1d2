"""``Program.backward(on_final=...)``: each wrt gradient is handed over once, when it is
complete (a weight shared by two nodes after both terms; one no node reaches as zeros), and
equal to what backward returns.  The trainer's dry run of the update uses it."""

import numpy as np
from onnx import TensorProto, helper

import convrt
from convrt.train.autodiff import Program


def test_on_final_sees_each_complete_gradient_once():
    f = TensorProto.FLOAT
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h1"]),
             helper.make_node("MatMul", ["x2", "W"], ["h2"]),  # W shared: two terms
             helper.make_node("Add", ["h1", "h2"], ["s"]),
             helper.make_node("Add", ["s", "B"], ["y"]),
             helper.make_node("Mul", ["x", "U"], ["side"])]  # no gradient flows from "side"
    shapes = {"x": (4, 3), "x2": (4, 3), "W": (3, 5), "B": (5,), "U": (4, 3)}
    inputs = [helper.make_tensor_value_info(n, f, s) for n, s in shapes.items()]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("y", "side")]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    wrt = ["W", "B", "U"]
    prog = Program(convrt.load(model), wrt)
    tape = prog.forward(feeds, {}, training=True)
    r = rng.standard_normal((4, 5)).astype(np.float32)
    calls = []
    grads = prog.backward(tape, {"y": r}, on_final=lambda n, g: calls.append((n, g.copy())))
    assert sorted(n for n, _ in calls) == sorted(wrt)
    for n, g in calls:
        np.testing.assert_array_equal(g, grads[n])
    np.testing.assert_allclose(grads["W"], feeds["x"].T @ r + feeds["x2"].T @ r, rtol=1e-5)
    assert not grads["U"].any()
