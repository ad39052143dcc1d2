"""Add, Sub, Mul, Div, Pow, Sqrt, Exp, Log, Max, Min, Sum, Mean backward: gradients in the
broadcast output shape (autodiff un-broadcasts
them to each operand's shape)."""

from __future__ import annotations

import numpy as np

from .registry import register_grad


@register_grad("Add")
def add_grad(ctx, gy):
    return gy[0], gy[0]


@register_grad("Sub")
def sub_grad(ctx, gy):
    return gy[0], (-gy[0] if ctx.needs[1] else None)


@register_grad("Mul")
def mul_grad(ctx, gy):
    a, b = ctx.inputs
    return (gy[0] * b if ctx.needs[0] else None), (gy[0] * a if ctx.needs[1] else None)


@register_grad("Div")
def div_grad(ctx, gy):
    a, b = ctx.inputs
    ga = gy[0] / b if ctx.needs[0] else None
    gb = -gy[0] * a / (b * b) if ctx.needs[1] else None
    return ga, gb


@register_grad("Pow")
def pow_grad(ctx, gy):
    """d/da a^b = b a^(b-1); d/db a^b = a^b log(a), taken as 0 where a <= 0 (as PyTorch does
    for a = 0; a negative base has no real logarithm)."""
    a, b = ctx.inputs
    y = ctx.outputs[0]
    ga = gb = None
    if ctx.needs[0]:
        ga = gy[0] * (b * np.power(a, b - np.asarray(1, b.dtype))).astype(a.dtype, copy=False)
    if ctx.needs[1]:
        pos = a > 0
        log_a = np.log(np.where(pos, a, np.asarray(1, a.dtype)))
        gb = gy[0] * np.where(pos, y * log_a, np.asarray(0, y.dtype))
    return ga, gb


@register_grad("Sqrt")
def sqrt_grad(ctx, gy):
    return (gy[0] / (ctx.outputs[0] * np.asarray(2, ctx.outputs[0].dtype)),)


@register_grad("Exp")
def exp_grad(ctx, gy):
    return (gy[0] * ctx.outputs[0],)


@register_grad("Log")
def log_grad(ctx, gy):
    return (gy[0] / ctx.inputs[0],)


def _extremum_grad(ctx, gy):
    """Max/Min: the gradient goes to the inputs equal to the output, split evenly between ties
    (torch.maximum / torch.minimum do the same for two)."""
    y = ctx.outputs[0]
    hits = [np.asarray(x == y) for x in ctx.inputs]
    count = sum(h.astype(y.dtype) for h in hits)
    g = gy[0] / np.maximum(count, np.asarray(1, y.dtype))
    return tuple(g * h if need else None for h, need in zip(hits, ctx.needs))


register_grad("Max")(_extremum_grad)
register_grad("Min")(_extremum_grad)


@register_grad("Sum")
def sum_grad(ctx, gy):
    return tuple(gy[0] if need else None for need in ctx.needs)


@register_grad("Mean")
def mean_grad(ctx, gy):
    g = gy[0] / np.asarray(len(ctx.inputs), gy[0].dtype)
    return tuple(g if need else None for need in ctx.needs)
