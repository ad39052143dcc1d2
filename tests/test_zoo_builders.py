"""torchvision-style classifiers from ``sample_models/builders.py`` against onnxruntime.

ResNet-18, MobileNet-v2 and SqueezeNet-1.1 at opsets 13 and 17, 64x64 images, batch 2 (small so
the file stays fast); tolerance relative to the output scale.
"""

import numpy as np
import pytest

import convrt

builders = pytest.importorskip("builders")
ort = pytest.importorskip("onnxruntime")

MODELS = ("resnet18", "mobilenet_v2", "squeezenet1_1")


@pytest.mark.parametrize("opset", (13, 17))
@pytest.mark.parametrize("name", MODELS)
def test_builder_matches_onnxruntime(name, opset):
    model = getattr(builders, name)(num_classes=100, image=64, opset=opset, seed=1)
    data = model.SerializeToString()
    x = np.random.default_rng(opset).standard_normal((2, 3, 64, 64)).astype(np.float32)
    in_name = model.graph.input[0].name
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    (want,) = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(
        None, {in_name: x})
    (got,) = convrt.InferenceSession(data).run(None, {in_name: x})
    assert got.shape == want.shape == (2, 100)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
