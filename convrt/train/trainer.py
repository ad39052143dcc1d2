"""The training API: :class:`Trainer` = model + loss + optimizer, step / export / checkpoint.

    tr = Trainer("model.onnx", loss="cross_entropy", optimizer=SGD(lr=0.05, momentum=0.9))
    loss = tr.step({"input": x}, y)
    tr.export("trained.onnx")

Training mode is what PyTorch's ``train()`` would do with the exported module: BatchNormalization
uses batch statistics and updates its running statistics, Dropout is active (seeded masks).
Prediction, evaluation and the exported model are eval mode.

``batchnorm`` picks the BatchNormalization mode while training, because fine-tuning a frozen
backbone the PyTorch way means ``backbone.eval()``: ``"train"`` runs every BN layer in training
mode; ``"eval"`` runs every one with its stored statistics and never updates them; ``"auto"`` (the
default) runs in eval mode exactly the layers whose scale and bias are both frozen (not in
``trainable``), so head-only fine-tuning leaves the backbone's statistics bit for bit as they were.

Before anything else the graph's aliased initializers are untied (:mod:`.untie`): PyTorch's legacy
exporter merges equal tensors (a fresh BatchNorm's weight and running_var, zero biases), and
training must keep them apart as PyTorch's own training of the module does.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np

from ..compiler import load
from ..errors import InputError, TrainingError
from .. import onnx_io
from ..runtime.feeds import check_feeds
from .autodiff import Program
from .bn_mode import clear_training_mode
from .frozen import FrozenPrefix
from .kernels import optim as kopt
from .losses import get_loss
from .optim import SGD, Optimizer
from .schedulers import LRScheduler
from .select import expand, frozen, resolve_groups
from .untie import BN_STATE_INPUTS, untie_initializers

CHECKPOINT_FORMAT = "convrt-train-checkpoint/1"
BATCHNORM_MODES = ("auto", "train", "eval")


def _check_input(name: str, a: np.ndarray, source: str) -> None:
    """NaN/Inf in a training feed: one line naming the input and the first bad sample (a NaN
    input would otherwise surface as a NaN loss with no hint of its cause)."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = ~np.isfinite(a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1))
        first = int(np.argmax(bad.any(axis=1)))
        kind = "NaN" if np.isnan(a).any() else "Inf"
        raise InputError(f"{source}: input '{name}' holds {kind} (first at sample {first}); "
                         "training needs finite inputs")


