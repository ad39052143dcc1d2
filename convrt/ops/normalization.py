"""BatchNormalization (inference form): y = (x - mean) / sqrt(var + eps) * scale + B;
LayerNormalization (opset 17) over the trailing dims from ``axis``; ``convrt.ChannelLayerNorm``,
LayerNormalization over the channels (axis 1) of an NCHW tensor."""

import threading

import numpy as np


from ..kernels.elementwise import channel_affine
from ..kernels.layer_norm import PIXELS, channel_layer_norm
from ..kernels.layer_norm import layer_norm as _layer_norm
from ._shape import FLOAT16_UP, FLOAT_TYPES
from ._shape import axis as norm_axis
from .params import bn_affine  # noqa: F401  (also imported from here by train/grads/norm.py)
from .registry import CONVRT_DOMAIN, register_op


def _bn(ctx, X, scale, B, mean, var, epsilon, training_mode=0, n_outputs=1):
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 2, f"input rank {X.rank} must be >= 2")
    if training_mode:
        raise ctx.unsupported("training_mode=1 is a training op; convrt.train handles it")
    ctx.check(isinstance(epsilon, (int, float)) and 0 <= epsilon < float("inf"),
              f"epsilon {epsilon!r} must be a finite non-negative number")
    c = X.shape[1]
    for name, t in (("scale", scale), ("B", B), ("input_mean", mean), ("input_var", var)):
        ctx.check(t.rank == 1, f"{name} must be 1-D, got shape {t.shape}")
        if isinstance(c, int) and isinstance(t.shape[0], int):
            ctx.check(t.shape[0] == c, f"{name} has {t.shape[0]} entries for {c} channels")
        ctx.check(t.dtype in FLOAT_TYPES, f"{name} dtype {t.dtype} is not supported")
    if not ctx.binding:
        return ctx.result([X.shape], [X.dtype])
    dt = X.dtype
    consts = [t.value for t in (scale, B, mean, var)]
    pre = None
    if all(v is not None for v in consts):
        pre = tuple(a.astype(dt) for a in bn_affine(*consts, epsilon))

    def run(x, s, b, m, v, out):
        a, sh = pre if pre is not None else (t.astype(dt) for t in bn_affine(s, b, m, v, epsilon))
        n, ch = x.shape[:2]
        rest = x.size // (n * ch) if n * ch else 0  # (0, C, ...) cannot reshape with -1
        channel_affine(x.reshape(n, ch, rest), a, sh, out.reshape(n, ch, rest))

    return ctx.result([X.shape], [X.dtype], run)


@register_op("BatchNormalization", since=7)
def BatchNormalization_7(ctx, X, scale, B, mean, var, *, epsilon=1e-5, momentum=0.9,
                         spatial=1):
    if int(spatial) != 1:
        raise ctx.unsupported("spatial=0 is not supported")
    return _bn(ctx, X, scale, B, mean, var, epsilon)


@register_op("BatchNormalization", since=9)
def BatchNormalization_9(ctx, X, scale, B, mean, var, *, epsilon=1e-5, momentum=0.9):
    return _bn(ctx, X, scale, B, mean, var, epsilon)


@register_op("BatchNormalization", since=(14, 15))
def BatchNormalization(ctx, X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9,
                       training_mode=0):
    return _bn(ctx, X, scale, B, input_mean, input_var, epsilon, training_mode)


