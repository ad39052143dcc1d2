"""BatchNormalization (inference form): y = (x - mean) / sqrt(var + eps) * scale + B."""


from ..kernels.elementwise import channel_affine
from ._shape import FLOAT_TYPES
from .params import bn_affine  # noqa: F401  (also imported from here by train/grads/norm.py)
from .registry import register_op


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
