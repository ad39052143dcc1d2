"""Gemm and MatMul backward (BLAS products through numpy)."""

from __future__ import annotations

import numpy as np

from .registry import register_grad


@register_grad("Gemm")
def gemm_grad(ctx, gy):
    """Y = alpha * op(A) @ op(B) + beta * C."""
    a, b = ctx.inputs[0], ctx.inputs[1]
    alpha, beta = float(ctx.attrs["alpha"]), float(ctx.attrs["beta"])
    ta, tb = int(ctx.attrs["transA"]), int(ctx.attrs["transB"])
    dy = gy[0]
    if alpha != 1.0:
        dy_a = dy * np.asarray(alpha, dy.dtype)
    else:
        dy_a = dy
    ga = gb = gc = None
    if ctx.needs[0]:
        opb = b.T if tb else b
        ga = dy_a @ opb.T  # d op(A)
        ga = ga.T if ta else ga
    if ctx.needs[1]:
        opa = a.T if ta else a
        gb = opa.T @ dy_a  # d op(B)
        gb = gb.T if tb else gb
    if len(ctx.inputs) > 2 and ctx.inputs[2] is not None and ctx.needs[2]:
        gc = dy * np.asarray(beta, dy.dtype) if beta != 1.0 else dy
    return (ga, gb, gc)[:len(ctx.inputs)]


@register_grad("MatMul")
def matmul_grad(ctx, gy):
    """numpy matmul semantics: 1-D operands are promoted, batch dims broadcast (autodiff sums
    them back)."""
    a, b = ctx.inputs
    dy = gy[0]
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    dy2 = dy
    if a.ndim == 1:
        dy2 = np.expand_dims(dy2, -2)
    if b.ndim == 1:
        dy2 = np.expand_dims(dy2, -1)
    ga = gb = None
    if ctx.needs[0]:
        ga = dy2 @ np.swapaxes(b2, -1, -2)  # (..., 1, K) for 1-D A: autodiff sums it to (K,)
    if ctx.needs[1]:
        gb = np.swapaxes(a2, -1, -2) @ dy2
        if b.ndim == 1:
            gb = gb[..., 0]
    return ga, gb
