"""Erf and Gelu (ConvNeXt's and the ViTs' activation), on the vector kernels of kernels/erf.py.

``Gelu`` is a standard op from opset 20; older models spell it ``Div -> Erf -> Add -> Mul ->
Mul`` (PyTorch's legacy exporter), which ``passes/fuse_gelu.py`` turns into one node: the standard
``Gelu`` at opset >= 20, else ``convrt.Gelu`` (defined here too) whose ONNX function body is
that chain (``convrt/ops/fused.py``); the tanh form likewise becomes ``Gelu(approximate="tanh")``
or ``convrt.GeluTanh``.
"""

from ..kernels import erf as K
from ._shape import FLOAT_TYPES
from .registry import CONVRT_DOMAIN, register_op

APPROXIMATIONS = ("none", "tanh")


@register_op("Erf", since=(9, 13))
def Erf(ctx, input):
    """The Gauss error function, elementwise (float32: 2 ulp, float64: libm)."""
    ctx.check(input.dtype in FLOAT_TYPES, f"dtype {input.dtype} is not supported")
    return ctx.result([input.shape], [input.dtype],
                      lambda x, out: K.erf(x.reshape(-1), out.reshape(-1)))


def _gelu(ctx, X, approximate):
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(approximate in APPROXIMATIONS,
              f"approximate {approximate!r} is not one of {', '.join(APPROXIMATIONS)}")
    return ctx.result([X.shape], [X.dtype],
                      lambda x, out: K.gelu(x.reshape(-1), out.reshape(-1), approximate))


@register_op("Gelu", since=20)
def Gelu(ctx, X, *, approximate="none"):
    """0.5 x (1 + erf(x / sqrt 2)); ``approximate="tanh"``: 0.5 x (1 + tanh(sqrt(2/pi) (x +
    0.044715 x^3)))."""
    return _gelu(ctx, X, approximate)


@register_op("Gelu", since=1, domain=CONVRT_DOMAIN)
def GeluFused(ctx, X):
    """The fused erf GELU of a model older than opset 20 (see the module docstring)."""
    return _gelu(ctx, X, "none")


@register_op("GeluTanh", since=1, domain=CONVRT_DOMAIN)
def GeluTanhFused(ctx, X):
    """The fused tanh GELU of a model older than opset 20 (one op type per function body)."""
    return _gelu(ctx, X, "tanh")
