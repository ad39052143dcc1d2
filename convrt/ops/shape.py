"""Ops that move or relabel data: reshapes (as views), Concat, Shape, Gather, Cast, Constant."""

import numpy as np

from ..errors import InputError
from ..onnx_io.tensors import ELEM_BFLOAT16, ELEM_STRING, elem_type_dtype, elem_type_name
from ._shape import axis as norm_axis
from ._shape import known, numel
from .registry import register_op


def _view(ctx, X, shape):
    """An alias result: the output is ``x`` reshaped, no copy and no buffer."""
    def run(x, *_):
        return x.reshape(shape)

    return ctx.result([shape], [X.dtype], run, alias=True)


def _const_ints(ctx, T, name):
    """The int64 contents of a constant input, or None at load time when not yet known."""
    if T.value is None:
        if ctx.binding:
            raise ctx.unsupported(f"input '{name}' must be computable before run time")
        return None
    ctx.check(T.dtype == np.int64, f"{name} must be int64, got {T.dtype}")
    return [int(v) for v in T.value.reshape(-1)]


@register_op("Identity", since=(1, 13, 14, 16, 19, 21, 23, 24, 25))
def Identity(ctx, input):
    return ctx.result([input.shape], [input.dtype], lambda x, *_: x, alias=True)


def _dropout(ctx, data):
    """Inference Dropout: the data passes through; the optional mask is all true."""
    mask_shape = data.shape

    def run(x, *_):
        return x, np.ones(mask_shape, dtype=bool)

    return ctx.result([data.shape, data.shape], [data.dtype, np.bool_], run, alias=True)


@register_op("Dropout", since=(7, 10))
def Dropout_7(ctx, data, *, ratio=0.5):
    return _dropout(ctx, data)


@register_op("Dropout", since=(12, 13, 22))
def Dropout(ctx, data, ratio=None, training_mode=None, *, seed=0):
    """Inference Dropout.  Training mode drops nothing when the ratio is 0; a random mask is no
    inference computation.  Graph inputs for ratio or training_mode are checked when the
    plan runs (the values are run-time data there)."""
    if training_mode is None:
        return _dropout(ctx, data)
    mode = None if training_mode.value is None else bool(training_mode.value.reshape(-1)[0])
    rate = 0.5 if ratio is None else (
        None if ratio.value is None else float(ratio.value.reshape(-1)[0]))
    if mode is False or rate == 0.0:
        return _dropout(ctx, data)
    refusal = ctx.unsupported("training_mode true with a ratio above 0 (a random mask) is not "
                              "an inference computation")
    if mode is not None and rate is not None:
        raise refusal
    mask_shape = data.shape

    def run(x, r=None, t=None):  # the plan passes the present inputs: data, ratio, mode
        if (t is None or bool(t.reshape(-1)[0])) and (r is None or float(r.reshape(-1)[0])):
            raise type(refusal)(str(refusal))
        return x, np.ones(mask_shape, dtype=bool)

    return ctx.result([data.shape, data.shape], [data.dtype, np.bool_], run, alias=True)


@register_op("Flatten", since=(1, 9, 11, 13, 21, 23, 24, 25))
def Flatten(ctx, input, *, axis=1):
    r = input.rank
    a = int(axis)
    ctx.check(-r <= a <= r, f"axis {a} out of range for rank {r}")
    a = a + r if a < 0 else a
    def part(dims):  # a lone symbolic dim (the batch) keeps its name
        return dims[0] if len(dims) == 1 else numel(dims)

    outer, inner = part(input.shape[:a]), part(input.shape[a:])
    return _view(ctx, input, (outer, inner))


