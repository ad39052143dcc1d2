"""The activations a convolution applies in its epilogue: the one table ops, passes, kernels and
tests read.

A fused activation travels as a name (``"relu"``...) through ops and passes and as a small int
code through the kernels; this module holds both, which ONNX op each comes from and which of its
attributes it keeps, and the numpy reference the tests compare against.  It imports neither
numba nor onnx, so that passes (which may import only ``convrt.ir`` and pure helpers) can read
it.  The numba side, the loops that apply a code, lives in ``kernels/conv/_epilogue.py`` and
``kernels/conv/_ir.py`` (``VecIR.activate``) and takes its codes from here.

Every comparison a kernel makes is ordered so that NaN passes through unchanged, as numpy's
maximum/clip do; ``reference`` is the numpy form of exactly that.
"""

from __future__ import annotations

import numpy as np

# Codes are ordered: the ones up to CLIP are comparisons and multiplies that vector code applies
# in registers (``IN_REGISTERS``); sigmoid and tanh need exp/tanh, which the kernels leave to a
# scalar loop (numba's exp is a libm call: no SVML from PyPI).
NONE, RELU, LEAKY, CLIP, SIGMOID, TANH = range(6)
CODES = {"none": NONE, "relu": RELU, "leaky_relu": LEAKY, "clip": CLIP, "sigmoid": SIGMOID,
         "tanh": TANH}
NAMES = tuple(CODES)
IN_REGISTERS = (NONE, RELU, LEAKY, CLIP)

# ONNX activation op -> (name, attributes it carries into the fused op)
ONNX_OPS = {"Relu": ("relu", ()), "LeakyRelu": ("leaky_relu", ("alpha",)),
            "Clip": ("clip", ()), "Sigmoid": ("sigmoid", ()), "Tanh": ("tanh", ())}
LEAKY_ALPHA = 0.01  # ONNX LeakyRelu's default slope


def code(name: str) -> int:
    """The kernels' int code of activation ``name`` (KeyError for an unknown one)."""
    return CODES[name]


def fused_attrs(op_type: str, attrs: dict) -> dict:
    """The attributes a fused conv keeps from ONNX activation ``op_type`` (LeakyRelu's alpha,
    defaulted); Clip's bounds are inputs from opset 11 on, not attributes."""
    if op_type == "LeakyRelu":
        return {"alpha": float(attrs.get("alpha", LEAKY_ALPHA))}
    return {}


def params(dtype, alpha=LEAKY_ALPHA, clip_min=-np.inf, clip_max=np.inf) -> np.ndarray:
    """The constants every epilogue reads, ``(alpha, clip_min, clip_max, 0, 1)`` in ``dtype``
    (0 and 1 in the array's dtype, so float32 kernels never mix in a float64 constant)."""
    return np.array([alpha, clip_min, clip_max, 0.0, 1.0], dtype=dtype)


def reference(y, activation="none", alpha=LEAKY_ALPHA, clip_min=-np.inf, clip_max=np.inf):
    """``activation`` applied to ``y`` in numpy, with numpy's NaN behaviour (the tests' oracle)."""
    if activation == "none":
        return y
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "leaky_relu":
        return np.where(y < 0, y * alpha, y)
    if activation == "clip":
        return np.clip(y, clip_min, clip_max)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if activation == "tanh":
        return np.tanh(y)
    raise ValueError(activation)
