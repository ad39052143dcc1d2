"""Activation, Softmax and LogSoftmax backward."""

from __future__ import annotations

import numpy as np

from ...kernels import erf as KE
from ..kernels import elementwise as K
from .registry import kept, register_grad


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


@register_grad("Relu")
def relu_grad(ctx, gy):
    y = ctx.outputs[0]
    gx = kept(ctx.scratch, "gx", y.shape, y.dtype)
    K.relu_backward(_flat(y), _flat(gy[0]), gx.reshape(-1))
    return (gx,)


@register_grad("LeakyRelu")
def leaky_relu_grad(ctx, gy):
    x = ctx.inputs[0]
    gx = np.empty_like(x)
    K.leaky_relu_backward(_flat(x), _flat(gy[0]), gx.reshape(-1), float(ctx.attrs["alpha"]))
    return (gx,)


@register_grad("Sigmoid")
def sigmoid_grad(ctx, gy):
    y = ctx.outputs[0]
    return (gy[0] * y * (1 - y),)


@register_grad("Tanh")
def tanh_grad(ctx, gy):
    y = ctx.outputs[0]
    return (gy[0] * (1 - y * y),)


@register_grad("Clip", nondiff=(1, 2))
def clip_grad(ctx, gy):
    """PyTorch's clamp: the gradient passes where min <= x <= max."""
    x = ctx.inputs[0]
    if ctx.opset < 11:
        lo, hi = ctx.attrs.get("min"), ctx.attrs.get("max")
    else:
        lo = None if ctx.input(1) is None else ctx.input(1).reshape(-1)[0]
        hi = None if ctx.input(2) is None else ctx.input(2).reshape(-1)[0]
    mask = np.ones(x.shape, dtype=bool)
    if lo is not None:
        mask &= x >= lo
    if hi is not None:
        mask &= x <= hi
    return (gy[0] * mask,) + (None,) * (len(ctx.inputs) - 1)


def _rows(ctx, a):
    """(outer, n, inner) view of ``a`` for the node's axis (opset < 13: flattened from axis)."""
    axis = int(ctx.attrs["axis"])
    axis = axis + a.ndim if axis < 0 else axis
    s = a.shape
    if ctx.opset < 13:
        return a.reshape(int(np.prod(s[:axis])), int(np.prod(s[axis:])), 1)
    return a.reshape(int(np.prod(s[:axis])), s[axis], int(np.prod(s[axis + 1:])))


@register_grad("Softmax")
def softmax_grad(ctx, gy):
    y = ctx.outputs[0]
    y3, g3 = _rows(ctx, y), _rows(ctx, np.ascontiguousarray(gy[0]))
    gx = y3 * (g3 - (g3 * y3).sum(axis=1, keepdims=True))
    return (gx.reshape(y.shape),)


@register_grad("LogSoftmax")
def log_softmax_grad(ctx, gy):
    y = ctx.outputs[0]
    y3, g3 = _rows(ctx, y), _rows(ctx, np.ascontiguousarray(gy[0]))
    gx = g3 - np.exp(y3) * g3.sum(axis=1, keepdims=True)
    return (gx.reshape(y.shape),)


def _x_dtype(ctx, v):
    return np.asarray(v, ctx.inputs[0].dtype)


@register_grad("HardSigmoid")
def hard_sigmoid_grad(ctx, gy):
    """alpha where 0 < alpha*x + beta < 1 (PyTorch's hardsigmoid: zero at the kinks)."""
    x = ctx.inputs[0]
    a, b = float(ctx.attrs["alpha"]), float(ctx.attrs["beta"])
    z = x * _x_dtype(ctx, a) + _x_dtype(ctx, b)
    return (gy[0] * ((z > 0) & (z < 1)) * _x_dtype(ctx, a),)


