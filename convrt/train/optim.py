"""Optimizers with PyTorch's exact update rules (``torch.optim`` defaults, no amsgrad).

* :class:`SGD`: ``g = grad + wd * p``; with momentum ``buf = g`` on the first step, then
  ``buf = momentum * buf + (1 - dampening) * g``; Nesterov uses ``g + momentum * buf``, else
  ``buf``; ``p -= lr * step``.
* :class:`Adam`: L2 in the gradient (``g = grad + wd * p``), ``m = b1 m + (1 - b1) g``,
  ``v = b2 v + (1 - b2) g^2``, ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
* :class:`AdamW`: decoupled decay ``p *= 1 - lr * wd`` first, then Adam without L2.

Hyperparameters live in ``param_groups``, as in ``torch.optim``: a list of dicts, each holding
``"params"`` (parameter names) and every option (``lr``, ``weight_decay``, ...).  A fresh
optimizer has one group whose ``"params"`` is None, meaning every parameter given to
:meth:`Optimizer.step`; :meth:`Optimizer.set_param_groups` (which the :class:`~.trainer.Trainer`
calls for its ``param_groups`` argument) splits the parameters into groups with their own
options.  Learning-rate schedulers (:mod:`.schedulers`) write each group's ``"lr"``.

State is per parameter name; ``state_dict``/``load_state_dict`` round-trip it and the groups for
checkpoints.  Updates are in place, in the parameter's dtype, one fused pass per parameter
(``kernels/optim.py``); :meth:`Optimizer.check` runs the same formulas without writing and
reports what would become non-finite, so the trainer keeps a diverging step from changing
anything without copying a single array.  SGD mostly answers that without reading the weights:
it carries upper bounds on each parameter's and momentum buffer's largest magnitude from step to
step (each update returns its gradient's largest magnitude) and runs the exact dry run only when
the bounds allow a value near overflow; a ResNet-18 step thereby reads 90 MB less.  The bounds
describe the arrays as the optimizer last wrote them: ``load_state_dict`` and ``restore`` drop
them, and so must code that writes a parameter in place between steps (:meth:`SGD.forget`).

Arguments are checked at construction as ``torch.optim`` does (a negative or non-finite learning
rate, momentum, weight decay or eps, betas outside [0, 1)): a wrong one is a one-line
:class:`~convrt.errors.InputError` there rather than a silent divergence many steps later.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError, TrainingError
from .kernels import optim as kopt


def _check(where: str, what: str, value, low: float = 0.0, high: float = math.inf,
           high_open: bool = False) -> float:
    """``value`` as a float in [low, high] (or [low, high)), else a one-line InputError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} must be a number, got {value!r}") from None
    ok = math.isfinite(v) and low <= v and (v < high if high_open else v <= high)
    if not ok:
        if high_open:
            bound = f"lie in [{low:g}, {high:g})"
        elif high == math.inf:
            bound = f"be a finite number >= {low:g}"
        else:
            bound = f"lie in [{low:g}, {high:g}]"
        raise InputError(f"{where}: {what} {value!r} must {bound}")
    return v


