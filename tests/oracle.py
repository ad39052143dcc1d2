"""Oracles for tests: one-node models run by convrt and by onnx's ReferenceEvaluator."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import convrt
from convrt.onnx_io import onnx_type


def node_model(op: str, inputs: dict, attrs: dict | None = None, opset: int = 17,
               n_outputs: int = 1, const: tuple = (), ir_version: int = 8) -> onnx.ModelProto:
    """A model of one ``op`` node; names in ``const`` become initializers, None = omitted."""
    names = list(inputs)
    graph_inputs, inits = [], []
    for name, arr in inputs.items():
        if arr is None:
            continue
        if name in const:
            inits.append(numpy_helper.from_array(np.asarray(arr), name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, onnx_type(arr.dtype),
                                                              list(arr.shape)))
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, [n if inputs[n] is not None else "" for n in names], outs,
                            **(attrs or {}))
    graph = helper.make_graph([node], "t", graph_inputs,
                              [helper.make_tensor_value_info(o, 0, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def run_ort(model: onnx.ModelProto, feeds: dict):
    """onnxruntime's outputs (all optimizations, 2 threads), output types filled in first."""
    import onnxruntime as ort

    m = onnx.shape_inference.infer_shapes(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(m.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def run_both(model: onnx.ModelProto, feeds: dict, oracle: str = "reference"):
    """(convrt outputs, oracle outputs) for ``feeds``; oracle is "reference" or "onnxruntime"."""
    sess = convrt.InferenceSession(model)
    got = sess.run(None, feeds)
    if oracle == "onnxruntime":
        return got, run_ort(model, feeds)
    ref = ReferenceEvaluator(model).run(None, feeds)
    return got, ref


def assert_close(got, ref, rtol=1e-4, atol=1e-5):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        r = np.asarray(r)
        assert g.shape == r.shape, (g.shape, r.shape)
        assert g.dtype == r.dtype, (g.dtype, r.dtype)
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g, r)


def check_op(op: str, inputs: dict, attrs: dict | None = None, opset: int = 17, const=(),
             rtol=1e-4, atol=1e-5, n_outputs: int = 1, oracle: str = "reference"):
    """Build, run in convrt and in the oracle (reference evaluator or onnxruntime), compare."""
    model = node_model(op, inputs, attrs, opset, n_outputs, const)
    feeds = {k: v for k, v in inputs.items() if v is not None and k not in const}
    got, ref = run_both(model, feeds, oracle)
    assert_close(got, ref, rtol, atol)
    return got
