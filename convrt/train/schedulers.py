"""Learning-rate schedulers in ``torch.optim.lr_scheduler``'s spirit, for convrt's optimizers.

    opt = SGD(lr=0.1, momentum=0.9)
    sched = SequentialLR(opt, [LinearLR(opt, start_factor=0.1, total_iters=2),
                               CosineAnnealingLR(opt, T_max=8)], milestones=[2])
    tr = Trainer("model.onnx", optimizer=opt, scheduler=sched)   # stepped once per epoch
    tr.fit(x, y, epochs=10)

As in PyTorch, building a scheduler records each param group's ``initial_lr`` and sets the
epoch-0 learning rate at once; every :meth:`LRScheduler.step` moves one epoch (or one optimizer
step: who calls ``step()`` decides; :class:`~.trainer.Trainer` does it per epoch, or per step
with ``scheduler_interval="step"``).

Each scheduler computes the learning rate in closed form from the group's ``initial_lr`` and
``last_epoch`` (torch's ``_get_closed_form_lr``), not by multiplying the previous value as
torch's chainable ``get_lr`` does: the two agree to rounding (the tests compare with torch's
recorded sequences), and the closed form makes the state two numbers, so a checkpoint restores
the exact learning rate and a resumed run is bitwise the uninterrupted one.  For the same reason
the trainer can split the optimizer into param groups after a scheduler was built on it:
:meth:`LRScheduler.refresh` applies the current epoch to the new groups.
"""

from __future__ import annotations

import bisect
import math

from ..errors import InputError, TrainingError
from .optim import Optimizer