class Optimizer:
    name = "optimizer"

    def __init__(self, **defaults):
        self.defaults = self._validate(defaults, self.name)
        self.param_groups: list[dict] = [dict(self.defaults, params=None)]
        self.t = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def _validate(self, hyper: dict, where: str) -> dict:  # pragma: no cover - abstract
        """The options checked and normalized; ``where`` starts each error message."""
        raise NotImplementedError

    # -- groups ------------------------------------------------------------------------------
    def set_param_groups(self, groups) -> None:
        """Replace the groups: ``[{"params": [names], "lr": ..., ...}, ...]``; options a group
        leaves out take the optimizer's own (``defaults``).  Names must be disjoint (the
        trainer's pattern resolution guarantees it); the optimizer's state is kept."""
        out, seen = [], set()
        for i, g in enumerate(groups):
            if not isinstance(g, dict) or "params" not in g:
                raise InputError(f"{self.name}: param group {i} must be a dict with 'params'")
            opts = {k: v for k, v in g.items() if k not in ("params", "initial_lr")}
            unknown = sorted(set(opts) - set(self.defaults))
            if unknown:
                raise InputError(f"{self.name}: param group {i}: unknown option '{unknown[0]}' "
                                 f"(options: {', '.join(self.defaults)})")
            group = self._validate({**self.defaults, **opts}, f"{self.name} param group {i}")
            group["params"] = list(g["params"])
            if "initial_lr" in g:
                group["initial_lr"] = g["initial_lr"]
            dup = seen.intersection(group["params"])
            if dup:
                raise InputError(f"{self.name}: '{sorted(dup)[0]}' is in more than one param "
                                 "group")
            seen.update(group["params"])
            out.append(group)
        if not out:
            raise InputError(f"{self.name}: no param groups")
        self.param_groups = out

    @property
    def lr(self) -> float:
        """The learning rate when every group has the same one (the single-group case)."""
        lrs = {g["lr"] for g in self.param_groups}
        if len(lrs) != 1:
            raise TrainingError(f"{self.name}: the param groups have different learning rates "
                                f"{[g['lr'] for g in self.param_groups]}; read "
                                "param_groups[i]['lr']")
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value) -> None:
        """Set every group's learning rate (what one ``lr`` means without groups)."""
        v = _check(self.name, "learning rate", value)
        for g in self.param_groups:
            g["lr"] = v

    def _groups_for(self, names):
        """(group, names of ``names`` in it) for every group; a ``params`` of None takes every
        name no other group lists."""
        listed = {n for g in self.param_groups if g["params"] is not None for n in g["params"]}
        for g in self.param_groups:
            if g["params"] is None:
                yield g, [n for n in names if n not in listed]
            else:
                yield g, [n for n in g["params"] if n in names]

    # -- stepping ----------------------------------------------------------------------------
    SLOTS: tuple = ()  # names of the per-parameter state arrays, as the report bits number them

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update ``params`` in place (one fused pass per parameter)."""
        self.t += 1
        self._each(params, grads, True)

    def check(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict:
        """What :meth:`step` would make non-finite, changing nothing: ``{name: bits}`` for the
        parameters whose gradient, new value or new optimizer slot would be NaN/Inf (the bits of
        ``kernels/optim.py``).  The trainer calls it before ``step`` so that a diverging step
        keeps every tensor as it was without copying any."""
        check_one = self.checker(params)
        bits = {n: check_one(n, g) for n, g in grads.items() if n in params}
        return {n: b for n, b in bits.items() if b}

    def checker(self, params: dict[str, np.ndarray]):
        """``check`` one parameter at a time: a function ``(name, gradient) -> bits`` (0 when
        every new value would be finite) for the names of ``params``, to call while each
        gradient is still in the caches (``Trainer`` calls it from the backward walk)."""
        groups = {n: g for g, names in self._groups_for(params) for n in names}

        def check_one(name, g):
            group = groups.get(name)
            if group is None or g is None:
                return 0
            p = params[name]
            self.t += 1  # the step being checked
            try:
                return self._update(name, p, np.ascontiguousarray(g, dtype=p.dtype).reshape(-1),
                                    group, False)
            finally:
                self.t -= 1
        return check_one

    def _each(self, params, grads, commit: bool) -> dict:
        bits = {}
        for group, names in self._groups_for(params):
            for name in names:
                g = grads.get(name)
                if g is not None:
                    p = params[name]
                    if not p.flags.c_contiguous:  # pragma: no cover - params are C arrays
                        raise TrainingError(f"{self.name}: parameter '{name}' is not contiguous")
                    g = np.ascontiguousarray(g, dtype=p.dtype).reshape(-1)
                    bits[name] = self._update(name, p, g, group, commit)
        return bits

    def _update(self, name, p, g, group, commit):  # pragma: no cover - abstract
        """One parameter's update (``p`` the parameter, ``g`` its flat gradient); writes only
        with ``commit``; returns the report bits.  Slots take the parameter's shape."""
        raise NotImplementedError

    def forget(self) -> None:
        """Forget what this optimizer knows about the parameters' values (SGD's magnitude
        bounds); call it after writing a parameter in place between steps."""

    def snapshot(self):
        """A copy of the step count and state, for :meth:`restore` (undoing one step)."""
        return self.t, {n: {k: v.copy() for k, v in s.items()} for n, s in self.state.items()}

    def restore(self, snap) -> None:
        self.t, self.state = snap[0], snap[1]
        self.forget()

    # -- checkpoints -------------------------------------------------------------------------
    def hyper(self) -> dict:
        return dict(self.defaults)

    def state_dict(self) -> dict:
        """JSON-able groups (names and options, ``initial_lr`` included) and the per-name
        arrays."""
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
                  for g in self.param_groups]
        return {"name": self.name, "t": self.t, "hyper": self.hyper(), "param_groups": groups,
                "state": {n: {k: v.copy() for k, v in s.items()} for n, s in self.state.items()}}

    def load_state_dict(self, d: dict) -> None:
        """Restore the state, and every group's options as ``torch.optim`` does (a scheduled
        learning rate's current value belongs to the run being resumed).  The groups must hold
        the same parameters as the checkpoint's."""
        if d.get("name") != self.name:
            raise TrainingError(f"checkpoint holds {d.get('name')} state, the trainer uses "
                                f"{self.name}")
        groups = d.get("param_groups")
        if groups is None:  # written before param groups existed: one lr for all
            groups = [dict(self.param_groups[0], lr=d["hyper"]["lr"])]
        mine = [g["params"] for g in self.param_groups]
        theirs = [g["params"] for g in groups]
        if mine != theirs:
            raise TrainingError(f"the checkpoint's {len(theirs)} param groups hold other "
                                f"parameters than this optimizer's {len(mine)}")
        self.param_groups = [
            {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
        self.t = int(d["t"])
        self.state = {n: {k: np.array(v) for k, v in s.items()} for n, s in d["state"].items()}
        self.forget()


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)
        # name -> (the parameter's data address, bound on max |p|, bound on max |buf|)
        self._bounds: dict[str, tuple] = {}

    def _validate(self, h, where):
        out = {"lr": _check(where, "learning rate", h["lr"]),
               "momentum": _check(where, "momentum", h["momentum"]),
               "dampening": _check(where, "dampening", h["dampening"], high=1.0),
               "weight_decay": _check(where, "weight_decay", h["weight_decay"]),
               "nesterov": bool(h["nesterov"])}
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise InputError(f"{where}: Nesterov momentum needs momentum > 0 and dampening 0")
        return out

    SLOTS = ("momentum_buffer",)

    def _update(self, name, p, g, group, commit):
        dt = p.dtype.type
        momentum = group["momentum"]
        st = self.state.get(name)
        first = st is None
        buf = p  # a placeholder the kernel neither reads (first step) nor writes (no momentum)
        if momentum and not first:
            buf = st["momentum_buffer"]
        elif momentum and commit:
            buf = np.empty_like(p)
        hyper = (dt(group["lr"]), dt(group["weight_decay"]), dt(momentum),
                 dt(1 - group["dampening"]), bool(group["nesterov"]), first)
        args = (p.reshape(-1), g, buf.reshape(-1)) + hyper
        if not commit:
            slot = buf if momentum and not first else None
            if self._fits(name, p, slot, kopt.magnitude(g), hyper):
                return 0
            return kopt.dry_run(kopt.sgd_check, kopt.sgd_kinds, args)
        gbits, mask = kopt.bits_of(g)
        gmax = kopt.sgd_apply(*args, bool(momentum), gbits, mask)
        known = self._bounds.pop(name, None)
        if known is not None and known[0] == p.ctypes.data and gmax.size:
            top, w, nb = _sgd_bounds(known[1], known[2],
                                     kopt.magnitude_of_bits(gmax.max(), p.dtype), hyper)
            if _below_overflow(top, p.dtype):  # then no value overflowed, and these bound them
                self._bounds[name] = (p.ctypes.data, w, nb)
        if momentum and first:
            self.state[name] = {"momentum_buffer": buf}
        return 0

    def _fits(self, name, p, buf, g_max, hyper) -> bool:
        """Whether every value of this update is finite, from bounds alone: ``max |g|``
        (``g_max``) and bounds on ``max |p|`` and ``max |buf|`` (measured here when unknown or
        too loose, then carried through each update by :meth:`_update`).  True only when no
        intermediate of ``_sgd_value`` can come near overflow, so a step whose values might
        not be finite always takes the exact dry run."""
        if p.dtype not in _LIMIT or not math.isfinite(g_max):
            return False
        known = self._bounds.get(name)
        if known is not None and known[0] == p.ctypes.data and \
                _below_overflow(_sgd_bounds(known[1], known[2], g_max, hyper)[0], p.dtype):
            return True
        # unknown, or grown too loose: the exact magnitudes (one read of each array)
        known = self._bounds[name] = (p.ctypes.data, kopt.magnitude(p),
                                      0.0 if buf is None else kopt.magnitude(buf))
        return _below_overflow(_sgd_bounds(known[1], known[2], g_max, hyper)[0], p.dtype)

    def forget(self) -> None:
        """Drop the magnitude bounds (measured again at the next check): they describe the
        arrays as this optimizer last wrote them, so new state, a restored snapshot or a
        parameter written in place from outside makes them unknown."""
        self._bounds.clear()


# a quarter of each float type's largest value: the margin below overflow that the bounds need
_LIMIT = {np.dtype(t): float(np.finfo(t).max) / 4 for t in (np.float16, np.float32, np.float64)}


def _sgd_bounds(p_max, buf_max, g_max, hyper):
    """(largest intermediate, new ``max |p|``, new ``max |buf|``) of ``_sgd_value`` over
    elements with ``|p| <= p_max``, ``|buf| <= buf_max``, ``|g| <= g_max``, in float64 (each
    float operation rounds by at most half an ulp, far inside :func:`_below_overflow`'s
    margin).  The hyperparameters are the dtype-rounded values the kernel uses; a non-finite
    one (a huge lr rounded to float32 inf) makes the result inf."""
    lr, wd, m, damp1, nesterov, first = (float(v) for v in hyper)
    d = g_max + wd * p_max
    nb, s = 0.0, d
    if m != 0:
        nb = d if first else buf_max * m + damp1 * d
        s = d + m * nb if nesterov else nb
    w = p_max + lr * s
    terms = (lr, wd, m, damp1, wd * p_max, d, buf_max * m, damp1 * d, nb, m * nb, s, lr * s, w)
    return (max(terms) if all(map(math.isfinite, terms)) else math.inf), w, nb


def _below_overflow(x: float, dtype) -> bool:
    return x <= _LIMIT[dtype]


class Adam(Optimizer):
    name = "adam"
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _validate(self, h, where):
        try:
            b1, b2 = h["betas"]
        except (TypeError, ValueError):
            raise InputError(f"{where}: betas must be a pair, got {h['betas']!r}") from None
        return {"lr": _check(where, "learning rate", h["lr"]),
                "betas": (_check(where, "beta1", b1, high=1.0, high_open=True),
                          _check(where, "beta2", b2, high=1.0, high_open=True)),
                "eps": _check(where, "eps", h["eps"]),
                "weight_decay": _check(where, "weight_decay", h["weight_decay"])}

    def hyper(self):
        return {**self.defaults, "betas": list(self.defaults["betas"])}

    SLOTS = ("exp_avg", "exp_avg_sq")

    def _update(self, name, p, g, group, commit):
        dt = p.dtype.type
        b1, b2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        st = self.state.get(name)
        if st is None:
            if not commit:  # a dry run on zeros: what the first step will start from
                z = np.zeros_like(p)
                st = {"exp_avg": z, "exp_avg_sq": z}
            else:
                st = self.state[name] = {"exp_avg": np.zeros_like(p),
                                         "exp_avg_sq": np.zeros_like(p)}
        decay = dt(1 - lr * wd) if (self.decoupled and wd) else dt(1)
        l2 = dt(0) if self.decoupled else dt(wd)
        bc1 = 1 - b1 ** self.t
        bc2 = 1 - b2 ** self.t
        args = (p.reshape(-1), g, st["exp_avg"].reshape(-1), st["exp_avg_sq"].reshape(-1),
                dt(lr / bc1), l2, decay, dt(b1), dt(1 - b1), dt(b2), dt(1 - b2),
                dt(math.sqrt(bc2)), dt(group["eps"]))
        if not commit:
            return kopt.dry_run(kopt.adam_check, kopt.adam_kinds, args)
        kopt.adam_apply(*args)
        return 0


class AdamW(Adam):
    name = "adamw"
    decoupled = True

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
