"""Conv (2-D; 1-D runs as 2-D with a unit height) bound to the packed direct kernel."""

import math
import threading

from ..kernels import first_tier
from ..kernels.conv import Conv2d
from ..kernels.conv.conv_pool import POOL_2X2, ConvMaxPool, pooled_shape
from ._shape import FLOAT_TYPES, ints, known, window
from .registry import register_op


def check_conv_inputs(ctx, X, W, what: str = "convolution") -> int:
    """Dtype and rank checks shared by Conv and ConvTranspose; returns the spatial rank."""
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(W.dtype == X.dtype, f"W dtype {W.dtype} differs from X dtype {X.dtype}")
    ctx.check(X.rank is not None and W.rank is not None, "input ranks must be known")
    ctx.check(X.rank >= 3 and W.rank == X.rank, f"X rank {X.rank} and W rank {W.rank} must "
              "match and be >= 3")
    nsp = X.rank - 2
    if nsp > 3:
        raise ctx.unsupported(f"{nsp}-D {what} is not supported (1-D to 3-D are)")
    return nsp


def conv_geometry(ctx, X, W, B, auto_pad, dilations, group, kernel_shape, pads, strides):
    """Validate a Conv's inputs and attributes; return the resolved geometry and out shape."""
    nsp = check_conv_inputs(ctx, X, W)
    wsp = tuple(W.shape[2:])
    ctx.check(all(known(d) for d in W.shape), "W shape must be static")
    ctx.check(all(d >= 1 for d in W.shape), f"W shape {list(W.shape)} has empty dims")
    k = ints(ctx, kernel_shape if kernel_shape is not None else wsp, nsp, "kernel_shape", 1)
    ctx.check(k == wsp, f"kernel_shape {list(k)} does not match W {list(W.shape)}")
    s = ints(ctx, strides if strides is not None else [1] * nsp, nsp, "strides", 1)
    d = ints(ctx, dilations if dilations is not None else [1] * nsp, nsp, "dilations", 1)
    p = ints(ctx, pads if pads is not None else [0] * 2 * nsp, 2 * nsp, "pads", 0)
    g = int(group)
    m, cg = W.shape[0], W.shape[1]
    ctx.check(g >= 1 and m % g == 0, f"group {g} must divide the {m} output channels")
    c = X.shape[1]
    if known(c):
        ctx.check(c == cg * g, f"X has {c} channels but W expects {cg} x group {g}")
    if B is not None:
        ctx.check(B.shape == (m,), f"B shape {list(B.shape)} must be [{m}]")
        ctx.check(B.dtype == X.dtype, f"B dtype {B.dtype} differs from X dtype {X.dtype}")
    ctx.check(all(not known(v) or v >= 1 for v in X.shape[2:]),
              f"input spatial dims {list(X.shape[2:])} are empty")
    out, p = window(ctx, X.shape[2:], k, s, d, p, auto_pad)
    ctx.check(all(o is None or o >= 1 for o in out), f"output spatial size {list(out)} is empty")
    shape = (X.shape[0], m) + out
    macs = 0
    if all(known(v) for v in shape):
        macs = math.prod(shape) * cg * math.prod(k)
    return k, s, d, p, g, shape, macs


