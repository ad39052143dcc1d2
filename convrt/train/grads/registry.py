"""The gradient rule table: one backward rule per op type, plus training-mode forwards.

A backward rule receives the node's :class:`~convrt.train.autodiff.NodeCtx` (inputs, outputs,
attributes with the spec's defaults, what the training forward saved, which inputs need a
gradient) and the gradients of the node's outputs (None for an output nothing reads), and
returns one gradient per node input (None where there is none or none is needed)::

    @register_grad("Relu")
    def relu_grad(ctx, gy):
        return (relu_backward(ctx.outputs[0], gy[0]),)

Gradients may have the broadcast shape of the op's output: autodiff un-broadcasts them to the
input's shape in one place.  ``nondiff`` lists input positions that never carry a gradient
(shape tensors, ratios, running statistics): they do not put a node on the differentiable path.

A training forward (``@register_forward``) replaces convrt's inference kernel for ops that act
differently in training (BatchNormalization, Dropout) or must save something for backward
(MaxPool's argmax).  It returns the outputs as a tuple and may set ``ctx.saved``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class GradRule:
    op_type: str
    fn: Callable
    nondiff: frozenset


_GRADS: dict[str, GradRule] = {}
_FORWARDS: dict[str, Callable] = {}


def register_grad(op_type: str, nondiff=()):
    """Register ``fn(ctx, gy) -> tuple`` as the backward rule of ``op_type``."""
    def deco(fn):
        _GRADS[op_type] = GradRule(op_type, fn, frozenset(nondiff))
        return fn
    return deco


def register_forward(op_type: str):
    """Register ``fn(ctx, *inputs) -> tuple of outputs`` as the training-mode forward."""
    def deco(fn):
        _FORWARDS[op_type] = fn
        return fn
    return deco


def grad_rule(op_type: str) -> GradRule | None:
    return _GRADS.get(op_type)


def train_forward(op_type: str) -> Callable | None:
    return _FORWARDS.get(op_type)


def registered_grads() -> dict[str, GradRule]:
    """A copy of the rule table (tests parametrize over it)."""
    return dict(_GRADS)


def kept(cache, key, shape, dtype):
    """An array kept in ``cache`` (a node's per-shape ``NodeCtx.scratch``): allocated by the
    first training step, reused by every later one, for the outputs, gradients and scratch of
    the big-tensor rules; a fresh array where ``cache`` is None (an inference forward:
    ``predict``/``evaluate``, whose arrays are not kept).  Why not ``np.empty`` per step:
    whether glibc hands a freed large block back to the kernel depends on what else the process
    allocated; after one PyTorch training step in the same process each ResNet-18 step here
    took 13,000 page faults (57 -> 84 ms), and small VGG-BN at batch 64 took 18,000 on its own.
    An array returned in such a buffer is overwritten by the next step with the same shapes
    (``Trainer.gradients`` returns copies)."""
    if cache is None:
        return np.empty(shape, dtype=dtype)
    a = cache.get(key)
    if a is None:
        a = cache[key] = np.empty(shape, dtype=dtype)
    return a
