"""Pure numpy helpers on op parameters, shared by ops, passes and training.

``passes/`` may import this module (see the allowed-imports table in docs/internals.md): it
imports nothing but numpy, so folding BatchNormalization in a pass and computing it in the op
or its gradient use one formula without the pass pulling in kernels.
"""

from __future__ import annotations

import numpy as np


def bn_affine(scale, bias, mean, var, epsilon):
    """Per-channel (a, b) with y = a * x + b, computed in float64 (used by passes too)."""
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + float(epsilon))
    return a, bias.astype(np.float64) - mean.astype(np.float64) * a


def as_channel_param(a: np.ndarray, rank: int, dtype) -> np.ndarray:
    """A per-channel vector reshaped to [C, 1, ...] (rank - 1 dims) in ``dtype``."""
    return np.ascontiguousarray(np.asarray(a).reshape((-1,) + (1,) * (rank - 2)).astype(dtype))
