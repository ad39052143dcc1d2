"""Execution: plans (bound kernels over planned buffers) and the InferenceSession."""

from .plan import Plan
from .session import (GraphOptimizationLevel, InferenceSession, NodeArg, SessionOptions,
                      level_name)

__all__ = ["GraphOptimizationLevel", "InferenceSession", "NodeArg", "Plan", "SessionOptions",
           "level_name"]
