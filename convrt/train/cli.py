"""``convrt train``: train an ONNX model on digits or an .npz data set and export it.

    convrt train sample_models/digits_vgg.onnx --data digits --epochs 15 -o trained.onnx
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from ..errors import TrainingError

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}


def add_parser(subparsers) -> argparse.ArgumentParser:
    t = subparsers.add_parser(
        "train", help="train a model's weights and export the trained model",
        description="Train MODEL's float initializers (BatchNormalization in training mode, "
        "Dropout active) on --data and write the trained eval-mode model to -o.")
    t.add_argument("model", help="path to an .onnx file; its first output is the prediction")
    t.add_argument("--data", required=True, metavar="digits|FILE.npz",
                   help="'digits' (scikit-learn's 8x8 digits) or an .npz with arrays x and y")
    t.add_argument("--epochs", type=int, default=10, help="passes over the training data (10)")
    t.add_argument("--batch-size", type=int, default=64, help="samples per step (64)")
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (sgd 0.05, adam/adamw 1e-3)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    t.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="L2 (sgd, adam) or decoupled (adamw) decay (0; adamw 0.01)")
    t.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                   help="learning rate over the run: cosine decay to 0 (default) or constant")
    t.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse"])
    t.add_argument("--val-split", type=float, default=0.2, help="held-out fraction (0.2)")
    t.add_argument("--seed", type=int, default=0, help="split, shuffling and dropout seed")
    t.add_argument("--checkpoint", metavar="FILE.npz", help="save a checkpoint after each epoch")
    t.add_argument("--resume", metavar="FILE.npz", help="load a checkpoint before training")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("-o", "--output", required=True, help="where to write the trained .onnx")
    t.set_defaults(fn=cmd_train)
    return t


def _optimizer(args):
    from .optim import SGD, Adam, AdamW

    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    if args.optimizer == "sgd":
        return SGD(lr=lr, momentum=args.momentum, nesterov=args.nesterov,
                   weight_decay=args.weight_decay or 0.0)
    if args.optimizer == "adam":
        return Adam(lr=lr, weight_decay=args.weight_decay or 0.0)
    return AdamW(lr=lr, weight_decay=0.01 if args.weight_decay is None else args.weight_decay)


def _bar(total, desc, disable):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the train extra; run without bars otherwise
        return None
    return tqdm(total=total, desc=desc, unit="sample", leave=True, disable=disable,
                dynamic_ncols=True)


def cmd_train(args) -> int:
    from .data import batches, load_data
    from .trainer import Trainer

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be >= 1")
    t_start = time.perf_counter()
    (x, y), (xv, yv) = load_data(args.data, args.val_split, args.seed)
    tr = Trainer(args.model, loss=args.loss, optimizer=_optimizer(args), seed=args.seed)
    if len(tr.inputs) != 1:
        raise TrainingError(f"{tr.source}: convrt train needs a model with one input, it has "
                            f"{sorted(tr.inputs)}")
    if args.resume:
        tr.load_checkpoint(args.resume)
    print(f"training {args.model} on {args.data}: {len(x)} samples, {len(xv)} held out; "
          f"{len(tr.params)} trainable tensors "
          f"({sum(p.size for p in tr.params.values()):,} parameters), {args.optimizer}")
    rng = np.random.default_rng(args.seed)
    base_lr = tr.optimizer.lr
    per_epoch = -(-len(x) // args.batch_size)
    total_steps = args.epochs * per_epoch
    classify = args.loss == "cross_entropy"
    for epoch in range(1, args.epochs + 1):
        bar = _bar(len(x), f"epoch {epoch}/{args.epochs}", args.no_progress)
        t0 = time.perf_counter()
        seen, loss_sum = 0, 0.0
        for idx in batches(len(x), args.batch_size, rng):
            if len(idx) < 2 and tr.state_names:
                continue  # one sample: BatchNormalization has no batch statistics
            if args.schedule == "cosine":
                done = (epoch - 1) * per_epoch + seen // args.batch_size
                tr.optimizer.lr = base_lr * 0.5 * (1 + math.cos(math.pi * done / total_steps))
            loss = tr.step(x[idx], y[idx])
            seen += len(idx)
            loss_sum += loss * len(idx)
            if bar is not None:
                post = {"loss": f"{loss_sum / seen:.4f}",
                        "samples/s": f"{seen / (time.perf_counter() - t0):.0f}"}
                bar.set_postfix(post, refresh=False)
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        line = f"epoch {epoch}: train loss {loss_sum / max(seen, 1):.4f}"
        if len(xv):
            ev = tr.evaluate(xv, yv)
            line += f", held-out loss {ev['loss']:.4f}"
            if classify:
                line += f", held-out accuracy {ev['accuracy'] * 100:.2f} %"
        line += f" ({seen / (time.perf_counter() - t0):.0f} samples/s)"
        print(line)
        if args.checkpoint:
            tr.save_checkpoint(args.checkpoint)
    tr.export(args.output)
    total = time.perf_counter() - t_start
    msg = f"wrote {args.output} after {tr.step_count} steps in {total:.1f} s"
    if len(xv) and classify:
        msg += f"; held-out accuracy {tr.evaluate(xv, yv)['accuracy'] * 100:.2f} %"
    print(msg)
    return 0
