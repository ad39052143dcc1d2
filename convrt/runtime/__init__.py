"""Execution: plans (bound kernels over planned buffers), thread counts, traces, feed checks.

The runtime only plans and runs a finished Graph; the InferenceSession, which also loads and
optimizes, lives one layer up in ``convrt.api``.  ``convrt.runtime.InferenceSession`` and its
siblings still resolve, lazily (PEP 562), for code written before the move: the runtime never
imports the api when it is imported itself (that would be a cycle, api -> runtime -> api).
"""

import importlib

from .plan import Plan

# moved to convrt.api (issue #19); resolved on first access, see __getattr__
_API_NAMES = ("ExecutionMode", "GraphOptimizationLevel", "InferenceSession", "ModelMetadata",
              "NodeArg", "RunOptions", "SessionOptions", "level_name")

__all__ = ["Plan", *_API_NAMES]


def __getattr__(name):
    """Resolve the session names that moved to ``convrt.api`` (kept for existing imports)."""
    if name in _API_NAMES:
        return getattr(importlib.import_module("convrt.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