def bind_conv(ctx, X, W, B, k, s, d, p, g, shape, macs, activation="none", alpha=0.01,
              clip=(-math.inf, math.inf), residual=False, pool=None):
    """The kernel for a (possibly fused) Conv: 1-D is lifted to 2-D with unit height.  With
    ``pool`` (2-D only; kernel, strides, pads as ``conv_pool.POOL_2X2``) the result is
    max-pooled (``kernels/conv/conv_pool.py``)."""
    if len(k) == 3:
        from .conv3d import bind_conv3d
        return bind_conv3d(ctx, X, W, B, k, s, d, p, g, shape, macs, activation, alpha, clip,
                           residual)
    unpooled = shape
    if pool:  # the op checked: 2-D, each pad under its kernel, a window fits where known
        shape = pooled_shape(shape, pool) if all(known(v) for v in shape[2:]) else \
            shape[:2] + (None, None)
    if not ctx.binding:
        return ctx.result([shape], [X.dtype], flops=macs)
    one_d = len(k) == 1
    if one_d:
        k, s, d, p = (1,) + k, (1,) + s, (1,) + d, (0, p[0], 0, p[1])
    in4 = (X.shape[0], X.shape[1], 1, X.shape[2]) if one_d else tuple(X.shape)
    out4 = (shape[0], shape[1], 1, shape[2]) if one_d else shape
    # A stride past the padded extent gives one output on that axis, as the extent itself does;
    # clamping keeps the kernel's offset arithmetic far from int64 overflow.
    s = tuple(min(v, max(1, n + p[i] + p[i + 2])) for i, (v, n) in enumerate(zip(s, in4[2:])))
    if ctx.first_tier:
        return _bind_first_tier(ctx, B is not None, residual, pool, in4, out4, s, p, d, g,
                                activation, alpha, clip, shape, X.dtype, macs)
    scratch = _scratch_bytes(in4, s, p, X.dtype.itemsize)
    if pool:  # bound for the general path, which pools a full-size output (or one image's)
        scratch += math.prod(unpooled[1 if tuple(pool) != POOL_2X2 else 0:]) * X.dtype.itemsize
    kind = ConvMaxPool if pool else Conv2d
    precision = ctx.precision

    def w4_of(w):
        return w.reshape(w.shape[0], w.shape[1], 1, w.shape[2]) if one_d else w

    extra = {"pool": tuple(pool)} if pool else {}

    def make(w, b, packs=None):
        return kind(w4_of(w), b, in4, s, p, d, g, activation, alpha, clip[0], clip[1], X.dtype,
                    packs=packs, precision=precision, **extra)

    const = W.value is not None and (B is None or B.value is not None)
    conv = None
    if const:  # packed once per session when the plan is built with a pack cache
        bv = None if B is None else B.value
        # keyed by the weight's Value where it has one (``TensorInfo.key``), not by its array:
        # a released weight (convrt/weights.py) has no array, and a restored one a new one
        wkey = W.value if W.key is None else W.key
        packs = None if ctx.packs is None else (ctx.packs, ("conv", id(wkey), id(bv)),
                                                (wkey, bv))
        conv = make(W.value, bv, packs)
    if conv is not None:  # the bound kernel knows its own copy (Winograd, gather, none)
        scratch = conv.scratch_bytes()

    has_b = B is not None
    # weights fed at run time (training: every step): the layer is bound once per thread and
    # its packed arrays refilled (``Conv2d.repack``); per thread, so two runs at once never
    # share arrays being refilled
    local = threading.local()

    def run(x, w, *rest):  # rest = ([b], [z], out): inputs as the node has them, then out
        b = rest[0] if has_b else None
        z = rest[-2].reshape(out4) if residual else None
        kern = conv
        if kern is None:
            kern = getattr(local, "kern", None)
            repack = getattr(kern, "repack", None)
            if repack is None or not repack(w4_of(w), b):
                kern = local.kern = make(w, b)
        # x_shape / y_shape: 4-D, or flat where the plan gave X or Y a zero-bordered layout
        kern(x.reshape(kern.x_shape), rest[-1].reshape(kern.y_shape), z)

    # the bound kernel, for the plan's zero-bordered handoffs (runtime/plan.py); a residual is
    # read at the output's offsets, so such an output stays NCHW
    layout = {} if conv is None else {"reads_x": conv} if residual else {"reads_x": conv,
                                                                            "writes_y": conv}
    if conv is not None and conv.packs_weights:  # W (input 1) is never read at run time
        layout["packed"] = (1,)
    return ctx.result([shape], [X.dtype], run, flops=macs, scratch=scratch, **layout)


def _bind_first_tier(ctx, has_b, residual, pool, in4, out4, s, p, d, g, activation, alpha, clip,
                     shape, dtype, macs):
    """The first tier's numpy convolution (kernels/first_tier.py, runtime/tiers.py): nothing
    to compile or pack, W read at run time, plain NCHW in and out (no zero-bordered
    handoffs)."""
    def run(x, w, *rest):  # rest = ([b], [z], out), as ``bind_conv``'s run
        b = rest[0] if has_b else None
        z = rest[-2].reshape(out4) if residual else None
        w4 = w.reshape(w.shape[0], w.shape[1], 1, -1) if w.ndim == 3 else w
        first_tier.conv2d(x.reshape(in4), w4, b, z, rest[-1].reshape(out4), s, p, d, g,
                          activation, alpha, clip, pool)

    return ctx.result([shape], [dtype], run, flops=macs)


def _scratch_bytes(in4, s, p, itemsize) -> int:
    """Bytes of Conv2d's zero-bordered input copy (kernels/conv/_layout.py), counted in the
    budget."""
    n, c, h, w = in4
    if s[1] == 1 and not any(p):
        return 0
    rl = s[1] * -(-(w + p[1] + p[3]) // s[1])
    return (n * c + 1) * ((h + p[0] + p[2]) * rl + 64) * itemsize


@register_op("Conv", since=(1, 11, 22))
def Conv(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
         pads=None, strides=None):
    geo = conv_geometry(ctx, X, W, B, auto_pad, dilations, group, kernel_shape, pads, strides)
    return bind_conv(ctx, X, W, B, *geo)
