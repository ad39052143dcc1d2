"""BatchNormalization in training mode (batch statistics, PyTorch's running-stat update) and its
backward rule; Dropout (seeded masks, inverted scaling) and its backward rule.

ONNX ``momentum`` m means ``running = running * m + batch * (1 - m)`` (PyTorch's momentum is
1 - m).  As in PyTorch, the batch is normalized with the biased variance and ``running_var`` is
updated with the unbiased one (times n / (n - 1), n = N * spatial).  Running statistics are
state, never trainable: the forward reports their new values in ``ctx.saved["state_updates"]``
and the trainer commits them after a successful step.
"""

from __future__ import annotations

import numpy as np

from ...errors import TrainingError
from ...ops.normalization import bn_affine
from ..kernels import norm as K
from .registry import register_forward, register_grad


def _ncs(a):
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], a.shape[1], -1)


@register_forward("BatchNormalization")
def bn_forward(ctx, x, scale, bias, mean, var):
    eps = float(ctx.attrs.get("epsilon", 1e-5))
    if not ctx.training:
        a, b = (t.astype(x.dtype) for t in bn_affine(scale, bias, mean, var, eps))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x * a.reshape(shape) + b.reshape(shape),)
    c = x.shape[1]
    n = x.size // c
    if n < 2:
        raise TrainingError(f"node '{ctx.label}' (BatchNormalization): training needs more than "
                            f"one value per channel, got input shape {list(x.shape)}")
    y = np.empty_like(x)
    bm = np.empty(c, np.float64)
    bv = np.empty(c, np.float64)
    K.bn_forward(_ncs(x), scale, bias, eps, y.reshape(y.shape[0], c, -1), bm, bv)
    m = float(ctx.attrs.get("momentum", 0.9))
    ctx.saved["stats"] = (bm, bv)
    ctx.saved["state_updates"] = {
        3: (mean * m + bm * (1 - m)).astype(mean.dtype),
        4: (var * m + bv * (n / (n - 1)) * (1 - m)).astype(var.dtype),
    }
    return (y,)


@register_grad("BatchNormalization", nondiff=(3, 4))
def bn_grad(ctx, gy):
    x, scale = ctx.inputs[0], ctx.inputs[1]
    eps = float(ctx.attrs.get("epsilon", 1e-5))
    if "stats" not in ctx.saved:  # eval mode: a per-channel affine map
        mean, var = ctx.inputs[3], ctx.inputs[4]
        a, _ = bn_affine(scale, ctx.inputs[2], mean, var, eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        axes = (0,) + tuple(range(2, x.ndim))
        xhat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
        return (gy[0] * a.reshape(shape).astype(x.dtype), (gy[0] * xhat).sum(axis=axes),
                gy[0].sum(axis=axes), None, None)
    bm, bv = ctx.saved["stats"]
    c = x.shape[1]
    gx = np.empty_like(x) if ctx.needs[0] else np.empty((1, 1, 1), x.dtype)
    gs = np.empty(c, x.dtype)
    gb = np.empty(c, x.dtype)
    K.bn_backward(_ncs(x), _ncs(gy[0]), scale, bm, bv, eps,
                  gx.reshape(gx.shape[0], gx.shape[1], -1), gs, gb, bool(ctx.needs[0]))
    return (gx if ctx.needs[0] else None, gs, gb, None, None)


def _ratio(ctx):
    if ctx.opset < 12:
        return float(ctx.attrs.get("ratio", 0.5))
    r = ctx.input(1)
    return 0.5 if r is None else float(np.asarray(r).reshape(-1)[0])


@register_forward("Dropout")
def dropout_forward(ctx, x, *rest):
    ratio = _ratio(ctx)
    if not ctx.training or ratio == 0.0:
        return x, np.ones(x.shape, dtype=bool)
    if not 0.0 <= ratio < 1.0:
        raise TrainingError(f"node '{ctx.label}' (Dropout): ratio {ratio} must be in [0, 1)")
    mask = ctx.rng.random(x.shape) >= ratio
    scale = np.asarray(1.0 / (1.0 - ratio), x.dtype)
    ctx.saved["mask"] = mask
    ctx.saved["scale"] = scale
    return x * mask * scale, mask


@register_grad("Dropout", nondiff=(1, 2))
def dropout_grad(ctx, gy):
    g = gy[0]
    if "mask" in ctx.saved:
        g = g * ctx.saved["mask"] * ctx.saved["scale"]
    return (g,) + (None,) * (len(ctx.inputs) - 1)
