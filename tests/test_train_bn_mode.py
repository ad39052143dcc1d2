"""Models exported in training mode (BatchNormalization ``training_mode=1``, PyTorch's
``TrainingMode.TRAINING``): the trainer reads them as it runs BN itself (train/bn_mode.py)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convrt.errors import TrainingError
from convrt.train import SGD, Trainer
from oracle import run_ort


def _model(training_mode, stats_out=False):
    """Conv -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten -> Gemm; with
    ``training_mode`` the BN has the running-statistics outputs, as torch writes them (a graph
    output with ``stats_out``)."""
    rng = np.random.default_rng(0)

    def init(name, a):
        return numpy_helper.from_array(a.astype(np.float32), name)
    bn_out = ["b", "rm", "rv"] if training_mode else ["b"]
    bn = helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], bn_out,
                          name="bn", momentum=0.9, **({"training_mode": 1} if training_mode
                                                     else {}))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), bn,
             helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])]
    if stats_out:
        outputs.append(helper.make_tensor_value_info("rm", TensorProto.FLOAT, [6]))
    graph = helper.make_graph(
        nodes, "bnmode", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 8, 8])],
        outputs,
        [init("w", rng.standard_normal((6, 2, 3, 3)) * 0.3), init("s", rng.random(6) + 0.5),
         init("bb", rng.standard_normal(6) * 0.1), init("m", rng.standard_normal(6) * 0.1),
         init("v", rng.random(6) + 0.5), init("fc", rng.standard_normal((3, 6)))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_training_mode_export_trains_as_the_plain_model(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 8, 8), dtype=np.float32)
    y = np.array([0, 1, 2, 1])
    runs = {}
    for mode in (0, 1):
        tr = Trainer(_model(mode), optimizer=SGD(lr=0.1, momentum=0.9), batchnorm="train")
        grads = tr.gradients({"x": x}, y)
        losses = [tr.step({"x": x}, y) for _ in range(3)]
        runs[mode] = (grads, losses, tr)
    for name in runs[0][0]:
        assert np.array_equal(runs[0][0][name], runs[1][0][name]), name
    assert runs[0][1] == runs[1][1]
    tr = runs[1][2]  # the running statistics moved as the plain model's did
    for name in ("m", "v"):
        assert np.array_equal(tr.state[name], runs[0][2].state[name])
        assert not np.array_equal(tr.state[name], numpy_helper.to_array(
            {t.name: t for t in _model(1).graph.initializer}[name]))
    out = tmp_path / "trained.onnx"
    tr.export(out)
    bn = [n for n in onnx.load(out).graph.node if n.op_type == "BatchNormalization"][0]
    assert len(bn.output) == 1 and all(a.name != "training_mode" for a in bn.attribute)
    got = run_ort(onnx.load(out), {"x": x})[0]
    assert np.allclose(got, tr.predict({"x": x}), rtol=1e-5, atol=1e-5)


def test_running_statistics_output_read_is_refused():
    with pytest.raises(TrainingError, match=r"node 'bn' .*running-statistics output 'rm' is read"):
        Trainer(_model(1, stats_out=True))
