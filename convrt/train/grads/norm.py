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
from .registry import kept, register_forward, register_grad


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
    y = kept(ctx.scratch, "y", x.shape, x.dtype)
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
    gx = kept(ctx.scratch, "gx", x.shape, x.dtype) if ctx.needs[0] else np.empty((1, 1, 1),
                                                                               x.dtype)
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


def _window_sum(a, before: int, after: int):
    """out[:, c] = a[:, c - before : c + after + 1].sum(1), clipped to the channels."""
    c = a.shape[1]
    cs = np.concatenate([np.zeros_like(a[:, :1]), np.cumsum(a, axis=1)], axis=1)
    idx = np.arange(c)
    hi = np.minimum(idx + after + 1, c)
    lo = np.maximum(idx - before, 0)
    return cs[:, hi] - cs[:, lo]


@register_grad("LRN")
def lrn_grad(ctx, gy):
    """y_j = x_j D_j^-beta with D_j = bias + alpha/size * sum of x_q^2 over j's window
    [j - (size-1)//2, j + ceil((size-1)/2)]; so
    dx_m = g_m D_m^-beta - 2 beta alpha/size x_m * sum over the j whose window holds m of
    g_j y_j / D_j (the windows holding m are j in [m - ceil((size-1)/2), m + (size-1)//2])."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    size = int(ctx.attrs["size"])
    alpha, beta = float(ctx.attrs["alpha"]), float(ctx.attrs["beta"])
    bias = float(ctx.attrs["bias"])
    lo_off = (size - 1) // 2
    hi_off = size - 1 - lo_off
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1).astype(np.float64)
    g3 = np.ascontiguousarray(gy[0]).reshape(n, c, -1).astype(np.float64)
    y3 = y.reshape(n, c, -1).astype(np.float64)
    d = bias + (alpha / size) * _window_sum(x3 * x3, lo_off, hi_off)
    t = _window_sum(g3 * y3 / d, hi_off, lo_off)
    gx = g3 * d ** -beta - (2 * beta * alpha / size) * x3 * t
    return (gx.reshape(x.shape).astype(x.dtype),)


@register_grad("LayerNormalization")
def layer_norm_grad(ctx, gy):
    """y = xhat * Scale + B, xhat = (x - mean) * inv, inv = 1 / sqrt(var + eps), statistics over
    the axes from ``axis`` on.  With g = gy * Scale (broadcast), per normalized row:
    dx = inv * (g - mean(g) - xhat * mean(g * xhat)); dScale = gy * xhat and dB = gy in the
    output's shape (autodiff sums them to Scale's and B's shapes).  Computed in float64 (the
    statistics' cancellation matters more here than in the forward's float32 stash)."""
    if any(g is not None for g in gy[1:]):
        raise TrainingError(f"node '{ctx.label}' (LayerNormalization): no backward rule through "
                            "the Mean / InvStdDev outputs")
    x, scale = ctx.inputs[0], ctx.inputs[1]
    eps = float(ctx.attrs.get("epsilon", 1e-5))
    axis = int(ctx.attrs.get("axis", -1))
    axes = tuple(range(axis + x.ndim if axis < 0 else axis, x.ndim))
    xd = x.astype(np.float64)
    d = xd - xd.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt((d * d).mean(axis=axes, keepdims=True) + eps)
    xhat = d * inv
    g0 = gy[0].astype(np.float64)
    g = g0 * scale.astype(np.float64)
    gx = inv * (g - g.mean(axis=axes, keepdims=True)
                - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    out = (gx.astype(x.dtype) if ctx.needs[0] else None,
           (g0 * xhat).astype(x.dtype) if ctx.needs[1] else None)
    if len(ctx.inputs) > 2 and ctx.inputs[2] is not None:
        out += (gy[0] if ctx.needs[2] else None,)
    return out
