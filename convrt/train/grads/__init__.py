"""Backward rules, one module per op family; importing this package registers them all."""

from . import activation, conv, elementwise, linear, norm, pool, resize, shape  # noqa: F401
from .registry import (GradRule, grad_rule, register_forward, register_grad, registered_grads,
                       train_forward)

__all__ = ["GradRule", "grad_rule", "register_forward", "register_grad", "registered_grads",
           "train_forward"]