class Trainer:
    """Train an ONNX model's float initializers.

    Args:
        model: path, bytes or onnx.ModelProto; its first output is the prediction (logits for
            cross-entropy).
        loss: ``"cross_entropy"`` or ``"mse"``.
        optimizer: an :class:`~convrt.train.optim.Optimizer` (default ``SGD(lr=0.01)``).
        trainable: initializer names or glob patterns (``"fc.*"``) to train; None = every float
            initializer except BatchNormalization running statistics (and tensors only read as
            shapes/ratios).
        seed: seeds the Dropout masks.
        keep_ties: keep an initializer that several trainable inputs read shared (a weight tied
            on purpose) instead of untying it; see :mod:`convrt.train.untie`.
        batchnorm: ``"auto"`` (default), ``"train"`` or ``"eval"``: the BatchNormalization mode
            during training steps (see the module docstring).
        clip_grad_norm: scale the gradients so that their total 2-norm (over every trainable
            tensor) is at most this, as ``torch.nn.utils.clip_grad_norm_(params, max_norm)``
            before ``optimizer.step()`` (coefficient ``max_norm / (norm + 1e-6)``, capped at 1).
        freeze: names or glob patterns taken out of the trainable set (``["features.*"]``
            freezes a backbone); the complement of ``trainable``, applied after it.
        param_groups: per-group optimizer options, ``[{"params": ["fc.*"], "lr": 1e-2},
            {"params": ["*.bias"], "weight_decay": 0.0}]``: names, glob patterns or callables
            ``f(name, array) -> bool``; the first matching group takes a parameter, the rest
            form a last group with the optimizer's own options (:mod:`convrt.train.select`).
            The optimizer's ``param_groups`` then hold the names.
        scheduler: a learning-rate scheduler (:mod:`convrt.train.schedulers`) built on
            ``optimizer``; :meth:`fit` steps it and checkpoints carry its state.
        scheduler_interval: ``"epoch"`` (default: ``scheduler.step()`` after each epoch, the
            usual PyTorch loop) or ``"step"`` (after each optimizer step; see
            :meth:`steps_per_epoch` for a ``T_max`` spanning the run).
        compile_frozen: True (default): the nodes no trainable tensor or changing BN state
            reaches (a frozen backbone with eval-mode BN) run as one optimized inference plan
            (BN folded, activations fused), not node by node (:mod:`convrt.train.frozen`);
            their results equal the node-by-node forward up to the fused kernels' rounding.

    Attributes:
        params: name -> trainable array, updated in place by each step.  Code that writes into
            one between steps calls ``optimizer.forget()`` afterwards: SGD's check that a step
            stays finite works from bounds on the magnitudes it last wrote (:mod:`.optim`).
        untied: initializers created by untying aliases (new name -> the tensor it copied);
            see :mod:`convrt.train.untie`.  They train, update and export as separate tensors.
        bn_eval: names of the BatchNormalization nodes that run in eval mode while training.
        scheduler, scheduler_interval: as given; may be set after construction too (the CLI
            builds its cosine once it knows the steps per epoch).
        last_batch_hits: ``(correct, labelled)`` argmax predictions of the last training batch
            (cross-entropy only; training mode, as a Keras progress bar shows).
    """

    def __init__(self, model, loss: str = "cross_entropy", optimizer: Optimizer | None = None,
                 trainable=None, seed: int = 0, base_dir=None, keep_ties: bool = False,
                 batchnorm: str = "auto", clip_grad_norm: float | None = None,
                 freeze=None, param_groups=None, scheduler: LRScheduler | None = None,
                 scheduler_interval: str = "epoch", compile_frozen: bool = True):
        if batchnorm not in BATCHNORM_MODES:
            raise InputError(f"batchnorm={batchnorm!r}: choose one of "
                             f"{', '.join(BATCHNORM_MODES)}")
        self.batchnorm = batchnorm
        if clip_grad_norm is not None and not (isinstance(clip_grad_norm, (int, float))
                                               and 0 < clip_grad_norm < math.inf):
            raise InputError(f"clip_grad_norm {clip_grad_norm!r} must be a finite number > 0")
        self.clip_grad_norm = None if clip_grad_norm is None else float(clip_grad_norm)
        self.last_grad_norm = None  # the total gradient norm of the last step (when clipping)
        self._loss = get_loss(loss)
        self.loss_name = getattr(self._loss, "name", loss)
        self.optimizer = optimizer if optimizer is not None else SGD(lr=0.01)
        if not isinstance(self.optimizer, Optimizer):
            raise TrainingError(f"optimizer must be a convrt.train optimizer, got "
                                f"{type(self.optimizer).__name__}")
        if scheduler_interval not in ("epoch", "step"):
            raise InputError(f"scheduler_interval={scheduler_interval!r}: choose 'epoch' or "
                             "'step'")
        if scheduler is not None and not (isinstance(scheduler, LRScheduler)
                                          and scheduler.optimizer is self.optimizer):
            raise InputError("scheduler must be a convrt.train scheduler built on the trainer's "
                             "optimizer")
        self.scheduler, self.scheduler_interval = scheduler, scheduler_interval
        g = self.graph = load(model, base_dir, prepare=clear_training_mode)
        self.source = g.source
        self.untied = untie_initializers(g, keep_ties)
        state = []
        for node in g.nodes:
            if node.op_type == "BatchNormalization":
                for v in (node.input(i) for i in BN_STATE_INPUTS):
                    if v is not None and v.name in g.initializers and v.name not in state:
                        state.append(v.name)
        self.state_names = state
        floats = [n for n, v in g.initializers.items()
                  if v.const is not None and v.const.dtype.kind == "f" and n not in state]
        if trainable is None:
            names = self._default_trainable(floats)
        else:
            names = expand(trainable, floats, self.source, "trainable", g.initializers)
            for n in names:
                if n not in g.initializers:
                    raise TrainingError(f"{self.source}: trainable '{n}' is not an initializer")
                if n in state:
                    raise TrainingError(f"{self.source}: '{n}' is a BatchNormalization running "
                                        "statistic, which is state, not trainable")
                if n not in floats:
                    raise TrainingError(f"{self.source}: trainable '{n}' is not a float tensor")
        if freeze is not None:
            off = frozen(freeze, names, self.source)
            names = [n for n in names if n not in off]
        if not names:
            raise TrainingError(f"{self.source}: nothing to train")
        self.params = {n: np.array(g.initializers[n].const, copy=True) for n in names}
        self.state = {n: np.array(g.initializers[n].const, copy=True) for n in state}
        self.program = Program(g, names, dynamic=state)
        self._eval_ids, self.bn_eval, self.bn_train = self._bn_modes(batchnorm)
        self._prefix = None
        if compile_frozen:
            changing = set(self.params) | {
                v.name for node in g.nodes if node.op_type == "BatchNormalization"
                and id(node) not in self._eval_ids
                for v in (node.input(i) for i in BN_STATE_INPUTS) if v is not None}
            self._prefix = FrozenPrefix(g, changing, self._eval_ids, self.state) or None
        if param_groups is not None:  # last: a model that cannot train leaves the optimizer be
            self.optimizer.set_param_groups(resolve_groups(param_groups, self.params,
                                                           self.source))
            if self.scheduler is not None:  # the new groups start at the current epoch's lr
                self.scheduler.refresh()
        self.inputs = {v.name: v for v in g.runtime_inputs()}
        self.output = g.outputs[0].name
        self.rng = np.random.default_rng(seed)
        self.step_count = 0
        # fit()'s position, saved in checkpoints with the scheduler's so that a resumed run
        # continues the same epoch count, learning rates and shuffle order (2 + 2 epochs == 4,
        # bit for bit)
        self.epoch = 0
        self.shuffle_rng = np.random.default_rng(seed)
        # (correct, labelled) predictions of the last training batch, for progress bars
        self.last_batch_hits: tuple[int, int] | None = None

    def _bn_modes(self, mode):
        """(ids of eval-mode BN nodes, their names, names of the train-mode ones)."""
        ids, evals, trains = set(), [], []
        for node in self.graph.nodes:
            if node.op_type != "BatchNormalization":
                continue
            affine = [v.name for v in node.inputs[1:3] if v is not None]
            frozen = not any(n in self.params for n in affine)
            if mode == "eval" or (mode == "auto" and frozen):
                ids.add(id(node))
                evals.append(node.name or node.outputs[0].name)
            else:
                trains.append(node.name or node.outputs[0].name)
        return frozenset(ids), evals, trains

    def _default_trainable(self, floats):
        """Float initializers read at some differentiable input position."""
        from .grads import grad_rule

        out = []
        for n in floats:
            for node, i in self.graph.values[n].uses:
                rule = grad_rule(node.op_type)
                if rule is None or i not in rule.nondiff:
                    out.append(n)
                    break
        return out

    # -- feeds ------------------------------------------------------------------------------
    def _feeds(self, feeds) -> dict[str, np.ndarray]:
        if isinstance(feeds, np.ndarray):
            if len(self.inputs) != 1:
                raise InputError(f"{self.source}: the model has inputs {sorted(self.inputs)}; "
                                 "pass a dict")
            feeds = {next(iter(self.inputs)): feeds}
        return check_feeds(feeds, self.inputs, self.inputs, self.source, cast_numbers=True)

    def _dynamic(self):
        d = dict(self.params)
        d.update(self.state)
        return d

    def _forward_backward(self, feeds, targets, on_final=None):
        feeds = self._feeds(feeds)
        for name, a in feeds.items():
            _check_input(name, a, self.source)
        tape = self.program.forward(feeds, self._dynamic(), training=True, rng=self.rng,
                                    eval_nodes=self._eval_ids, prefix=self._prefix)
        pred = tape.env[self.output]
        loss, dpred = self._loss(pred, targets)
        if not np.isfinite(loss):
            raise TrainingError(f"{self.source}: the loss is {loss} at step "
                                f"{self.step_count + 1}; training stopped (try a smaller "
                                "learning rate, or check the inputs for NaN/Inf)")
        grads = self.program.backward(tape, {self.output: dpred}, on_final)
        return loss, grads, tape

    # -- training ---------------------------------------------------------------------------
    def gradients(self, feeds, targets) -> dict[str, np.ndarray]:
        """Gradients of the loss for each trainable initializer (training-mode forward; nothing
        is updated, running statistics included)."""
        _, grads, _ = self._forward_backward(feeds, targets)
        return {n: np.array(g, copy=True) for n, g in grads.items()}

    def step(self, feeds, targets) -> float:
        """Forward, backward and one optimizer update on a batch; returns the loss.

        Transactional: the update is first run dry (``Optimizer.check``: computed, not written)
        and only then applied in place.  If the loss, a gradient, an updated weight, the
        optimizer's state or a BN running statistic would be NaN/Inf, :class:`TrainingError`
        names the first such tensor and every weight, statistic and optimizer slot keeps its
        previous (finite) value, so ``export()`` after the error writes the last good model
        instead of garbage.
        """
        # Overflow is detected and reported below as a TrainingError; numpy's warnings about it
        # would only repeat that on stderr.
        with np.errstate(over="ignore", invalid="ignore"):
            return self._step(feeds, targets)

    def _step(self, feeds, targets) -> float:
        # a dry run of the update (nothing written) names what it would make non-finite: run
        # for each parameter as soon as the backward walk has its whole gradient, which is
        # then still in the caches (the run after the walk read every gradient, weight and
        # optimizer slot back from memory); clipping changes the gradients after the walk
        bad, check_one = {}, None
        if self.clip_grad_norm is None:
            check_one = self.optimizer.checker(self.params)

        def on_final(name, g):
            bits = check_one(name, g)
            if bits:
                bad[name] = bits

        loss, grads, tape = self._forward_backward(feeds, targets,
                                                   on_final if check_one else None)
        k = self.step_count + 1
        if self.clip_grad_norm is not None:  # the norm of a non-finite gradient means nothing
            self._require_finite(grads, "the gradient of", k)
            grads = self._clip(grads)
            bad = self.optimizer.check(self.params, grads)
        if bad:
            self._refuse(bad, k)
        # Running statistics fed as inputs or computed by nodes are not state this trainer
        # owns (untying made every initializer-backed statistic its own entry here).
        updates = {n: v for n, v in tape.state_updates.items() if n in self.state}
        self._require_finite(updates, "the running statistic", k)
        # ... so that the step itself, in place, can no longer fail half-way
        self.optimizer.step(self.params, grads)
        for n, val in updates.items():
            self.state[n][...] = val
        self.step_count = k
        self.last_batch_hits = self._hits(tape.env[self.output], targets)
        return loss

    def _hits(self, pred, targets):
        """(correct, labelled) argmax predictions for cross-entropy (positions whose label is
        the loss's ignore_index do not count), else None."""
        if self.loss_name != "cross_entropy":
            return None
        y = np.asarray(targets)
        if pred.ndim < 2 or y.shape != pred.shape[:1] + pred.shape[2:]:
            return None
        ok = pred.argmax(axis=1) == y
        ignore = getattr(self._loss, "ignore_index", None)
        labelled = y != ignore if ignore is not None else np.ones(y.shape, bool)
        return int((ok & labelled).sum()), int(labelled.sum())

    def _clip(self, grads):
        total = math.sqrt(sum(float(np.dot(g.reshape(-1).astype(np.float64),
                                           g.reshape(-1).astype(np.float64)))
                              for g in grads.values()))
        self.last_grad_norm = total
        coef = self.clip_grad_norm / (total + 1e-6)
        if coef >= 1.0:
            return grads
        return {n: g * g.dtype.type(coef) for n, g in grads.items()}

    def _require_finite(self, arrays: dict, what: str, k: int) -> None:
        for name, a in arrays.items():
            if not np.isfinite(a).all():
                self._nonfinite(what, name, "NaN" if np.isnan(a).any() else "Inf", k)

    def _nonfinite(self, what: str, name: str, kind: str, k: int):
        raise TrainingError(
            f"{self.source}: step {k} would make {what} '{name}' non-finite ({kind}); "
            "nothing was updated, the last finite weights and statistics are kept (try "
            "a smaller learning rate, or check the scale of the inputs)")

    def _refuse(self, bad: dict, k: int):
        """The first problem ``Optimizer.check`` found, as :meth:`_require_finite` words it:
        a gradient first, then a new weight, then an optimizer slot, in parameter order."""
        slots = self.optimizer.SLOTS
        checks = [("the gradient of", kopt.GRAD_NAN, kopt.GRAD_INF),
                  ("the weight", kopt.W_NAN, kopt.W_INF)]
        checks += [(f"the optimizer's {slot} of", nan, inf) for slot, (nan, inf) in
                   zip(slots, ((kopt.S0_NAN, kopt.S0_INF), (kopt.S1_NAN, kopt.S1_INF)))]
        for what, nan, inf in checks:
            for name in self.params:
                b = bad.get(name, 0)
                if b & (nan | inf):
                    self._nonfinite(what, name, "NaN" if b & nan else "Inf", k)
        raise AssertionError(f"unexplained report bits {bad}")  # pragma: no cover

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        """Optimizer steps :meth:`fit` takes per epoch over ``n`` samples: one per batch, less a
        last one-sample batch when some BatchNormalization layer trains (it is skipped).  With
        ``scheduler_interval="step"``, ``T_max = epochs * steps_per_epoch(n, batch_size)``
        makes a cosine reach its minimum at the end of the run."""
        return -(-n // batch_size) - int(n % batch_size == 1 and bool(self.bn_train))

    def fit(self, x, y, epochs: int, batch_size: int = 64, until_epoch: int | None = None,
            on_batch=None, on_epoch=None) -> list[float]:
        """Train on arrays ``x`` (one-input models) and targets ``y`` up to epoch ``epochs``.

        ``epochs`` is the total, as in ``convrt train --epochs``: a trainer restored from a
        checkpoint taken after epoch 2 trains epochs 3..``epochs``, with the shuffle order and the
        scheduler where the interrupted run left them, so 2 + 2 resumed epochs give the same
        tensors as 4 straight ones, bit for bit.  ``until_epoch`` stops early (an interrupted
        run).  The trainer's ``scheduler``, if any, steps after each epoch or each optimizer
        step (``scheduler_interval``), before ``on_epoch`` runs, so a checkpoint written there
        holds the learning rate of the next epoch.

        Args:
            on_batch: ``f(loss, n_samples)`` after each step (progress bars;
                :attr:`last_batch_hits` has the batch's accuracy counts).
            on_epoch: ``f(epoch, mean_loss, n_samples)`` after each epoch (logging,
                checkpoints: :meth:`save_checkpoint` there records the finished epoch).

        Returns the mean training loss of each epoch trained by this call.  A batch of one
        sample is skipped when some BatchNormalization layer runs in training mode (it has no
        batch statistics).
        """
        from .data import batches

        if len(self.inputs) != 1:
            raise InputError(f"{self.source}: fit() needs a model with one input, it has "
                             f"{sorted(self.inputs)}; use step()")
        for name, v in (("epochs", epochs), ("batch_size", batch_size)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise InputError(f"{self.source}: {len(x)} inputs but {len(y)} targets")
        self._check_targets(y)
        sched = self.scheduler
        per_step = sched is not None and self.scheduler_interval == "step"
        stop = epochs if until_epoch is None else min(epochs, until_epoch)
        history = []
        while self.epoch < stop:
            seen, loss_sum = 0, 0.0
            for idx in batches(len(x), batch_size, self.shuffle_rng):
                if len(idx) < 2 and self.bn_train:
                    continue
                loss = self.step(x[idx], y[idx])
                if per_step:
                    sched.step()
                seen += len(idx)
                loss_sum += loss * len(idx)
                if on_batch is not None:
                    on_batch(loss, len(idx))
            self.epoch += 1
            if sched is not None and not per_step:
                sched.step()
            history.append(loss_sum / max(seen, 1))
            if on_epoch is not None:
                on_epoch(self.epoch, history[-1], seen)
        return history

    def _check_targets(self, y) -> None:
        """Cross-entropy targets for a whole data set, checked before the first step: class
        indices, not one-hot or probability rows (soft labels are not supported), within the
        output's classes where its shape says how many."""
        if self.loss_name != "cross_entropy":
            return
        shape = self.graph.outputs[0].shape
        if shape is not None and y.ndim == len(shape) >= 2:
            raise TrainingError(f"{self.source}: cross_entropy needs class indices of shape "
                                f"(N, ...); the targets of shape {list(y.shape)} look like soft "
                                "labels (one-hot or probability rows), which are not supported: "
                                "pass argmax(y, axis=1)")
        if y.dtype.kind == "f" and not np.all(y == np.round(y)):
            raise TrainingError(f"{self.source}: cross_entropy needs class indices; the targets "
                                f"are non-integer floats of shape {list(y.shape)} (soft labels "
                                "or probabilities are not supported: pass argmax(y, axis=1))")
        if y.dtype.kind not in "fiu":
            raise TrainingError(f"{self.source}: cross_entropy targets must be integers, got "
                                f"{y.dtype}")
        c = shape[1] if shape is not None and len(shape) > 1 else None
        ignore = getattr(self._loss, "ignore_index", None)
        if ignore is not None:  # CrossEntropyLoss(ignore_index=...): those positions are no label
            y = y[y != ignore]
        if y.size and y.min() < 0:
            raise TrainingError(f"{self.source}: label {int(y.min())} is negative; labels are "
                                "class indices from 0")
        if isinstance(c, (int, np.integer)) and y.size and y.max() >= c:
            raise TrainingError(f"{self.source}: label {int(y.max())} out of range for the "
                                f"model's {c} classes")

    # -- inference with the current weights ------------------------------------------------
    def predict(self, feeds, batch_size: int | None = None) -> np.ndarray:
        """The first output in eval mode (BN running statistics, Dropout off)."""
        feeds = self._feeds(feeds)
        return self._predict(feeds, batch_size)

    def _predict(self, feeds, batch_size):
        n = next(iter(feeds.values())).shape[0] if feeds else 0
        if batch_size is None or n <= batch_size:
            return self.program.forward(feeds, self._dynamic(), training=False, keep=False,
                                        prefix=self._prefix).env[self.output].copy()
        parts = []
        for i in range(0, n, batch_size):
            part = {k: v[i:i + batch_size] for k, v in feeds.items()}
            parts.append(self.program.forward(part, self._dynamic(), training=False,
                                              keep=False, prefix=self._prefix)
                         .env[self.output].copy())
        return np.concatenate(parts)

    def evaluate(self, feeds, targets, batch_size: int = 512) -> dict:
        """Eval-mode loss (and accuracy for cross-entropy) over a data set.

        Raises :class:`TrainingError` when some outputs are NaN/Inf (NaN inputs, or diverged
        weights): an accuracy over NaN logits (argmax picks class 0) would be a number that
        looks like a result and is not one.
        """
        feeds = self._feeds(feeds)
        pred = self._predict(feeds, batch_size)
        bad = ~np.isfinite(pred.reshape(len(pred), -1)).all(axis=1)
        if bad.any():
            cause = ("the inputs hold NaN/Inf" if any(
                a.dtype.kind == "f" and not np.isfinite(a).all() for a in feeds.values())
                else "the weights give non-finite values")
            raise TrainingError(f"{self.source}: evaluate: the outputs of {int(bad.sum())} of "
                                f"{len(pred)} samples are non-finite (first: sample "
                                f"{int(np.argmax(bad))}; {cause}); no loss or accuracy")
        loss, _ = self._loss(pred, targets)
        out = {"loss": loss}
        if self.loss_name == "cross_entropy":
            out["accuracy"] = float(np.mean(pred.argmax(axis=1) == np.asarray(targets)))
        return out

    # -- export / checkpoints ---------------------------------------------------------------
    def to_model(self):
        """The trained model as an onnx.ModelProto (eval mode: BN with the updated running
        statistics, Dropout left to inference semantics)."""
        g = self.graph
        for name, arr in list(self.params.items()) + list(self.state.items()):
            v = g.initializers[name]
            v.const = np.array(arr, dtype=v.dtype, copy=True)
        return onnx_io.from_graph(g)

    def export(self, path) -> None:
        model = self.to_model()
        try:
            onnx_io.save_model(model, path)
        except OSError as e:
            raise TrainingError(f"cannot write {path}: {e.strerror}") from None

    def _fingerprint(self):
        return {n: list(a.shape) for n, a in sorted(self._dynamic().items())}

    def save_checkpoint(self, path) -> None:
        """Weights, running statistics, optimizer state, step count, the Dropout RNG state, and
        fit()'s epoch, the scheduler's state and the shuffle RNG state (for an exact resume)."""
        arrays, index = {}, {}
        for kind, d in (("param", self.params), ("state", self.state)):
            for n, a in d.items():
                key = f"a{len(arrays)}"
                arrays[key] = a
                index[key] = [kind, n, ""]
        opt = self.optimizer.state_dict()
        for n, slots in opt.pop("state").items():
            for slot, a in slots.items():
                key = f"a{len(arrays)}"
                arrays[key] = a
                index[key] = ["opt", n, slot]
        meta = {"format": CHECKPOINT_FORMAT, "loss": self.loss_name, "step": self.step_count,
                "optimizer": opt, "rng": self.rng.bit_generator.state, "index": index,
                "epoch": self.epoch,
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "shuffle_rng": self.shuffle_rng.bit_generator.state,
                "fingerprint": self._fingerprint()}
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
        try:
            with open(path, "wb") as f:
                f.write(buf.getvalue())
        except OSError as e:
            raise TrainingError(f"cannot write checkpoint {path}: {e.strerror}") from None

    def load_checkpoint(self, path) -> None:
        """Restore what :meth:`save_checkpoint` wrote.  The optimizer's param groups come back
        with their options (as ``torch.optim.Optimizer.load_state_dict`` restores them: a
        scheduled learning rate belongs to the run being resumed), and the scheduler's state.
        A checkpoint that does not fit this trainer (other tensors, optimizer, param groups or
        scheduler) raises before anything is changed."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                arrays = {k: z[k] for k in z.files if k != "__meta__"}
        except (OSError, ValueError, KeyError) as e:
            raise TrainingError(f"cannot read checkpoint {path}: {e}") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path}: not a convrt training checkpoint")
        if meta["fingerprint"] != self._fingerprint():
            raise TrainingError(f"{path}: the checkpoint's tensors do not match this model's "
                                "trainable tensors and running statistics")
        sched = meta.get("scheduler")
        mine = None if self.scheduler is None else type(self.scheduler).__name__
        theirs = None if sched is None else sched.get("kind")
        if mine != theirs:
            raise TrainingError(f"{path}: the checkpoint was written with scheduler {theirs}, "
                                f"this trainer has {mine}; resume with the same scheduler")
        if self.scheduler is not None:
            try:
                self.scheduler.check_state(sched)
            except TrainingError as e:
                raise TrainingError(f"{path}: {e}") from None
        opt = dict(meta["optimizer"])
        opt["state"] = {}
        for key, (kind, name, slot) in meta["index"].items():
            if kind == "opt":
                opt["state"].setdefault(name, {})[slot] = arrays[key]
        try:  # raises, changing nothing, on another optimizer or other param groups
            self.optimizer.load_state_dict(opt)
        except TrainingError as e:
            raise TrainingError(f"{path}: {e}") from None
        if self.scheduler is not None:
            self.scheduler.load_state_dict(sched)
        for key, (kind, name, slot) in meta["index"].items():
            if kind == "param":
                self.params[name][...] = arrays[key]
            elif kind == "state":
                self.state[name][...] = arrays[key]
        self.step_count = int(meta["step"])
        self.rng.bit_generator.state = meta["rng"]
        # fit()'s position (absent from checkpoints written before it existed: start afresh)
        self.epoch = int(meta.get("epoch", 0))
        if "shuffle_rng" in meta:
            self.shuffle_rng.bit_generator.state = meta["shuffle_rng"]
