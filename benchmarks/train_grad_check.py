"""Gradients of whole VGG-style models with BatchNormalization in training mode: convrt vs
PyTorch autograd (run by hand; needs torch).

    python benchmarks/train_grad_check.py [--batch 16] [--models small_vgg digits_vgg]

The same ONNX weights are loaded into a torch twin (``train_torch_ref.TorchTwin``), the same
batch and labels go through both in training mode (BN on batch statistics, Dropout active with
convrt's mask handed to torch), and for every trainable tensor the script prints
``max |g_convrt - g_torch| / max |g_torch|``; also the loss and the updated BN running
statistics.  Passes when every relative error is below 1e-4.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train_torch_ref import TorchTwin, as_numpy  # noqa: E402

from convrt.train import Trainer, cross_entropy  # noqa: E402

MODELS = {"small_vgg": (HERE.parent / "sample_models" / "small_vgg.onnx", (3, 32, 32)),
          "digits_vgg": (HERE.parent / "sample_models" / "digits_vgg.onnx", (1, 8, 8))}


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def check(name, batch, tol):
    path, image = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + image).astype(np.float32)
    y = rng.integers(0, 10, batch)

    tr = Trainer(str(path))
    prog = tr.program
    tape = prog.forward({"input": x}, {**tr.params, **tr.state}, training=True,
                        rng=np.random.default_rng(1))
    pred = tape.env[tr.output]
    loss, dpred = cross_entropy(pred, y)
    grads = prog.backward(tape, {tr.output: dpred})
    masks = {ctx.node.name: ctx.saved["mask"] for ctx in tape.records if "mask" in ctx.saved}

    twin = TorchTwin(onnx.load(str(path))).train()
    twin.masks = masks
    out = twin(torch.tensor(x))
    tloss = F.cross_entropy(out, torch.tensor(y))
    tloss.backward()
    tparams = twin.named_onnx_parameters()

    print(f"== {name}: batch {batch}, {len(grads)} trainable tensors, dropout masks "
          f"{sorted(masks) or 'none'}")
    print(f"loss: convrt {loss:.8f}  torch {tloss.item():.8f}  "
          f"rel {abs(loss - tloss.item()) / abs(tloss.item()):.2e}")
    worst = 0.0
    tg = {p: as_numpy(tparams[p].grad) for p in grads}
    scale = max(float(np.max(np.abs(g))) for g in tg.values())
    print(f"{'parameter':44s} {'shape':>18s} {'max|g_torch|':>12s} {'max rel err':>12s}")
    zero = []
    for pname, g in grads.items():
        gmax = float(np.max(np.abs(tg[pname])))
        if gmax < 1e-5 * scale:
            # exactly 0 in exact arithmetic (a conv bias feeding a training-mode BN: the batch
            # mean removes it); both sides hold rounding noise, so compare on the model's scale
            e = float(np.max(np.abs(g - tg[pname]))) / scale
            zero.append(pname)
            note = "  (true gradient 0: abs err / largest gradient)"
        else:
            e = rel(g, tg[pname])
            note = ""
        worst = max(worst, e)
        print(f"{pname:44s} {str(list(g.shape)):>18s} {gmax:12.2e} {e:12.2e}{note}")
    stats = twin.running_stats()
    serr = max(rel(val, as_numpy(stats[n])) for n, val in tape.state_updates.items())
    print(f"BN running statistics after the step: max rel err {serr:.2e} "
          f"({len(tape.state_updates)} tensors)")
    worst = max(worst, serr)
    ok = worst < tol
    print(f"max relative error {worst:.2e} -> {'PASS' if ok else 'FAIL'} (< {tol:g})\n")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ok = all([check(m, args.batch, args.tol) for m in args.models])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
