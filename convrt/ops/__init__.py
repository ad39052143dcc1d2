"""Operator implementations; importing this package registers every op."""

from . import activation, conv, elementwise, linear, normalization, pool, reduce, shape  # noqa: F401
from .registry import (CONVRT_DOMAIN, OpContext, OpDef, OpResult, TensorInfo, lookup,
                       register_op, registered_ops)

__all__ = ["CONVRT_DOMAIN", "OpContext", "OpDef", "OpResult", "TensorInfo", "lookup",
           "register_op", "registered_ops"]
