"""Losses on the model's first output: value and gradient, computed in float64.

* ``mse``: mean over all elements of ``(pred - target) ** 2`` (PyTorch ``MSELoss()``).
* ``cross_entropy``: softmax cross-entropy on logits ``(N, C)`` or ``(N, C, d1, ...)`` with
  integer labels ``(N,)`` / ``(N, d1, ...)``, mean over the labelled positions; a stable
  log-sum-exp.  Equals ONNX ``SoftmaxCrossEntropyLoss(reduction="mean")`` and PyTorch
  ``CrossEntropyLoss()``.
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


LOSSES = {"mse": mse, "cross_entropy": cross_entropy}


def get_loss(name: str):
    fn = LOSSES.get(name)
    if fn is None:
        raise TrainingError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return fn
