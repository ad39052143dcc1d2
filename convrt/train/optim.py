"""Optimizers with PyTorch's exact update rules (``torch.optim`` defaults, no amsgrad).

* :class:`SGD`: ``g = grad + wd * p``; with momentum ``buf = g`` on the first step, then
  ``buf = momentum * buf + (1 - dampening) * g``; Nesterov uses ``g + momentum * buf``, else
  ``buf``; ``p -= lr * step``.
* :class:`Adam`: L2 in the gradient (``g = grad + wd * p``), ``m = b1 m + (1 - b1) g``,
  ``v = b2 v + (1 - b2) g^2``, ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
* :class:`AdamW`: decoupled decay ``p *= 1 - lr * wd`` first, then Adam without L2.

State is per parameter name; ``state_dict``/``load_state_dict`` round-trip it for checkpoints.
Updates are in place, in the parameter's dtype.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import TrainingError


class Optimizer:
    name = "optimizer"

    def __init__(self, lr: float):
        if not lr >= 0.0:
            raise TrainingError(f"{self.name}: learning rate {lr} must be >= 0")
        self.lr = float(lr)
        self.t = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for name, p in params.items():
            g = grads.get(name)
            if g is not None:
                self._update(name, p, g.astype(p.dtype, copy=False))

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
        if nesterov and (momentum <= 0 or dampening != 0):
            raise TrainingError("sgd: Nesterov momentum needs momentum > 0 and dampening 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

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
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise TrainingError(f"{self.name}: betas {betas} must lie in [0, 1)")
        self.betas, self.eps, self.weight_decay = (b1, b2), float(eps), float(weight_decay)

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
