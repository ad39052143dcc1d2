"""ConvTranspose (1-D, 2-D and 3-D; lower ranks run lifted to 3-D) on a numba scatter kernel."""

import math

import numpy as np

from ..kernels.conv_transpose import conv_transpose3d
from ._shape import ints, known
from .conv import check_conv_inputs
from .registry import register_op


def _geometry(ctx, X, W, B, auto_pad, dilations, group, kernel_shape, output_padding,
              output_shape, pads, strides):
    nsp = check_conv_inputs(ctx, X, W, "ConvTranspose")
    ctx.check(all(known(d) and d >= 1 for d in W.shape), f"W shape {list(W.shape)} must be "
              "static and non-empty")
    wsp = tuple(W.shape[2:])
    k = ints(ctx, kernel_shape if kernel_shape is not None else wsp, nsp, "kernel_shape", 1)
    ctx.check(k == wsp, f"kernel_shape {list(k)} does not match W {list(W.shape)}")
    s = ints(ctx, strides if strides is not None else [1] * nsp, nsp, "strides", 1)
    d = ints(ctx, dilations if dilations is not None else [1] * nsp, nsp, "dilations", 1)
    op = ints(ctx, output_padding if output_padding is not None else [0] * nsp, nsp,
              "output_padding", 0)
    for i in range(nsp):
        ctx.check(op[i] < max(s[i], d[i]), f"output_padding {list(op)} must be smaller than "
                  f"the stride or dilation")
    g = int(group)
    c, mg = W.shape[0], W.shape[1]
    ctx.check(g >= 1 and c % g == 0, f"group {g} must divide the {c} input channels of W")
    if known(X.shape[1]):
        ctx.check(X.shape[1] == c, f"X has {X.shape[1]} channels, W expects {c}")
    m = mg * g
    if B is not None:
        ctx.check(B.shape == (m,), f"B shape {list(B.shape)} must be [{m}]")
        ctx.check(B.dtype == X.dtype, f"B dtype {B.dtype} differs from X dtype {X.dtype}")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ctx.fail(f"auto_pad {auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, "
                       "SAME_LOWER")
    spatial = X.shape[2:]
    target = None
    if output_shape is not None:
        t = ints(ctx, output_shape, None, "output_shape", 1)
        if len(t) == nsp + 2:
            t = t[2:]
        ctx.check(len(t) == nsp, f"output_shape {list(output_shape)} needs {nsp} entries")
        target = t
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = tuple(x * st if known(x) else None for x, st in zip(spatial, s))
    if target is not None:
        begin, end, out = [], [], []
        for i in range(nsp):
            if not known(spatial[i]) or target[i] is None:
                begin.append(0), end.append(0), out.append(None)
                continue
            total = s[i] * (spatial[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - target[i]
            half = total // 2
            b, e = (half, total - half) if auto_pad == "SAME_UPPER" else (total - half, half)
            begin.append(b), end.append(e), out.append(target[i])
        p = tuple(begin) + tuple(end)
    else:
        p = (0,) * (2 * nsp) if auto_pad == "VALID" else ints(
            ctx, pads if pads is not None else [0] * 2 * nsp, 2 * nsp, "pads", 0)
        out = []
        for i in range(nsp):
            if not known(spatial[i]):
                out.append(None)
                continue
            out.append(s[i] * (spatial[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - p[i] -
                       p[i + nsp])
    ctx.check(all(o is None or o >= 1 for o in out), f"output spatial size {out} is empty")
    shape = (X.shape[0], m) + tuple(out)
    macs = 0
    if all(known(v) for v in X.shape):
        macs = math.prod(X.shape) * mg * math.prod(k)
    return s, d, p, g, shape, macs


@register_op("ConvTranspose", since=(1, 11, 22))
def ConvTranspose(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                  kernel_shape=None, output_padding=None, output_shape=None, pads=None,
                  strides=None):
    s, d, p, g, shape, macs = _geometry(ctx, X, W, B, auto_pad, dilations, group, kernel_shape,
                                        output_padding, output_shape, pads, strides)
    if not ctx.binding:
        return ctx.result([shape], [X.dtype], flops=macs)
    nsp = len(s)
    lift = (1,) * (3 - nsp)
    geo = np.array(lift + s + lift + d + (0,) * (3 - nsp) + p[:nsp], dtype=np.int64)
    in5 = tuple(X.shape[:2]) + lift + tuple(X.shape[2:])
    w5 = tuple(W.shape[:2]) + lift + tuple(W.shape[2:])
    out5 = tuple(shape[:2]) + lift + tuple(shape[2:])
    has_b = B is not None
    empty = np.zeros(1, X.dtype)

    def run(x, w, *rest):  # rest = ([b], out)
        out = rest[-1]
        conv_transpose3d(x.reshape(in5), w.reshape(w5), rest[0] if has_b else empty, has_b,
                         out.reshape(out5), g, geo)

    return ctx.result([shape], [X.dtype], run, flops=macs)