def _int(where: str, what: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{where}: {what} must be an integer >= {low}, got {value!r}")
    return value


def _float(where: str, what: str, value, low: float, high: float, low_open=False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and (low < v if low_open else low <= v) and v <= high):
        raise InputError(f"{where}: {what} {value!r} must lie in "
                         f"{'(' if low_open else '['}{low:g}, {high:g}]")
    return v


class LRScheduler:
    """Base class: subclasses define ``lr_at(base_lr, epoch)`` and list their options in
    ``config`` (what :meth:`state_dict` saves besides ``last_epoch``)."""

    config: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise InputError(f"{type(self).__name__}: needs a convrt.train optimizer, got "
                             f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.last_epoch = -1
        self.step()  # torch's initial step: the epoch-0 learning rate, set now

    @property
    def base_lrs(self) -> list[float]:
        """Each group's ``initial_lr`` (its learning rate when first scheduled)."""
        return [g.setdefault("initial_lr", g["lr"]) for g in self.optimizer.param_groups]

    def lr_at(self, base_lr: float, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch (or step) and set every group's learning rate."""
        self.last_epoch += 1
        self.refresh()

    def refresh(self) -> None:
        """Set every group's learning rate for ``last_epoch`` (after the groups changed)."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """JSON-able: the class, ``last_epoch`` and the options."""
        return {"kind": type(self).__name__, "last_epoch": self.last_epoch,
                **{k: getattr(self, k) for k in self.config}}

    def check_state(self, d: dict) -> None:
        """Raise unless :meth:`load_state_dict` can take ``d`` (checked before anything
        changes, so a refused checkpoint leaves the scheduler as it was)."""
        if not isinstance(d, dict) or d.get("kind") != type(self).__name__:
            kind = d.get("kind") if isinstance(d, dict) else None
            raise TrainingError(f"the checkpoint holds a {kind} scheduler's state, the "
                                f"trainer has a {type(self).__name__}")
        missing = [k for k in ("last_epoch",) + self.config if k not in d]
        if missing:
            raise TrainingError(f"the checkpoint's {type(self).__name__} state lacks "
                                f"'{missing[0]}'")

    def load_state_dict(self, d: dict) -> None:
        """Restore ``last_epoch`` and the options (the checkpoint's win, as in torch) and set
        the groups' learning rates for it."""
        self.check_state(d)
        for k in self.config:
            setattr(self, k, d[k])
        self.last_epoch = int(d["last_epoch"])
        self.refresh()


class StepLR(LRScheduler):
    """``lr = initial_lr * gamma ** (epoch // step_size)`` (torch.optim.lr_scheduler.StepLR)."""

    config = ("step_size", "gamma")

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        self.step_size = _int("StepLR", "step_size", step_size, 1)
        self.gamma = _float("StepLR", "gamma", gamma, 0.0, math.inf)
        super().__init__(optimizer)

    def lr_at(self, base, epoch):
        return base * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """``lr = initial_lr * gamma ** (number of milestones <= epoch)``."""

    config = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma: float = 0.1):
        ms = [_int("MultiStepLR", "a milestone", m, 1) for m in milestones]
        if ms != sorted(set(ms)):
            raise InputError(f"MultiStepLR: milestones must increase, got {list(milestones)}")
        self.milestones = ms
        self.gamma = _float("MultiStepLR", "gamma", gamma, 0.0, math.inf)
        super().__init__(optimizer)

    def lr_at(self, base, epoch):
        return base * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """``lr = initial_lr * gamma ** epoch``."""

    config = ("gamma",)

    def __init__(self, optimizer, gamma: float):
        self.gamma = _float("ExponentialLR", "gamma", gamma, 0.0, math.inf)
        super().__init__(optimizer)

    def lr_at(self, base, epoch):
        return base * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2``: from the
    initial rate at epoch 0 to ``eta_min`` at ``T_max`` (and back up after, as torch's)."""

    config = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803 (torch's)
        self.T_max = _int("CosineAnnealingLR", "T_max", T_max, 1)
        self.eta_min = _float("CosineAnnealingLR", "eta_min", eta_min, 0.0, math.inf)
        super().__init__(optimizer)

    def lr_at(self, base, epoch):
        return self.eta_min + (base - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearLR(LRScheduler):
    """The factor goes linearly from ``start_factor`` to ``end_factor`` over ``total_iters``
    epochs, then stays: a warmup with ``start_factor < 1``."""

    config = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5):
        self.start_factor = _float("LinearLR", "start_factor", start_factor, 0.0, 1.0,
                                   low_open=True)
        self.end_factor = _float("LinearLR", "end_factor", end_factor, 0.0, 1.0)
        self.total_iters = _int("LinearLR", "total_iters", total_iters, 1)
        super().__init__(optimizer)

    def lr_at(self, base, epoch):
        t = min(epoch, self.total_iters)
        return base * (self.start_factor
                       + (self.end_factor - self.start_factor) * t / self.total_iters)


class SequentialLR(LRScheduler):
    """``schedulers[i]`` from epoch ``milestones[i - 1]`` on, counting its own epochs from 0
    there (torch's SequentialLR): ``[LinearLR(...), CosineAnnealingLR(...)]`` with
    ``milestones=[warmup]`` is the usual warmup-then-decay."""

    def __init__(self, optimizer, schedulers, milestones):
        schedulers, ms = list(schedulers), list(milestones)
        if not schedulers or not all(isinstance(s, LRScheduler) for s in schedulers):
            raise InputError("SequentialLR: schedulers must be a non-empty list of convrt "
                             "schedulers")
        if any(s.optimizer is not optimizer for s in schedulers):
            raise InputError("SequentialLR: every scheduler must belong to its optimizer")
        if len(ms) != len(schedulers) - 1:
            raise InputError(f"SequentialLR: {len(schedulers)} schedulers need "
                             f"{len(schedulers) - 1} milestones, got {len(ms)}")
        ms = [_int("SequentialLR", "a milestone", m, 1) for m in ms]
        if ms != sorted(set(ms)):
            raise InputError(f"SequentialLR: milestones must increase, got {list(milestones)}")
        self.schedulers, self.milestones = schedulers, ms
        super().__init__(optimizer)

    def _current(self):
        i = bisect.bisect_right(self.milestones, self.last_epoch)
        return self.schedulers[i], self.last_epoch - (self.milestones[i - 1] if i else 0)

    def refresh(self) -> None:
        sched, local = self._current()
        sched.last_epoch = local
        sched.refresh()

    def state_dict(self) -> dict:
        return {"kind": "SequentialLR", "last_epoch": self.last_epoch,
                "milestones": self.milestones,
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def check_state(self, d: dict) -> None:
        super().check_state(d)
        subs = d.get("schedulers")
        if not isinstance(subs, list) or len(subs) != len(self.schedulers) or \
                "milestones" not in d:
            raise TrainingError(f"the checkpoint's SequentialLR state does not hold "
                                f"{len(self.schedulers)} schedulers and their milestones")
        for s, sd in zip(self.schedulers, subs):
            s.check_state(sd)

    def load_state_dict(self, d: dict) -> None:
        self.check_state(d)
        for s, sd in zip(self.schedulers, d["schedulers"]):
            s.load_state_dict(sd)
        self.milestones = list(d["milestones"])
        self.last_epoch = int(d["last_epoch"])
        self.refresh()
