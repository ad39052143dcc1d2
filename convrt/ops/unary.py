"""Light elementwise ops on numpy ufuncs writing into the planned buffer.

Activations (Elu, Selu, HardSigmoid, HardSwish, PRelu), math (Sqrt, Exp, Log, Pow) and the
variadic broadcasting reductions over inputs (Max, Min, Mean, Sum).
"""

import numpy as np

from ._shape import FLOAT16_UP, NUMERIC, broadcast
from .registry import register_op


def _float_unary(ctx, X, fn):
    """``fn(x, out)`` for a float tensor; the kernel gets the arrays as the node has them."""
    ctx.check(X.dtype in FLOAT16_UP, f"dtype {X.dtype} is not supported")
    return ctx.result([X.shape], [X.dtype], fn)


@register_op("Elu", since=(6, 22))
def Elu(ctx, X, *, alpha=1.0):
    a = float(alpha)

    def run(x, out):
        np.multiply(np.expm1(np.minimum(x, 0)), a, out=out)
        np.copyto(out, x, where=x > 0)

    return _float_unary(ctx, X, run)


@register_op("Selu", since=(6, 22))
def Selu(ctx, X, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    a, g = float(alpha), float(gamma)

    def run(x, out):
        np.multiply(np.expm1(np.minimum(x, 0)), a * g, out=out)
        np.copyto(out, x * x.dtype.type(g), where=x > 0)

    return _float_unary(ctx, X, run)


@register_op("HardSigmoid", since=(6, 22))
def HardSigmoid(ctx, X, *, alpha=0.2, beta=0.5):
    a, b = float(alpha), float(beta)

    def run(x, out):
        np.multiply(x, x.dtype.type(a), out=out)
        np.add(out, x.dtype.type(b), out=out)
        np.clip(out, 0, 1, out=out)

    return _float_unary(ctx, X, run)


@register_op("HardSwish", since=(14, 22))
def HardSwish(ctx, X):
    def run(x, out):
        np.multiply(x, x.dtype.type(1 / 6), out=out)
        np.add(out, x.dtype.type(0.5), out=out)
        np.clip(out, 0, 1, out=out)
        np.multiply(out, x, out=out)

    return _float_unary(ctx, X, run)


@register_op("Sqrt", since=(6, 13))
def Sqrt(ctx, X):
    return _float_unary(ctx, X, lambda x, out: np.sqrt(x, out=out))


@register_op("Exp", since=(6, 13))
def Exp(ctx, X):
    return _float_unary(ctx, X, lambda x, out: np.exp(x, out=out))


@register_op("Log", since=(6, 13))
def Log(ctx, X):
    return _float_unary(ctx, X, lambda x, out: np.log(x, out=out))


@register_op("PRelu", since=(7, 9, 16))
def PRelu(ctx, X, slope):
    ok = FLOAT16_UP if ctx.opset < 9 else NUMERIC
    ctx.check(X.dtype in ok, f"dtype {X.dtype} is not supported")
    ctx.check(slope.dtype == X.dtype, f"slope dtype {slope.dtype} differs from X {X.dtype}")
    ctx.check(slope.rank <= X.rank, f"slope {list(slope.shape)} does not broadcast to X "
              f"{list(X.shape)}")
    shape = broadcast(ctx, X.shape, slope.shape)
    ctx.check(len(shape) == X.rank and all(
        not isinstance(a, int) or not isinstance(b, int) or a == b
        for a, b in zip(shape, X.shape)),
        f"slope {list(slope.shape)} does not broadcast to X {list(X.shape)}")

    def run(x, s, out):
        np.multiply(x, s, out=out)
        np.copyto(out, x, where=x >= 0)

    return ctx.result([X.shape], [X.dtype], run)


def _pow_dtypes(ctx, X, Y):
    ctx.check(X.dtype in NUMERIC and X.dtype.kind in "fi" or X.dtype.kind == "u" and
              ctx.opset >= 12, f"base dtype {X.dtype} is not supported")
    ctx.check(Y.dtype in NUMERIC, f"exponent dtype {Y.dtype} is not supported")
    if ctx.opset < 12:
        ctx.check(X.dtype == Y.dtype and X.dtype in FLOAT16_UP,
                  f"Pow before opset 12 takes one float type, got {X.dtype}, {Y.dtype}")


@register_op("Pow", since=(7, 12, 13, 15))
def Pow(ctx, X, Y):
    _pow_dtypes(ctx, X, Y)
    shape = broadcast(ctx, X.shape, Y.shape)
    xdt = X.dtype

    def run(x, y, out):
        if xdt.kind == "f":
            np.power(x, y.astype(xdt, copy=False), out=out)
        elif y.dtype.kind == "f":
            # integer base, float exponent: computed in float64, truncated like a C cast
            np.copyto(out, np.power(x.astype(np.float64), y.astype(np.float64)),
                      casting="unsafe")
        else:
            yy = y.astype(np.int64, copy=False)
            if np.any(yy < 0):
                np.copyto(out, np.trunc(np.power(x.astype(np.float64), yy.astype(np.float64))),
                          casting="unsafe")
            else:
                np.copyto(out, np.power(x.astype(np.int64), yy), casting="unsafe")

    return ctx.result([shape], [xdt], run)


def _variadic(ctx, inputs, fold, finish=None, dtypes=NUMERIC):
    ctx.check(len(inputs) >= 1, "needs at least one input")
    ctx.check(all(t is not None for t in inputs), "inputs cannot be omitted")
    dt = inputs[0].dtype
    ctx.check(dt in dtypes, f"dtype {dt} is not supported")
    for t in inputs[1:]:
        ctx.check(t.dtype == dt, f"input dtypes differ ({t.dtype} vs {dt})")
    shape = broadcast(ctx, *[t.shape for t in inputs])
    n = len(inputs)

    def run(*arrs):
        out, xs = arrs[-1], arrs[:-1]
        np.copyto(out, np.broadcast_to(xs[0], out.shape))
        for x in xs[1:]:
            fold(out, x, out=out)
        if finish is not None:
            finish(out, n)

    return ctx.result([shape], [dt], run)


def _float_ops(ctx):
    return FLOAT16_UP if ctx.opset < 12 else NUMERIC


@register_op("Max", since=(6, 8, 12, 13))
def Max(ctx, *data_0):
    return _variadic(ctx, data_0, np.maximum, dtypes=_float_ops(ctx))


@register_op("Min", since=(6, 8, 12, 13))
def Min(ctx, *data_0):
    return _variadic(ctx, data_0, np.minimum, dtypes=_float_ops(ctx))


@register_op("Sum", since=(6, 8, 13))
def Sum(ctx, *data_0):
    return _variadic(ctx, data_0, np.add, dtypes=FLOAT16_UP)


def _mean_finish(out, n):
    np.divide(out, out.dtype.type(n), out=out)


@register_op("Mean", since=(6, 8, 13))
def Mean(ctx, *data_0):
    return _variadic(ctx, data_0, np.add, _mean_finish, dtypes=FLOAT16_UP)
