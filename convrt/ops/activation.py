"""Activations and Softmax/LogSoftmax."""

import math
import threading

import numpy as np

from ..kernels import elementwise as K
from ..kernels import first_tier
from ..kernels.softmax import BLOCK as _SOFTMAX_BLOCK
from ..kernels.softmax import softmax as _softmax
from ..kernels.softmax import softmax32 as _softmax32
from ._shape import FLOAT_TYPES, NUMERIC, axis
from .registry import register_op


def _unary(ctx, X, fn, *args, dtypes=FLOAT_TYPES):
    ctx.check(X.dtype in dtypes, f"dtype {X.dtype} is not supported")

    def run(x, *rest):  # rest = (constant inputs such as Clip's min/max..., out)
        fn(x.reshape(-1), rest[-1].reshape(-1), *args)

    return ctx.result([X.shape], [X.dtype], run)


@register_op("Relu", since=(6, 13, 14))
def Relu(ctx, X):
    if X.dtype is not None and X.dtype.kind in "iu":
        return ctx.result([X.shape], [X.dtype], lambda x, out: np.maximum(x, 0, out=out))
    return _unary(ctx, X, K.relu)


@register_op("LeakyRelu", since=(6, 16))
def LeakyRelu(ctx, X, *, alpha=0.01):
    return _unary(ctx, X, K.leaky_relu, float(alpha))


@register_op("Sigmoid", since=(6, 13))
def Sigmoid(ctx, X):
    return _unary(ctx, X, K.sigmoid)


@register_op("Tanh", since=(6, 13))
def Tanh(ctx, X):
    return _unary(ctx, X, K.tanh)


@register_op("Clip", since=6)
def Clip_6(ctx, X, *, min=-3.4028234663852886e38, max=3.4028234663852886e38):
    return _unary(ctx, X, K.clip, float(min), float(max))


def clip_bounds(ctx, X, lo, hi, runtime_ok=False):
    """Constant Clip bounds as Python numbers (None when absent, NaN when only known at run
    time, which a plan accepts only with ``runtime_ok``); used by passes too."""
    out = []
    for name, b in (("min", lo), ("max", hi)):
        if b is None:
            out.append(None)
            continue
        ctx.check(b.shape in ((), (1,)) if b.shape is not None else True,
                  f"{name} must be a scalar")
        ctx.check(b.dtype == X.dtype, f"{name} dtype {b.dtype} differs from input {X.dtype}")
        if b.value is None:
            if ctx.binding and not runtime_ok:
                raise ctx.unsupported(f"{name} must be constant at plan time")
            out.append(math.nan)
        else:
            out.append(b.value.reshape(-1)[0].item())
    return out


@register_op("Clip", since=(11, 12, 13))
def Clip(ctx, X, min=None, max=None):
    lo, hi = clip_bounds(ctx, X, min, max, runtime_ok=True)
    ctx.check(X.dtype in NUMERIC, f"dtype {X.dtype} is not supported")
    if any(isinstance(b, float) and math.isnan(b) for b in (lo, hi)):
        return _clip_at_run_time(ctx, X)
    if X.dtype.kind == "f":
        lo = -math.inf if lo is None else lo
        hi = math.inf if hi is None else hi
        return _unary(ctx, X, K.clip, float(lo), float(hi))
    info = np.iinfo(X.dtype)
    lo = info.min if lo is None else lo
    hi = info.max if hi is None else hi
    return ctx.result([X.shape], [X.dtype], lambda x, *rest: np.minimum(
        np.maximum(x, lo, out=rest[-1]), hi, out=rest[-1]))


def _clip_at_run_time(ctx, X):
    """Clip whose bounds are graph inputs (run-time data, like every float tensor): the kernel
    reads the scalars each run.  ``rest`` is (min, max, out) with None for an omitted bound,
    the trailing omitted one left out."""
    if X.dtype.kind == "f":
        def run(x, *rest):
            lo = -math.inf if rest[0] is None else float(rest[0].reshape(-1)[0])
            hi = math.inf if len(rest) < 3 or rest[1] is None else float(rest[1].reshape(-1)[0])
            K.clip(x.reshape(-1), rest[-1].reshape(-1), lo, hi)
    else:
        info = np.iinfo(X.dtype)

        def run(x, *rest):
            lo = info.min if rest[0] is None else rest[0].reshape(-1)[0]
            hi = info.max if len(rest) < 3 or rest[1] is None else rest[1].reshape(-1)[0]
            np.minimum(np.maximum(x, lo, out=rest[-1]), hi, out=rest[-1])
    return ctx.result([X.shape], [X.dtype], run)


def _softmax_op(ctx, X, ax, log, legacy):
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    r = X.rank
    a = axis(ctx, ax, r)

    def rows(x, out):
        """x and out as (outer, n, inner), softmax over n; None when empty."""
        s = x.shape
        if legacy:  # opset < 13: rows are the flattened dims from `axis` on
            outer, n, inner = math.prod(s[:a]), math.prod(s[a:]), 1
        else:
            outer, n, inner = math.prod(s[:a]), s[a], math.prod(s[a + 1:])
        if not (outer and n and inner):
            return None
        return x.reshape(outer, n, inner), out.reshape(outer, n, inner)

    if ctx.first_tier:  # numpy (kernels/first_tier.py): nothing to compile
        def run_first(x, out):
            views = rows(x, out)
            if views is not None:
                first_tier.softmax(*views, log)

        return ctx.result([X.shape], [X.dtype], run_first)

    local = threading.local()  # softmax32's scratch, per calling thread (plans run in parallel)

    def run(x, out):
        views = rows(x, out)
        if views is None:
            return
        x3, o3 = views
        outer, inner = x3.shape[0], x3.shape[2]
        if x.dtype != np.float32:
            _softmax(x3, o3, log)
            return
        tasks = outer * -(-inner // _SOFTMAX_BLOCK) if inner > 1 else 0
        scratch = getattr(local, "scratch", None)
        if scratch is None or scratch[0].shape[0] < tasks:
            scratch = local.scratch = (np.empty((max(tasks, 1), _SOFTMAX_BLOCK), np.float32),
                                       np.empty((max(tasks, 1), _SOFTMAX_BLOCK)))
        _softmax32(x3, o3, log, *scratch)

    return ctx.result([X.shape], [X.dtype], run)


@register_op("Softmax", since=(1, 11))
def Softmax_1(ctx, input, *, axis=1):
    return _softmax_op(ctx, input, axis, False, True)


@register_op("Softmax", since=13)
def Softmax(ctx, input, *, axis=-1):
    return _softmax_op(ctx, input, axis, False, False)


@register_op("LogSoftmax", since=(1, 11))
def LogSoftmax_1(ctx, input, *, axis=1):
    return _softmax_op(ctx, input, axis, True, True)


@register_op("LogSoftmax", since=13)
def LogSoftmax(ctx, input, *, axis=-1):
    return _softmax_op(ctx, input, axis, True, False)
