"""Add, Sub, Mul, Div backward: gradients in the broadcast output shape (autodiff un-broadcasts
them to each operand's shape)."""

from __future__ import annotations

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
