"""One training step (forward + backward + SGD update), convrt vs PyTorch CPU, same run
(run by hand; needs torch).

    python benchmarks/train_step.py [--batch 64] [--repeat 5] [--threads 2]

Model: ``sample_models/builders.py`` ``small_vgg_32(batch_norm=True)`` (conv 64-64-M-128-128-M-
256-256-M with BN and ReLU, Gemm 4096->10), input (batch, 3, 32, 32), cross-entropy, SGD with
momentum 0.9.  BN runs in training mode on both sides.  PyTorch runs the same weights through
``train_torch_ref.TorchTwin`` (torch's functional conv/BN/pool ops) on ``--threads`` threads;
convrt uses numba's threads (both default to 2, the machine's cores).  Steps alternate between
the two so background load hits both alike; medians are printed with their ratio.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    model = builders.small_vgg_32(batch_norm=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)

    t0 = time.perf_counter()
    tr = Trainer(model, optimizer=SGD(lr=0.01, momentum=0.9))
    tr.step(x, y)  # compiles/binds
    first = time.perf_counter() - t0

    twin = TorchTwin(model).train()
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(twin(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    torch_step()
    ours, theirs = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        tr.step(x, y)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        torch_step()
        theirs.append(time.perf_counter() - t)
    mc, mt = float(np.median(ours)), float(np.median(theirs))
    print(f"small_vgg_32 (BN, train mode), batch {args.batch}, {args.threads} threads, "
          f"{args.repeat} steps each")
    print(f"convrt  step: median {mc * 1e3:8.1f} ms  (min {min(ours) * 1e3:.1f}; first step "
          f"incl. load/compile {first:.1f} s)")
    print(f"PyTorch step: median {mt * 1e3:8.1f} ms  (min {min(theirs) * 1e3:.1f}; "
          f"torch {torch.__version__})")
    print(f"ratio convrt / PyTorch: {mc / mt:.2f}x")


if __name__ == "__main__":
    main()
