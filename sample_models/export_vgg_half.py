"""Export ``vgg_half.onnx`` (a PyTorch ``model.half()`` export) and its oracle ``vgg_half.npz``.

    python sample_models/export_vgg_half.py        (run by hand; needs torch)

Model: conv3x3(3->16)-BN-ReLU, conv3x3(16->16)-BN-ReLU, MaxPool2, conv3x3(16->32)-BN-ReLU,
MaxPool2, conv3x3(32->64)-BN-ReLU, MaxPool2, Flatten, Linear(1024->64)-ReLU, Linear(64->10);
input (N, 3, 32, 32) "input" and output (N, 10) "logits", both float16, as are all weights.

It is the float16 counterpart of ``small_vgg.onnx``: seeded He-normal weights (so the logits
are O(1)) and random BatchNorm statistics, then ``.half()`` and the TorchScript exporter at
opset 17 without constant folding (the BatchNormalization nodes stay in the graph, in float16).
``vgg_half.npz`` holds a fixed float16 input ``x`` (1, 3, 32, 32) and PyTorch's float16 output
``y`` for it, computed by the half model itself on the CPU (torch 2.13 runs half convolutions
on the CPU): an oracle independent of onnxruntime and convrt.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from _torch_common import HERE, export, op_counts, randomize_bn


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class VGGHalf(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(3, 16), *conv_bn_relu(16, 16), nn.MaxPool2d(2),
            *conv_bn_relu(16, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(64 * 4 * 4, 64), nn.ReLU(),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def build() -> VGGHalf:
    torch.manual_seed(0)
    model = VGGHalf()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.normal_(0.0, 0.05)
        nn.init.kaiming_normal_(model.classifier[-1].weight, nonlinearity="linear")
    randomize_bn(model)
    return model.eval().half()


def main() -> None:
    model = build()
    onnx_path = HERE / "vgg_half.onnx"
    npz_path = HERE / "vgg_half.npz"

    m = export(model, torch.zeros(1, 3, 32, 32, dtype=torch.float16), onnx_path, opset=17)
    onnx.checker.check_model(m, full_check=True)
    counts = op_counts(m)
    size = onnx_path.stat().st_size
    print(f"wrote {onnx_path} ({size} bytes), opset {m.opset_import[0].version}, "
          f"IR {m.ir_version}")
    print(f"  nodes per op: {counts} (total {sum(counts.values())})")
    assert counts.get("BatchNormalization") == 4, counts
    assert size < 2**20, size
    f16 = onnx.TensorProto.FLOAT16
    assert m.graph.input[0].type.tensor_type.elem_type == f16
    assert m.graph.output[0].type.tensor_type.elem_type == f16
    assert all(t.data_type == f16 for t in m.graph.initializer)

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1234)).half()
    with torch.no_grad():
        y = model(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    np.savez(npz_path, x=x.numpy(), y=y.numpy())
    print(f"wrote {npz_path}: x {tuple(x.shape)} {x.dtype}, y {tuple(y.shape)} {y.dtype} = "
          f"{np.round(y.float().numpy(), 3).tolist()}")

    import onnxruntime as ort  # a sanity check of the export, not the oracle the tests use
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    ref = y.float().numpy()
    print(f"  onnxruntime vs torch: max |diff| = {np.abs(got.astype(np.float32) - ref).max():.3g}"
          f" (max |y| = {np.abs(ref).max():.3g})")


if __name__ == "__main__":
    main()
