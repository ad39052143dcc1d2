"""Which initializers train, and in which optimizer param group: names and glob patterns.

Three PyTorch habits written as patterns over initializer names (``fnmatch``: ``"fc.*"``,
``"layer4.*"``, ``"*.bias"``), because an ONNX model has names, not modules:

* ``trainable``: only these train (``requires_grad_(False)`` on everything else);
* ``freeze``: everything trains except these (the complement, for "freeze the backbone");
* ``param_groups``: per-group options for the optimizer (``lr``, ``weight_decay``...).

A pattern that matches nothing is an error rather than a silently different run (a typo in
``"fc.*"`` would otherwise train the whole network, or nothing).

Param groups: **the first group whose pattern matches a parameter takes it**, so a specific rule
goes before a general one (``[{"params": ["fc.*"], "lr": 1e-2}, {"params": ["*.bias"],
"weight_decay": 0.0}]`` puts ``fc.bias`` in the first group), as in routing tables; torch's
error on a tensor in two groups would refuse exactly that common pair.  A group left empty by
earlier ones is an error (it would configure nothing).  Parameters no group matches form a last
group with the optimizer's own options.  Besides patterns, a selector may be a callable
``f(name, array) -> bool``: ``lambda name, a: a.ndim <= 1`` picks biases and normalization
scales, the usual "no weight decay on BN and bias" set.
"""

from __future__ import annotations

import fnmatch

from ..errors import InputError, TrainingError


def is_pattern(item: str) -> bool:
    return any(ch in item for ch in "*?[")


def expand(items, candidates, source: str, what: str, exact_ok=(),
           noun: str = "float initializer") -> list[str]:
    """Names and glob patterns to names, in ``candidates`` order for a pattern.  A pattern
    matching none of ``candidates`` raises; an exact name is kept as given (the caller checks
    it) unless ``exact_ok`` is given and lacks it."""
    items = [items] if isinstance(items, str) else list(items)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"{what} entries must be strings, got {item!r}")
        if is_pattern(item) and item not in exact_ok:
            hits = [n for n in candidates if fnmatch.fnmatchcase(n, item)]
            if not hits:
                raise TrainingError(f"{source}: {what} pattern '{item}' matches no {noun}")
            names.extend(hits)
        else:
            names.append(item)
    return list(dict.fromkeys(names))


def frozen(freeze, candidates, source: str) -> set[str]:
    """The names ``freeze`` (names or patterns) takes out of ``candidates``."""
    names = expand(freeze, candidates, source, "freeze", noun="trainable initializer")
    missing = [n for n in names if n not in candidates]
    if missing:
        raise TrainingError(f"{source}: freeze '{missing[0]}' is not a trainable float "
                            "initializer")
    return set(names)


def _selector_name(sel) -> str:
    return repr(sel) if isinstance(sel, str) else getattr(sel, "__name__", repr(sel))


def resolve_groups(groups, params: dict, source: str) -> list[dict]:
    """``[{"params": selectors, **options}]`` to ``[{"params": names, **options}]`` over the
    trainable ``params`` (name -> array, graph order), first match wins, plus a last group of
    the rest (no options) when some parameter is in no group."""
    if isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups):
        raise InputError("param_groups must be a list of dicts, each with 'params'")
    taken: set[str] = set()
    out = []
    for i, g in enumerate(groups):
        if "params" not in g:
            raise InputError(f"param group {i} has no 'params'")
        sels = g["params"]
        sels = [sels] if isinstance(sels, str) or callable(sels) else list(sels)
        if not sels:
            raise InputError(f"param group {i}: 'params' is empty")
        hits = []
        for sel in sels:
            if isinstance(sel, str):
                found = [n for n in params if fnmatch.fnmatchcase(n, sel)]
            elif callable(sel):
                found = [n for n, a in params.items() if sel(n, a)]
            else:
                raise InputError(f"param group {i}: a selector must be a name, a glob pattern "
                                 f"or a callable(name, array), got {sel!r}")
            if not found:
                raise TrainingError(f"{source}: param group {i}: {_selector_name(sel)} matches "
                                    "no trainable initializer")
            hits.extend(found)
        mine = [n for n in dict.fromkeys(hits) if n not in taken]
        if not mine:
            raise TrainingError(f"{source}: param group {i} gets no parameter: every match is "
                                "in an earlier group (the first matching group takes a "
                                "parameter)")
        taken.update(mine)
        out.append({**{k: v for k, v in g.items() if k != "params"}, "params": mine})
    rest = [n for n in params if n not in taken]
    if rest:
        out.append({"params": rest})
    return out
