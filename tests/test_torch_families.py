"""Every torchvision CNN family convrt runs, against PyTorch (issues #21 and #23); no torch here.

The oracles are ``tests/data/torch_families/<family>.npz``, recorded by
``sample_models/record_torch_families.py`` from torchvision (and ultralytics' YOLOv8n) models
exported fresh by the legacy exporter (opset 17, BatchNormalization kept) with deterministic
per-name weights that ``sample_models/family_fixtures.py`` regenerates here, so each fixture is
the graph plus a few kilobytes of PyTorch's numbers:

* forward (#21): convrt's outputs for the recorded input vs PyTorch's eval-mode outputs (float64
  on the same float32 weights), within 1e-4 x max |y| per output;
* gradients (#23, classifiers): ``Trainer(batchnorm="train").gradients`` of the mean
  cross-entropy vs PyTorch's train-mode autograd (BN batch statistics, no Dropout or stochastic
  depth; float64), for every parameter, within 1e-3 x the largest gradient of the model plus
  the reference's own uncertainty, checked at 32 positions per tensor (its largest entry among
  them) and on each tensor's max |g| and RMS.

The uncertainty: a gradient through ReLU and max pooling is only piecewise smooth, so a unit
within rounding distance of a kink flips under any float32 computation.  The recording script
measures, per parameter, how far the exact gradient moves when the input moves by relative
1e-6 (``g_sens``, four draws; about the float32-vs-float64 spread of convrt's activations), and
the test allows ``SENS_FACTOR`` times that on top of 1e-3.  For AlexNet, VGG, ResNet-18,
SqueezeNet, MobileNetV3, EfficientNet and ConvNeXt that term is negligible and every parameter
is held to the issue's 1e-3.  Where train-mode gradients grow steeply toward the input at this
size (ResNet-50, ResNeXt-50, Wide-ResNet-50, DenseNet-121, GoogLeNet, Inception-v3, RegNetY,
and less so MobileNetV2, MNASNet, ShuffleNetV2) a single flipped unit moves a stem gradient by
percents of the largest gradient: torch's own float32 autograd misses the issue's 1e-3 there
too (``meta["torch_float32_grad_error"]``, up to 3%), and the early layers' tolerance is set by
``g_sens`` (``meta["params_at_issue_tol"]`` counts the parameters held to 1e-3 alone).

So the gradients are also checked with that rounding taken out: the same model cast to float64
(weights, input and every float tensor type), trained by the same ``Trainer``, holds **every**
parameter of every classifier family to the issue's plain 1e-3 of the largest gradient
(``test_float64_gradients_match_torch_plainly``).  What float32 leaves is then the network's
conditioning, not convrt's backward rules.

Inputs are batch 2 at 64x64, except Inception-v3 at 107x107 (at 75x75, the smallest its stem
takes, its last blocks are 1x1 and a train-mode BN over two values has a zero input gradient,
so everything upstream would be compared on rounding noise) and LRASPP at 32x32 (its
full-resolution output is the fixture's bulk).  AlexNet's and VGG's adaptive average pools are
exported as the equivalent averaging MatMuls (the legacy exporter refuses a 1x1 -> 6x6 or
2x2 -> 7x7 adaptive pool); see the recording script.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from family_fixtures import load_fixture

import convrt
from convrt.train import Trainer

DATA = Path(__file__).resolve().parent / "data" / "torch_families"
CLASSIFIERS = [
    "alexnet", "vgg11_bn", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
    "densenet121", "googlenet", "inception_v3", "squeezenet1_1", "shufflenet_v2_x1_0",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "mnasnet1_0", "efficientnet_b0",
    "regnet_y_400mf", "convnext_tiny",
]
FAMILIES = CLASSIFIERS + ["yolov8n", "lraspp_mobilenet_v3_large"]
FORWARD_TOL = 1e-4
GRAD_TOL = 1e-3
SENS_FACTOR = 4  # x the recorded spread of the exact gradient under float32-sized input noise


def test_every_fixture_is_listed():
    """A fixture recorded but not tested (or listed but missing) is a gap in the oracle."""
    assert sorted(p.stem for p in DATA.glob("*.npz")) == sorted(FAMILIES)
    for family in FAMILIES:
        assert (DATA / f"{family}.npz").stat().st_size < 256 * 1024, family


@pytest.fixture(scope="module")
def recorded(request):
    """(family, serialized model, arrays, meta) of the family ``request.param``, regenerated
    once for all of its tests: a module-scoped parametrized fixture makes pytest run one
    family's tests together, and the weights of VGG-11 (133 M) and AlexNet (61 M) take
    seconds to regenerate.  The model travels as bytes, so no test changes another's."""
    model, arrays, meta = load_fixture(DATA / f"{request.param}.npz")
    return request.param, model.SerializeToString(), arrays, meta


