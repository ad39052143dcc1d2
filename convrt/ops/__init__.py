"""Operator implementations; importing this package registers every op."""

from . import activation, conv, elementwise, linear, normalization, pool, reduce, shape  # noqa: F401
from . import fused  # noqa: F401,E402  (convrt-domain fused ops; after the ops it reuses)
from . import conv_transpose, lrn, tensor, unary  # noqa: F401  (CNN op set: issue #4)
from . import resize  # noqa: F401  (Resize, Upsample)
from . import gelu, split  # noqa: F401  (Erf, Gelu, Split: ConvNeXt, YOLOv8)
from .registry import (CONVRT_DOMAIN, OpContext, OpDef, OpResult, TensorInfo, lookup,
                       register_op, registered_ops)

__all__ = ["CONVRT_DOMAIN", "OpContext", "OpDef", "OpResult", "TensorInfo", "lookup",
           "register_op", "registered_ops"]
