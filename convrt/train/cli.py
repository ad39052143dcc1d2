"""``convrt train``: train an ONNX model on digits or an .npz data set and export it.

    convrt train sample_models/digits_vgg.onnx --data digits --epochs 15 -o trained.onnx
"""

from __future__ import annotations

import argparse
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
                   help="learning rate over the run: cosine decay to 0 per step "
                   "(CosineAnnealingLR, default) or constant")
    t.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse"])
    t.add_argument("--trainable", action="append", metavar="PATTERN",
                   help="train only the initializers matching this name or glob pattern "
                   "(repeatable; default: every float parameter); frozen BatchNorm layers run "
                   "in eval mode")
    t.add_argument("--freeze", action="append", metavar="PATTERN",
                   help="do not train the initializers matching this name or glob pattern "
                   "(repeatable; the complement of --trainable, applied after it)")
    held = t.add_mutually_exclusive_group()
    held.add_argument("--val-split", type=float, default=None,
                      help="held-out fraction of --data (0.2)")
    held.add_argument("--val", metavar="FILE.npz", default=None,
                      help="a held-out set (arrays x and y shaped like --data's) instead of "
                      "--val-split")
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
    """Train through :meth:`Trainer.fit`, whose epoch, scheduler state and shuffle state a
    checkpoint carries: ``--resume`` continues an interrupted run exactly where it stopped, and
    ``--epochs`` is the run's total (a checkpoint at epoch 2 of 4 trains epochs 3 and 4)."""
    from .data import check_like, load_data, load_npz
    from .schedulers import CosineAnnealingLR
    from .trainer import Trainer

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be >= 1")
    t_start = time.perf_counter()
    if args.val is None:
        split = 0.2 if args.val_split is None else args.val_split
        (x, y), (xv, yv) = load_data(args.data, split, args.seed)
        val_name = args.data
    else:
        (x, y), _ = load_data(args.data, 0.0, args.seed)
        xv, yv = load_npz(args.val)
        check_like(args.val, xv, yv, x, y, args.data)
        val_name = args.val
    tr = Trainer(args.model, loss=args.loss, optimizer=_optimizer(args), seed=args.seed,
                 trainable=args.trainable, freeze=args.freeze)
    if len(tr.inputs) != 1:
        raise TrainingError(f"{tr.source}: convrt train needs a model with one input, it has "
                            f"{sorted(tr.inputs)}")
    _check_data(tr, x, y, args.data)
    if len(xv):
        _check_data(tr, xv, yv, val_name)
    if args.schedule == "cosine":  # per optimizer step, reaching 0 at the end of the run
        tr.scheduler = CosineAnnealingLR(
            tr.optimizer, T_max=max(1, args.epochs * tr.steps_per_epoch(len(x), args.batch_size)))
        tr.scheduler_interval = "step"
    if args.resume:
        tr.load_checkpoint(args.resume)
    print(f"training {args.model} on {args.data}: {len(x)} samples, {len(xv)} held out"
          + (f" ({args.val})" if args.val else "") + "; "
          f"{len(tr.params)} trainable tensors "
          f"({sum(p.size for p in tr.params.values()):,} parameters), {args.optimizer}"
          + (f"; {len(tr.bn_eval)} frozen BatchNorm layers in eval mode" if tr.bn_eval else ""))
    if tr.epoch >= args.epochs:
        print(f"the checkpoint is at epoch {tr.epoch} of {args.epochs}: nothing left to train")
    classify = args.loss == "cross_entropy"
    run = {"bar": None, "t0": 0.0, "seen": 0, "loss": 0.0, "hits": 0, "labelled": 0}

    def start_epoch():
        run["bar"] = _bar(len(x), f"epoch {tr.epoch + 1}/{args.epochs}", args.no_progress)
        run.update(t0=time.perf_counter(), seen=0, loss=0.0, hits=0, labelled=0)

    def on_batch(loss, n):
        run["seen"] += n
        run["loss"] += loss * n
        if tr.last_batch_hits is not None:
            run["hits"] += tr.last_batch_hits[0]
            run["labelled"] += tr.last_batch_hits[1]
        bar = run["bar"]
        if bar is not None:
            post = {"loss": f"{run['loss'] / run['seen']:.4f}"}
            if run["labelled"]:  # training-mode accuracy of the epoch so far (as Keras shows)
                post["acc"] = f"{run['hits'] / run['labelled']:.3f}"
            post["samples/s"] = f"{run['seen'] / (time.perf_counter() - run['t0']):.0f}"
            bar.set_postfix(post, refresh=False)
            bar.update(n)

    def on_epoch(epoch, mean_loss, seen):
        if run["bar"] is not None:
            run["bar"].close()
        line = f"epoch {epoch}: train loss {mean_loss:.4f}"
        if len(xv):
            ev = tr.evaluate(xv, yv)
            line += f", held-out loss {ev['loss']:.4f}"
            if classify:
                line += f", held-out accuracy {ev['accuracy'] * 100:.2f} %"
        line += f" ({seen / (time.perf_counter() - run['t0']):.0f} samples/s)"
        print(line)
        if args.checkpoint:
            tr.save_checkpoint(args.checkpoint)
        if epoch < args.epochs:
            start_epoch()

    if tr.epoch < args.epochs:
        start_epoch()
        tr.fit(x, y, args.epochs, args.batch_size, on_batch=on_batch, on_epoch=on_epoch)
    tr.export(args.output)
    total = time.perf_counter() - t_start
    msg = f"wrote {args.output} after {tr.step_count} steps in {total:.1f} s"
    if len(xv) and classify:
        msg += f"; held-out accuracy {tr.evaluate(xv, yv)['accuracy'] * 100:.2f} %"
    print(msg)
    return 0


def _check_data(tr, x, y, spec) -> None:
    """Targets checked once, before any training (``load_data`` already refused NaN/Inf
    inputs): cross-entropy labels that are out of range or not class indices."""
    tr._check_targets(np.asarray(y))
