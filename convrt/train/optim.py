"""Optimizers with PyTorch's exact update rules (``torch.optim`` defaults, no amsgrad).

* :class:`SGD`: ``g = grad + wd * p``; with momentum ``buf = g`` on the first step, then
  ``buf = momentum * buf + (1 - dampening) * g``; Nesterov uses ``g + momentum * buf``, else
  ``buf``; ``p -= lr * step``.
* :class:`Adam`: L2 in the gradient (``g = grad + wd * p``), ``m = b1 m + (1 - b1) g``,
  ``v = b2 v + (1 - b2) g^2``, ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
* :class:`AdamW`: decoupled decay ``p *= 1 - lr * wd`` first, then Adam without L2.

State is per parameter name; ``state_dict``/``load_state_dict`` round-trip it for checkpoints.
Updates are in place, in the parameter's dtype.  ``snapshot``/``restore`` let the trainer undo a
step whose result is not finite, so a diverging run never keeps a NaN.

Arguments are checked at construction as ``torch.optim`` does (a negative or non-finite learning
rate, momentum, weight decay or eps, betas outside [0, 1)): a wrong one is a one-line
:class:`~convrt.errors.InputError` there rather than a silent divergence many steps later.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError, TrainingError


class Optimizer:
    name = "optimizer"

    def __init__(self, lr: float):
        self.lr = self._check("learning rate", lr)
        self.t = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for name, p in params.items():
            g = grads.get(name)
            if g is not None:
                self._update(name, p, g.astype(p.dtype, copy=False))

    def _check(self, what: str, value, low: float = 0.0, high: float = math.inf,
               high_open: bool = False) -> float:
        """``value`` as a float in [low, high] (or [low, high)), else a one-line InputError."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{self.name}: {what} must be a number, got {value!r}") from None
        ok = math.isfinite(v) and low <= v and (v < high if high_open else v <= high)
        if not ok:
            if high_open:
                bound = f"lie in [{low:g}, {high:g})"
            elif high == math.inf:
                bound = f"be a finite number >= {low:g}"
            else:
                bound = f"lie in [{low:g}, {high:g}]"
            raise InputError(f"{self.name}: {what} {value!r} must {bound}")
        return v

    def snapshot(self):
        """A copy of the step count and state, for :meth:`restore` (undoing one step)."""
        return self.t, {n: {k: v.copy() for k, v in s.items()} for n, s in self.state.items()}

    def restore(self, snap) -> None:
        self.t, self.state = snap[0], snap[1]

    def _update(self, name, p, g):  # pragma: no cover - abstract
        raise NotImplementedError

    def hyper(self) -> dict:
        return {"lr": self.lr}

    def state_dict(self) -> dict:
        return {"name": self.name, "t": self.t, "hyper": self.hyper(),
                "state": {n: {k: v.copy() for k, v in s.items()} for n, s in self.state.items()}}

    def load_state_dict(self, d: dict) -> None:
        if d.get("name") != self.name:
            raise TrainingError(f"checkpoint holds {d.get('name')} state, the trainer uses "
                                f"{self.name}")
        self.t = int(d["t"])
        self.state = {n: {k: np.array(v) for k, v in s.items()} for n, s in d["state"].items()}


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(lr)
        self.momentum = self._check("momentum", momentum)
        self.dampening = self._check("dampening", dampening, high=1.0)
        self.weight_decay = self._check("weight_decay", weight_decay)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise InputError("sgd: Nesterov momentum needs momentum > 0 and dampening 0")
        self.nesterov = bool(nesterov)

    def hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def _update(self, name, p, g):
        dt = p.dtype.type
        if self.weight_decay:
            g = g + dt(self.weight_decay) * p
        if self.momentum:
            st = self.state.get(name)
            if st is None:
                buf = self.state.setdefault(name, {})["momentum_buffer"] = g.copy()
            else:
                buf = st["momentum_buffer"]
                buf *= dt(self.momentum)
                buf += dt(1 - self.dampening) * g
            g = g + dt(self.momentum) * buf if self.nesterov else buf
        p -= dt(self.lr) * g


class Adam(Optimizer):
    name = "adam"
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise InputError(f"{self.name}: betas must be a pair, got {betas!r}") from None
        self.betas = (self._check("beta1", b1, high=1.0, high_open=True),
                      self._check("beta2", b2, high=1.0, high_open=True))
        self.eps = self._check("eps", eps)
        self.weight_decay = self._check("weight_decay", weight_decay)

    def hyper(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    def _update(self, name, p, g):
        dt = p.dtype.type
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p *= dt(1 - self.lr * self.weight_decay)
            else:
                g = g + dt(self.weight_decay) * p
        st = self.state.get(name)
        if st is None:
            st = self.state[name] = {"exp_avg": np.zeros_like(p), "exp_avg_sq": np.zeros_like(p)}
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= dt(b1)
        m += dt(1 - b1) * g
        v *= dt(b2)
        v += dt(1 - b2) * g * g
        bc1 = 1 - b1 ** self.t
        bc2 = 1 - b2 ** self.t
        denom = np.sqrt(v) / dt(math.sqrt(bc2)) + dt(self.eps)
        p -= dt(self.lr / bc1) * (m / denom)


class AdamW(Adam):
    name = "adamw"
    decoupled = True

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