@register_grad("HardSwish")
def hard_swish_grad(ctx, gy):
    """x * hardsigmoid(x) with alpha 1/6, beta 1/2: 0 below -3, 1 above 3, x/3 + 1/2 between
    (PyTorch's hardswish_backward: the middle formula at +-3 themselves)."""
    x = ctx.inputs[0]
    mid = x * _x_dtype(ctx, 1 / 3) + _x_dtype(ctx, 0.5)
    d = np.where(x < -3, _x_dtype(ctx, 0), np.where(x <= 3, mid, _x_dtype(ctx, 1)))
    return (gy[0] * d,)


@register_grad("PRelu")
def prelu_grad(ctx, gy):
    """y = x (x > 0) else slope * x; the slope's gradient comes back in the output's shape and
    autodiff sums it to the slope's (per-channel) shape."""
    x, slope = ctx.inputs
    neg = x <= 0
    gx = gy[0] * np.where(neg, slope, _x_dtype(ctx, 1)) if ctx.needs[0] else None
    gs = gy[0] * np.where(neg, x, _x_dtype(ctx, 0)) if ctx.needs[1] else None
    return gx, gs


@register_grad("Elu")
def elu_grad(ctx, gy):
    """1 for x > 0, else alpha * exp(x) = y + alpha."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    a = _x_dtype(ctx, float(ctx.attrs["alpha"]))
    return (gy[0] * np.where(x > 0, _x_dtype(ctx, 1), y + a),)


@register_grad("Selu")
def selu_grad(ctx, gy):
    """gamma for x > 0, else gamma * alpha * exp(x) = y + gamma * alpha."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    a, g = float(ctx.attrs["alpha"]), float(ctx.attrs["gamma"])
    return (gy[0] * np.where(x > 0, _x_dtype(ctx, g), y + _x_dtype(ctx, g * a)),)


_TWO_OVER_SQRT_PI = 1.1283791670955126
_INV_SQRT_2PI = 0.3989422804014327


def _erf(x):
    """erf elementwise (numpy has none): convrt's own kernel, float32 or float64."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    KE.erf(x.reshape(-1), out.reshape(-1))
    return out


@register_grad("Erf")
def erf_grad(ctx, gy):
    """d erf(x) / dx = 2 / sqrt(pi) exp(-x^2)."""
    x = ctx.inputs[0]
    return (gy[0] * (_x_dtype(ctx, _TWO_OVER_SQRT_PI) * np.exp(-(x * x))),)


@register_grad("Gelu")
def gelu_grad(ctx, gy):
    """approximate="none": d(x Phi(x))/dx = Phi(x) + x phi(x), Phi the normal CDF
    0.5 (1 + erf(x / sqrt 2)) and phi its density; "tanh": y = 0.5 x (1 + t), t = tanh(v),
    v = sqrt(2/pi) (x + 0.044715 x^3), so dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) dv/dx
    (PyTorch's gelu_backward, both forms).  Also the rule of the fused ``convrt.Gelu``."""
    approximate = ctx.attrs.get("approximate", "none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    return _gelu_grad(ctx, gy, approximate)


@register_grad("GeluTanh")
def gelu_tanh_grad(ctx, gy):
    """The fused ``convrt.GeluTanh``: Gelu's rule for the tanh form."""
    return _gelu_grad(ctx, gy, "tanh")


def _gelu_grad(ctx, gy, approximate):
    x = ctx.inputs[0]
    xd = x.astype(np.float64)
    if approximate == "tanh":
        c, k = np.sqrt(2.0 / np.pi), 0.044715
        t = np.tanh(c * (xd + k * xd ** 3))
        d = 0.5 * (1 + t) + 0.5 * xd * (1 - t * t) * c * (1 + 3 * k * xd * xd)
    else:
        cdf = 0.5 * (1 + _erf(xd / np.sqrt(2.0)))
        d = cdf + xd * _INV_SQRT_2PI * np.exp(-0.5 * xd * xd)
    return (gy[0] * d.astype(x.dtype),)
