"""Losses on the model's first output: value and gradient, computed in float64.

* ``mse``: mean over all elements of ``(pred - target) ** 2`` (PyTorch ``MSELoss()``).
* ``cross_entropy``: softmax cross-entropy on logits ``(N, C)`` or ``(N, C, d1, ...)`` with
  integer labels ``(N,)`` / ``(N, d1, ...)``, mean over the labelled positions; a stable
  log-sum-exp.  Equals ONNX ``SoftmaxCrossEntropyLoss(reduction="mean")`` and PyTorch
  ``CrossEntropyLoss()``.
* :class:`CrossEntropyLoss` adds PyTorch's ``weight`` (per class), ``ignore_index`` and
  ``label_smoothing`` with ``torch.nn.CrossEntropyLoss``'s exact mean: the weighted sum over the
  kept positions divided by the sum of their targets' weights; the smoothing term is
  ``-sum_c w_c log p_c / C`` per position, under the same denominator.
"""

from __future__ import annotations

import numpy as np

from ..errors import TrainingError


def _check_batch(pred, target, what):
    if target.ndim == 0 or target.shape[0] != pred.shape[0]:
        raise TrainingError(f"{what}: batch of {target.shape[0] if target.ndim else 'scalar'} "
                            f"targets for a prediction batch of {pred.shape[0]}")


def mse(pred: np.ndarray, target) -> tuple[float, np.ndarray]:
    target = np.asarray(target)
    if target.dtype.kind not in "fiu":
        raise TrainingError(f"mse: targets must be numeric, got {target.dtype}")
    _check_batch(pred, target, "mse")
    if target.shape != pred.shape:
        raise TrainingError(f"mse: target shape {list(target.shape)} differs from the "
                            f"prediction's {list(pred.shape)}")
    d = pred.astype(np.float64) - target.astype(np.float64)
    loss = float(np.mean(d * d))
    return loss, (d * (2.0 / d.size)).astype(pred.dtype)


def log_softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    z = logits.astype(np.float64)
    m = z.max(axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


def cross_entropy(logits: np.ndarray, labels) -> tuple[float, np.ndarray]:
    labels = np.asarray(labels)
    if labels.shape == logits.shape and logits.ndim >= 2 and logits.shape[1] > 1:
        # one-hot or probability rows: say so, rather than report a shape mismatch
        raise TrainingError(f"cross_entropy: the targets have the logits' shape "
                            f"{list(logits.shape)}: soft labels (one-hot or probability rows) "
                            "are not supported; pass class indices (argmax over axis 1)")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise TrainingError(f"cross_entropy: labels must be integers, got {labels.dtype}")
    if logits.ndim < 2:
        raise TrainingError(f"cross_entropy: logits must be (N, C, ...), got shape "
                            f"{list(logits.shape)}")
    _check_batch(logits, labels, "cross_entropy")
    want = (logits.shape[0],) + logits.shape[2:]
    if labels.shape != want:
        raise TrainingError(f"cross_entropy: labels of shape {list(labels.shape)} for logits "
                            f"{list(logits.shape)} (expected {list(want)})")
    c = logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        bad = labels[(labels < 0) | (labels >= c)].reshape(-1)[0]
        raise TrainingError(f"cross_entropy: label {int(bad)} out of range for {c} classes")
    logp = log_softmax(logits, axis=1)
    lab = np.expand_dims(labels.astype(np.int64), 1)
    picked = np.take_along_axis(logp, lab, axis=1)
    count = labels.size
    loss = float(-picked.sum() / count)
    grad = np.exp(logp)
    np.put_along_axis(grad, lab, np.take_along_axis(grad, lab, axis=1) - 1.0, axis=1)
    return loss, (grad / count).astype(logits.dtype)


class CrossEntropyLoss:
    """``torch.nn.CrossEntropyLoss(weight, ignore_index, label_smoothing)`` (mean reduction) on
    logits ``(N, C, ...)`` and class indices; ``Trainer(loss=CrossEntropyLoss(...))``."""

    name = "cross_entropy"

    def __init__(self, weight=None, ignore_index: int = -100, label_smoothing: float = 0.0):
        from ..errors import InputError

        eps = float(label_smoothing)
        if not 0.0 <= eps <= 1.0:
            raise InputError(f"label_smoothing {label_smoothing!r} must lie in [0, 1]")
        self.label_smoothing = eps
        self.ignore_index = int(ignore_index)
        self.weight = None
        if weight is not None:
            w = np.asarray(weight, np.float64)
            if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any():
                raise InputError("weight must be a 1-D array of finite non-negative numbers, one "
                                 "per class")
            self.weight = w

    def __call__(self, logits: np.ndarray, labels) -> tuple[float, np.ndarray]:
        labels = np.asarray(labels)
        keep = labels != self.ignore_index
        if self.weight is None and self.label_smoothing == 0.0 and keep.all():
            return cross_entropy(logits, labels)
        c = logits.shape[1] if logits.ndim >= 2 else 0
        if self.weight is not None and self.weight.shape[0] != c:
            raise TrainingError(f"cross_entropy: {self.weight.shape[0]} class weights for {c} "
                                "classes")
        safe = np.where(keep, labels, 0) if labels.dtype.kind in "iuf" else labels
        cross_entropy(logits, safe)  # every check on shapes, dtypes and ranges
        lab = np.expand_dims(safe.astype(np.int64), 1)
        kept = np.expand_dims(keep, 1)
        w = np.ones(c) if self.weight is None else self.weight
        wshape = (1, c) + (1,) * (logits.ndim - 2)
        wc = w.reshape(wshape)
        w_t = np.where(kept, np.take_along_axis(np.broadcast_to(wc, logits.shape), lab, axis=1),
                       0.0)  # each kept position's target weight
        denom = w_t.sum()
        logp = log_softmax(logits, axis=1)
        eps = self.label_smoothing
        nll = -(w_t * np.take_along_axis(logp, lab, axis=1)).sum()
        smooth = -(np.where(kept, wc * logp, 0.0)).sum()
        loss = float(((1 - eps) * nll + eps / c * smooth) / denom)
        p = np.exp(logp)
        grad = (1 - eps) * w_t * p
        np.put_along_axis(grad, lab, np.take_along_axis(grad, lab, axis=1) - (1 - eps) * w_t,
                          axis=1)
        grad += np.where(kept, eps / c * (wc.sum() * p - wc), 0.0)
        return loss, (grad / denom).astype(logits.dtype)


LOSSES = {"mse": mse, "cross_entropy": cross_entropy}


def get_loss(name):
    """A loss by name, or a loss object (:class:`CrossEntropyLoss`) as it is."""
    if callable(name) and hasattr(name, "name"):
        return name
    fn = LOSSES.get(name)
    if fn is None:
        raise TrainingError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return fn