@pytest.mark.parametrize("recorded", FAMILIES, indirect=True)
def test_forward_matches_torch(recorded):
    family, model, arrays, meta = recorded
    outs = convrt.InferenceSession(model).run(None, {"input": arrays["x"]})
    assert len(outs) == len(meta["outputs"])
    for i, got in enumerate(outs):
        ref = arrays[f"y{i}"]
        assert got.shape == ref.shape, (i, got.shape, ref.shape)
        scale = float(np.abs(ref).max())
        err = float(np.abs(got - ref).max())
        assert scale > 0 and err <= FORWARD_TOL * scale, (family, i, err, scale)


def _rms(g: np.ndarray, chunk: int = 1 << 20) -> float:
    """sqrt(mean(g²)) summed in float64, a chunk at a time (no full float64 copy)."""
    total = 0.0
    for i in range(0, g.size, chunk):
        c = g[i:i + chunk].astype(np.float64)
        total += float(np.dot(c, c))
    return float(np.sqrt(total / g.size))


def _gradient_mismatches(grads: dict, arrays: dict, sens_factor: float = SENS_FACTOR
                         ) -> list[str]:
    """Lines naming each parameter whose sampled values, max |g| or RMS is off by more than its
    tolerance (max and RMS are 1-Lipschitz in the max-norm: an elementwise match implies them)."""
    bad = []
    off, idx = arrays["g_off"], arrays["g_idx"]
    base = GRAD_TOL * float(arrays["g_max"].max())
    for i, name in enumerate(str(n) for n in arrays["g_names"]):
        tol = base + sens_factor * float(arrays["g_sens"][i])
        # no copy of the gradient (a VGG FC's is 100 M entries, and may be a transposed
        # view): values gathered at their row-major positions, max |g| and RMS over the
        # memory order; max |g| is exact in any float type
        g = grads[name]
        flat = g.ravel(order="K")
        sl = slice(off[i], off[i + 1])
        at = g[np.unravel_index(idx[sl], g.shape)].astype(np.float64)
        checks = {
            "values": np.abs(at - arrays["g_val"][sl]).max(),
            "max": abs(max(float(flat.max()), -float(flat.min())) - arrays["g_max"][i]),
            "rms": abs(_rms(flat) - arrays["g_rms"][i]),
        }
        bad += [f"{name} {what}: off by {err:.3g} > {tol:.3g}"
                for what, err in checks.items() if not err <= tol]
    return bad


@pytest.mark.parametrize("recorded", CLASSIFIERS, indirect=True)
def test_gradients_match_torch(recorded):
    family, model, arrays, _ = recorded
    names = [str(n) for n in arrays["g_names"]]
    trainer = Trainer(model, batchnorm="train")
    # every float initializer the trainer would train is a PyTorch parameter, and vice versa
    assert sorted(trainer.params) == sorted(names)
    grads = trainer.gradients({"input": arrays["x"]}, arrays["labels"])
    assert sorted(grads) == sorted(names)
    bad = _gradient_mismatches(grads, arrays)
    assert not bad, f"{family}: {len(bad)} mismatches, first: " + "; ".join(bad[:5])


def as_float64(model):
    """``model`` (an onnx.ModelProto, changed in place) computing in float64: every float32
    initializer, Constant/Cast ``to`` and declared value type, as ``module.double()`` does in
    PyTorch."""
    from onnx import TensorProto, numpy_helper

    def cast(t):
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    g = model.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            cast(t)
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in g.node:
        for a in node.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            elif a.type == a.TENSOR and a.t.data_type == TensorProto.FLOAT:
                cast(a.t)
    return model


@pytest.mark.parametrize("recorded", CLASSIFIERS, indirect=True)
def test_float64_gradients_match_torch_plainly(recorded):
    """Every parameter of every classifier within the issue's 1e-3 of the largest gradient,
    with no allowance for float32 rounding: convrt computing in float64, like the oracle."""
    family, model, arrays, _ = recorded
    trainer = Trainer(as_float64(onnx.load_model_from_string(model)), batchnorm="train")
    grads = trainer.gradients({"input": arrays["x"].astype(np.float64)}, arrays["labels"])
    assert sorted(grads) == sorted(str(n) for n in arrays["g_names"])
    assert all(g.dtype == np.float64 for g in grads.values())
    bad = _gradient_mismatches(grads, arrays, sens_factor=0)
    assert not bad, f"{family}: {len(bad)} mismatches, first: " + "; ".join(bad[:5])


def test_gradient_oracle_tells_eval_mode_batchnorm_apart():
    """The fingerprint and its tolerances can fail: eval-mode BatchNorm (stored statistics
    instead of the batch's) is a plausible trainer bug, and it must show as mismatches."""
    model, arrays, _ = load_fixture(DATA / "resnet18.npz")
    trainer = Trainer(model, batchnorm="eval")
    grads = trainer.gradients({"input": arrays["x"]}, arrays["labels"])
    assert len(_gradient_mismatches(grads, arrays)) > len(arrays["g_names"]) // 2
