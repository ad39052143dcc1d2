"""One training step (forward + backward + SGD update), convrt vs PyTorch CPU, same run
(run by hand; needs torch).

    python benchmarks/train_step.py [--cases small_vgg_bn_b64 resnet18_64_b8 ...]
                                    [--repeat 7] [--threads 2] [--block 1]

Cases (issue #23's three):

* ``small_vgg_bn_b64``: ``builders.small_vgg_32(batch_norm=True)`` (conv 64-64-M-128-128-M-
  256-256-M with BN and ReLU, Gemm 4096->10), input (64, 3, 32, 32), everything trained;
* ``resnet18_64_b8``: ``builders.resnet18(image=64)`` with BN (torchvision's structure, 1000
  classes), input (8, 3, 64, 64), full fine-tune;
* ``resnet18_64_b8_head``: the same, only ``fc.*`` trained: convrt's ``Trainer(trainable=
  ["fc.*"])`` (its BN then runs in eval mode, ``batchnorm="auto"``, and the frozen backbone
  runs as one inference plan); PyTorch's twin in eval mode with every other parameter
  ``requires_grad_(False)``, as a fine-tuning script freezes a backbone.

Cross-entropy, SGD with momentum 0.9; BN in training mode on both sides where it trains.
PyTorch runs the same weights through ``train_torch_ref.TorchTwin`` (torch's functional
conv/BN/pool ops) on ``--threads`` threads; convrt uses numba's threads.  Steps alternate
between the two so background load hits both alike; medians are printed with their ratio.
With ``--block K`` they alternate in blocks of K timed steps, each after one untimed step:
single steps make every step begin with the other framework's data in the caches, which
measured 4-5 ms a step slower for convrt's ResNet-18 (it streams its weights several times a
step) and 0-1.5 ms for PyTorch's, where a user trains with one of them at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "sample_models"))

import builders  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from train_torch_ref import TorchTwin  # noqa: E402

from convrt.train import SGD, Trainer  # noqa: E402

# name -> (model builder, input shape, classes, trainable patterns or None for all)
CASES = {
    "small_vgg_bn_b64": (lambda: builders.small_vgg_32(batch_norm=True), (64, 3, 32, 32), 10,
                         None),
    "resnet18_64_b8": (lambda: builders.resnet18(image=64), (8, 3, 64, 64), 1000, None),
    "resnet18_64_b8_head": (lambda: builders.resnet18(image=64), (8, 3, 64, 64), 1000,
                            ["fc.*"]),
}


def run_case(name: str, repeat: int, block: int = 1) -> tuple[float, float, float]:
    build, shape, classes, trainable = CASES[name]
    model = build()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    y = rng.integers(0, classes, shape[0])

    t0 = time.perf_counter()
    tr = Trainer(model, optimizer=SGD(lr=0.01, momentum=0.9), trainable=trainable)
    tr.step(x, y)  # compiles/binds
    first = time.perf_counter() - t0

    twin = TorchTwin(model)
    if trainable is None:
        twin.train()
        params = list(twin.parameters())
    else:  # a frozen backbone: eval mode, no gradient recorded for it
        twin.eval()
        keep = set(tr.params)
        params = []
        for n, p in twin.named_onnx_parameters().items():
            p.requires_grad_(n in keep)
            if n in keep:
                params.append(p)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(twin(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    torch_step()
    ours, theirs = [], []
    for _ in range(-(-repeat // block)):
        for step, times in (((lambda: tr.step(x, y)), ours), (torch_step, theirs)):
            if block > 1:
                step()  # a block's first step starts with the other side's data in the caches
            for _ in range(block):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
    return float(np.median(ours)), float(np.median(theirs)), first


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block", type=int, default=1,
                    help="steps of one side in a row (the first of each block not timed): 1 "
                         "alternates single steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    how = "alternating steps" if args.block == 1 else f"steps in alternating blocks of " \
        f"{args.block} (+1 untimed)"
    print(f"{args.threads} threads, {args.repeat} {how} each, torch {torch.__version__}")
    print(f"{'case':22s} {'convrt ms':>10s} {'PyTorch ms':>11s} {'ratio':>6s}  first step")
    for name in args.cases:
        mc, mt, first = run_case(name, args.repeat, args.block)
        print(f"{name:22s} {mc * 1e3:10.1f} {mt * 1e3:11.1f} {mc / mt:6.2f}  {first:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
