"""Execution: plans (bound kernels over planned buffers) and the InferenceSession."""

from .plan import Plan
from .session import (ExecutionMode, GraphOptimizationLevel, InferenceSession, ModelMetadata,
                      NodeArg, RunOptions, SessionOptions, level_name)

__all__ = ["ExecutionMode", "GraphOptimizationLevel", "InferenceSession", "ModelMetadata",
           "NodeArg", "Plan", "RunOptions", "SessionOptions", "level_name"]