@register_op("Reshape", since=(5, 13, 14, 19, 21, 23, 24, 25))
def Reshape(ctx, data, shape, *, allowzero=0):
    ctx.check(shape.rank == 1, f"shape input must be 1-D, got rank {shape.rank}")
    target = _const_ints(ctx, shape, "shape")
    if target is None:
        n = shape.shape[0]
        return ctx.result([(None,) * n if known(n) else None], [data.dtype])
    ctx.check(sum(v == -1 for v in target) <= 1, f"shape {target} has more than one -1")
    ctx.check(all(v >= -1 for v in target), f"shape {target} has negative dims")
    if allowzero:
        ctx.check(not (0 in target and -1 in target), f"shape {target} mixes 0 and -1 "
                  "with allowzero=1")
    out = []
    for i, v in enumerate(target):
        if v == 0 and not allowzero:
            ctx.check(i < data.rank, f"shape {target} copies dim {i} of a rank-{data.rank} "
                      "input")
            out.append(data.shape[i])
        else:
            out.append(v)
    total = numel(data.shape)
    if -1 in out:
        rest = numel([d for d in out if d != -1])
        i = out.index(-1)
        if total is None or rest is None:
            out[i] = None
        else:
            ctx.check(rest != 0 and total % rest == 0, f"cannot reshape {list(data.shape)} to "
                      f"{target}")
            out[i] = total // rest
    size = numel(out)
    if total is not None and size is not None:
        ctx.check(total == size, f"cannot reshape {list(data.shape)} ({total} elements) to "
                  f"{target}")
    if not all(known(d) for d in out):
        return ctx.result([tuple(out)], [data.dtype])
    return _view(ctx, data, tuple(out))


def _axes_input(ctx, axes, name="axes"):
    return None if axes is None else _const_ints(ctx, axes, name)


def _squeeze(ctx, data, axes):
    r = data.rank
    if axes is None:
        ctx.check(all(known(d) for d in data.shape), "squeeze without axes needs static dims")
        out = tuple(d for d in data.shape if d != 1)
    else:
        ax = sorted({norm_axis(ctx, a, r, "axes") for a in axes})
        ctx.check(len(ax) == len(axes), f"axes {axes} has duplicates")
        for a in ax:
            d = data.shape[a]
            ctx.check(not known(d) or d == 1, f"cannot squeeze axis {a} of size {d}")
        out = tuple(d for i, d in enumerate(data.shape) if i not in ax)
    return _view(ctx, data, out) if all(known(d) for d in out) else ctx.result([out],
                                                                              [data.dtype])


def _unsqueeze(ctx, data, axes):
    r = data.rank + len(axes)
    ax = sorted({norm_axis(ctx, a, r, "axes") for a in axes})
    ctx.check(len(ax) == len(axes), f"axes {axes} has duplicates")
    dims = iter(data.shape)
    out = tuple(1 if i in ax else next(dims) for i in range(r))
    return _view(ctx, data, out) if all(known(d) for d in out) else ctx.result([out],
                                                                              [data.dtype])


@register_op("Squeeze", since=(1, 11))
def Squeeze_1(ctx, data, *, axes=None):
    return _squeeze(ctx, data, None if axes is None else list(axes))


@register_op("Squeeze", since=(13, 21, 23, 24, 25))
def Squeeze(ctx, data, axes=None):
    if axes is not None and axes.value is None and not ctx.binding:
        return ctx.result([None], [data.dtype])
    return _squeeze(ctx, data, _axes_input(ctx, axes))


@register_op("Unsqueeze", since=(1, 11))
def Unsqueeze_1(ctx, data, *, axes):
    return _unsqueeze(ctx, data, list(axes))


@register_op("Unsqueeze", since=(13, 21, 23, 24, 25))
def Unsqueeze(ctx, data, axes):
    ax = _axes_input(ctx, axes)
    if ax is None:
        return ctx.result([None], [data.dtype])
    return _unsqueeze(ctx, data, ax)


