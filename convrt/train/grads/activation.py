"""Activation, Softmax and LogSoftmax backward."""

from __future__ import annotations

import numpy as np

from ..kernels import elementwise as K
from .registry import register_grad


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


@register_grad("Relu")
def relu_grad(ctx, gy):
    y = ctx.outputs[0]
    gx = np.empty_like(y)
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
