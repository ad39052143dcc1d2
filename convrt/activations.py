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

# ``IN_REGISTERS``: the codes the LLVM-level store paths (``VecIR.activate``: pixel, blocked,
# 3x3 depthwise) apply to the sums in registers: comparisons and multiplies, and sigmoid / silu
# as the vectorized float32 exp of ``kernels/elementwise.py`` written out as vector code (numba's
# own exp is a libm call: no SVML from PyPI).  Only tanh goes through the epilogues' loops over
# a row (``_epilogue.act_other``): on EfficientNet-B0 the row path made the SiLU layers 2-4x
# slower than their ReLU twins (issue #21).
# SILU is x * sigmoid(x) (EfficientNet, YOLOv8); HARD_SIGMOID is clip(alpha*x + beta, 0, 1)
# and HARD_SWISH x * hard_sigmoid(x) with alpha 1/6, beta 1/2 (MobileNetV3).
NONE, RELU, LEAKY, CLIP, SIGMOID, TANH, SILU, HARD_SIGMOID, HARD_SWISH = range(9)
CODES = {"none": NONE, "relu": RELU, "leaky_relu": LEAKY, "clip": CLIP, "sigmoid": SIGMOID,
         "tanh": TANH, "silu": SILU, "hard_sigmoid": HARD_SIGMOID, "hard_swish": HARD_SWISH}
NAMES = tuple(CODES)
IN_REGISTERS = (NONE, RELU, LEAKY, CLIP, SIGMOID, SILU, HARD_SIGMOID, HARD_SWISH)

# ONNX activation op -> (name, attributes it carries into the fused op).  SiLU has no ONNX op
# before opset 22's Swish: it is the pattern Mul(x, Sigmoid(x)) (passes/fuse_silu.py).
ONNX_OPS = {"Relu": ("relu", ()), "LeakyRelu": ("leaky_relu", ("alpha",)),
            "Clip": ("clip", ()), "Sigmoid": ("sigmoid", ()), "Tanh": ("tanh", ()),
            "HardSigmoid": ("hard_sigmoid", ("alpha", "beta")), "HardSwish": ("hard_swish", ())}
LEAKY_ALPHA = 0.01  # ONNX LeakyRelu's default slope
HARD_SIGMOID_AB = (0.2, 0.5)  # ONNX HardSigmoid's default alpha, beta
HARD_SWISH_AB = (1 / 6, 0.5)  # ONNX HardSwish: fixed


def code(name: str) -> int:
    """The kernels' int code of activation ``name`` (KeyError for an unknown one)."""
    return CODES[name]


def fused_attrs(op_type: str, attrs: dict) -> dict:
    """The attributes a fused conv keeps from ONNX activation ``op_type`` (LeakyRelu's alpha,
    defaulted); Clip's bounds are inputs from opset 11 on, not attributes."""
    if op_type == "LeakyRelu":
        return {"alpha": float(attrs.get("alpha", LEAKY_ALPHA))}
    if op_type == "HardSigmoid":
        return {"alpha": float(attrs.get("alpha", HARD_SIGMOID_AB[0])),
                "beta": float(attrs.get("beta", HARD_SIGMOID_AB[1]))}
    return {}


def params(dtype, alpha=LEAKY_ALPHA, clip_min=-np.inf, clip_max=np.inf) -> np.ndarray:
    """The constants every epilogue reads, ``(alpha, clip_min, clip_max, 0, 1)`` in ``dtype``
    (0 and 1 in the array's dtype, so float32 kernels never mix in a float64 constant).

    hard_sigmoid / hard_swish have no clip bounds: their ``alpha*x + beta`` rides in the alpha
    and clip_min slots (``hard_params``), so the conv layers' signatures stay as they are."""
    return np.array([alpha, clip_min, clip_max, 0.0, 1.0], dtype=dtype)


def hard_params(activation, alpha=None, beta=None):
    """``(alpha, clip_min)`` as ``params`` wants them for hard_sigmoid (ONNX defaults) and
    hard_swish (fixed 1/6, 1/2)."""
    a, b = HARD_SWISH_AB if activation == "hard_swish" else HARD_SIGMOID_AB
    return (a if alpha is None else float(alpha)), (b if beta is None else float(beta))


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
    if activation == "silu":
        return y / (1.0 + np.exp(-y))
    if activation in ("hard_sigmoid", "hard_swish"):  # alpha, beta in alpha and clip_min
        h = np.clip(y * y.dtype.type(alpha) + y.dtype.type(clip_min), 0, 1)
        return h if activation == "hard_sigmoid" else y * h
    raise ValueError(activation)