@register_op("Concat", since=(4, 11, 13))
def Concat(ctx, *inputs, axis):
    ctx.check(len(inputs) >= 1, "needs at least one input")
    ctx.check(all(t is not None for t in inputs), "inputs cannot be omitted")
    first = inputs[0]
    r = first.rank
    a = norm_axis(ctx, axis, r)
    total = 0
    for t in inputs:
        ctx.check(t.dtype == first.dtype, f"dtypes differ ({t.dtype} vs {first.dtype})")
        ctx.check(t.rank == r, f"ranks differ ({t.rank} vs {r})")
        for i, (d0, d1) in enumerate(zip(first.shape, t.shape)):
            if i != a and known(d0) and known(d1):
                ctx.check(d0 == d1, f"shapes {list(first.shape)} and {list(t.shape)} differ "
                          f"off the concat axis")
        total = total + t.shape[a] if known(total) and known(t.shape[a]) else None
    shape = first.shape[:a] + (total,) + first.shape[a + 1:]
    return ctx.result([shape], [first.dtype],
                      lambda *arrs: np.concatenate(arrs[:-1], axis=a, out=arrs[-1]))


@register_op("Shape", since=(1, 13, 15, 19, 21, 23, 24, 25))
def Shape(ctx, data, *, start=0, end=None):
    r = data.rank
    s = min(max(int(start) + (r if int(start) < 0 else 0), 0), r)
    e = r if end is None else min(max(int(end) + (r if int(end) < 0 else 0), 0), r)
    dims = data.shape[s:e] if e > s else ()
    if all(known(d) for d in dims):
        value = np.array(dims, dtype=np.int64)
        return ctx.result([value.shape], [np.int64], lambda x, out: np.copyto(out, value),
                          value=value)
    return ctx.result([(len(dims),)], [np.int64])


@register_op("Gather", since=(1, 11, 13))
def Gather(ctx, data, indices, *, axis=0):
    ctx.check(indices.dtype in (np.int32, np.int64), f"indices dtype {indices.dtype} must be "
              "int32 or int64")
    r = data.rank
    ctx.check(r >= 1, "data must have rank >= 1")
    a = norm_axis(ctx, axis, r)
    shape = data.shape[:a] + tuple(indices.shape) + data.shape[a + 1:]
    n = data.shape[a]
    if indices.value is not None and known(n):
        idx = indices.value
        ctx.check(bool(np.all((idx >= -n) & (idx < n))), f"indices out of range for axis "
                  f"size {n}")

    def run(x, idx, out):
        size = x.shape[a]
        if np.any((idx < -size) | (idx >= size)):
            raise InputError(f"{ctx.where()}: indices out of range [{-size}, {size})")
        out[...] = np.take(x, idx, axis=a)

    return ctx.result([shape], [data.dtype], run)


def np_dtype(ctx, to):
    try:
        dt = elem_type_dtype(int(to))
    except Exception:
        raise ctx.unsupported(f"cast to ONNX type {to} is not supported") from None
    if int(to) in (ELEM_STRING, ELEM_BFLOAT16) or dt.kind not in "biuf":
        raise ctx.unsupported(f"cast to {elem_type_name(int(to))} is not supported")
    return dt


@register_op("Cast", since=(6, 9, 13, 19, 21, 23, 24, 25, 28))
def Cast(ctx, input, *, to, saturate=1, round_mode="up"):
    from .cast import cast_op  # numeric and ml_dtypes targets (bfloat16, float8, int4...)
    return cast_op(ctx, input, to, saturate, round_mode)


_CONST_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


@register_op("Constant", since=(1, 9, 11, 12, 13, 19, 21, 23, 24, 25))
def Constant(ctx, *, value=None, value_float=None, value_floats=None, value_int=None,
             value_ints=None, value_string=None, value_strings=None, sparse_value=None):
    given = {k: v for k, v in locals().items() if k != "ctx" and v is not None}
    ctx.check(len(given) == 1, f"needs exactly one value attribute, got {sorted(given)}")
    (name, v), = given.items()
    if name not in _CONST_ATTRS:
        raise ctx.unsupported(f"attribute '{name}' is not supported")
    if name == "value":
        arr = np.asarray(v)
    elif name in ("value_float", "value_floats"):
        arr = np.asarray(v, dtype=np.float32)
    else:
        arr = np.asarray(v, dtype=np.int64)
    ctx.check(arr.dtype.kind in "biuf", f"'{name}' is not a numeric tensor")
    return ctx.result([arr.shape], [arr.dtype], lambda out: np.copyto(out, arr), value=arr)