@register_op("LayerNormalization", since=17)
def LayerNormalization(ctx, X, Scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    """y = (x - mean) / sqrt(var + eps) * Scale + B over dims [axis, rank) (ConvNeXt, ViTs).

    float32/float64 with only Y wanted: one numba pass per row (``kernels/layer_norm.py``,
    statistics in float64).  Otherwise (float16, or the optional Mean and InvStdDev outputs,
    which have X's leading dims and 1s) numpy, statistics in float32 (stash_type 1; float64
    input keeps float64)."""
    ctx.check(X.dtype in FLOAT16_UP, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 1, f"input rank {X.rank} must be >= 1")
    ctx.check(int(stash_type) in (1, 11), f"stash_type {stash_type} must be 1 or 11")
    ctx.check(isinstance(epsilon, (int, float)) and 0 <= epsilon < float("inf"),
              f"epsilon {epsilon!r} must be a finite non-negative number")
    a = norm_axis(ctx, axis, X.rank)
    norm = tuple(X.shape[a:])
    for name, t in (("Scale", Scale), ("B", B)):
        if t is None:
            continue
        ctx.check(t.dtype == X.dtype, f"{name} dtype {t.dtype} differs from X dtype {X.dtype}")
        ctx.check(t.shape is not None and len(t.shape) <= len(norm) and all(
            d == 1 or not isinstance(d, int) or not isinstance(n, int) or d == n
            for d, n in zip(t.shape[::-1], norm[::-1])),
            f"{name} shape {list(t.shape or ())} does not fit the normalized shape "
            f"{list(norm)} (axis {axis} of input {list(X.shape)})")
    stat_dt = np.dtype(np.float64 if int(stash_type) == 11 or X.dtype == np.float64
                       else np.float32)
    stat_shape = tuple(X.shape[:a]) + (1,) * len(norm)
    n_out = max(1, min(3, ctx.n_outputs))
    shapes = [X.shape] + [stat_shape] * (n_out - 1)
    dtypes = [X.dtype] + [stat_dt] * (n_out - 1)
    n_in = 3 if B is not None else 2
    axes = tuple(range(a, X.rank))
    eps = float(epsilon)
    if n_out == 1 and X.dtype in FLOAT_TYPES and ctx.binding:
        return _layer_norm_rows(ctx, X, Scale, B, norm, eps)

    def run(*args):
        x, s = args[0], args[1]
        b = args[2] if n_in == 3 else None
        y = args[n_in]
        xs = x.astype(stat_dt, copy=False)
        mean = xs.mean(axis=axes, keepdims=True)
        d = xs - mean
        inv = 1.0 / np.sqrt((d * d).mean(axis=axes, keepdims=True) + stat_dt.type(eps))
        d *= inv
        d *= s
        if b is not None:
            d += b
        np.copyto(y, d, casting="unsafe")
        stats = args[n_in + 1:]
        for o, v in zip(stats, (mean, inv)):
            np.copyto(o, v, casting="unsafe")

    return ctx.result(shapes, dtypes, run)


def _layer_norm_rows(ctx, X, Scale, B, norm, eps):
    """The numba form: x as (rows, width); Scale and B expanded to the normalized shape once
    when constant (they may broadcast, e.g. [1, C] against [H, C])."""
    width = int(np.prod(norm))
    rows = int(np.prod(X.shape)) // width if width else 0
    dt = X.dtype

    def expand(a):  # a writable copy: numba types read-only arrays (broadcast views) apart
        return np.array(np.broadcast_to(a, norm), dt).reshape(-1)

    def full(t):
        return None if t is None or t.value is None else expand(t.value)

    s_c, b_c = full(Scale), full(B) if B is not None else np.zeros(width, dt)

    def run(x, s, *rest):  # rest = ([b], out)
        sv = s_c if s_c is not None else expand(s)
        bv = b_c if b_c is not None else expand(rest[0])
        if rows and width:
            _layer_norm(x.reshape(rows, width), sv, bv, eps, rest[-1].reshape(rows, width))

    return ctx.result([X.shape], [X.dtype], run)


@register_op("ChannelLayerNorm", since=1, domain=CONVRT_DOMAIN)
def ChannelLayerNorm(ctx, X, Scale, B, *, epsilon=1e-5):
    """y[n, :, h, w] = LayerNormalization of x[n, :, h, w] over the C channels, * Scale + B.

    What ``passes/channels_first.py`` writes for ConvNeXt's Transpose(NCHW -> NHWC) ->
    LayerNormalization(axis=-1) -> ... -> Transpose back, so the block stays NCHW; its ONNX
    function (``ops/fused.py``) is that Transpose -> LayerNormalization -> Transpose.  The
    statistics are float64 sums in channel order, as the row kernel's: the same values."""
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 2, f"input rank {X.rank} must be >= 2")
    ctx.check(isinstance(epsilon, (int, float)) and 0 <= epsilon < float("inf"),
              f"epsilon {epsilon!r} must be a finite non-negative number")
    c = X.shape[1]
    for name, t in (("Scale", Scale), ("B", B)):
        ctx.check(t.dtype == X.dtype, f"{name} dtype {t.dtype} differs from X dtype {X.dtype}")
        ctx.check(t.rank == 1 and (not isinstance(c, int) or t.shape[0] == c),
                  f"{name} shape {list(t.shape or ())} must be [{c}] for input "
                  f"{list(X.shape)}")
    if not ctx.binding:
        return ctx.result([X.shape], [X.dtype])
    eps = float(epsilon)
    local = threading.local()  # scratch per calling thread: two runs at once may share a plan

    def run(x, s, b, out):
        n, ch = x.shape[:2]
        px = x.size // (n * ch) if n * ch else 0
        if not px:
            return
        tasks = n * -(-px // PIXELS)
        stats = getattr(local, "stats", None)
        if stats is None or stats.shape[0] < tasks:
            stats = local.stats = np.empty((tasks, 2, PIXELS))
        channel_layer_norm(x.reshape(n, ch, px), s, b, eps, out.reshape(n, ch, px), stats)

    return ctx.result([X.shape], [X.dtype], run)
