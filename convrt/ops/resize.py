"""Resize (opsets 10-19) and Upsample (7, 9): output shape, validation, and the bound kernel.

The output shape must be known when a plan is built, so ``scales``/``sizes`` (and ``roi`` for
``tf_crop_and_resize``) must be constant by then; at load time a non-constant one leaves the
resized dims unknown.  Everything a kernel reads is settled here: modes, lengths, positive finite
scales, sizes >= 1, no resize of an empty axis to a non-empty one.  The per-axis tap tables are
built once at bind time (``kernels/resize.py``).

Resize-10 and Upsample have no coordinate_transformation_mode: they map with ``x / scale``
(asymmetric) and round nearest taps as onnxruntime does (floor when upscaling, ceil when
downscaling), the behaviour their ONNX-era test data and exporters assume.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..kernels import resize as K
from ._shape import FLOAT16_UP, INT_TYPES, known, numel
from ._shape import axis as norm_axis
from .registry import TensorInfo, register_op

_MODES = ("nearest", "linear", "cubic")
_CTM = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_crop_and_resize")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_POLICIES = ("stretch", "not_larger", "not_smaller")
_GATHER_TYPES = FLOAT16_UP + INT_TYPES + (np.dtype(np.bool_),)
MAX_DIM = 2 ** 31 - 1  # an output axis longer than this would need a multi-GB index table
EAGER_TABLE_ENTRIES = 1 << 22  # taps x output positions built at bind time (64 MB at most)


def _one_of(ctx, name, value, allowed):
    if value not in allowed:
        raise ctx.fail(f"{name} {value!r} is not one of {', '.join(allowed)}")


def _flag(ctx, name, value):
    if value not in (0, 1):
        raise ctx.fail(f"{name} must be 0 or 1, got {value}")
    return bool(value)


def _const(ctx, T, name, kinds):
    """The values of a constant 1-D input (None while unknown at load time)."""
    ctx.check(T.dtype is None or T.dtype.kind in kinds, f"{name} has dtype {T.dtype}")
    ctx.check(T.rank is None or T.rank == 1, f"{name} must be 1-D, got rank {T.rank}")
    if T.value is None:
        if ctx.binding:
            raise ctx.unsupported(f"input '{name}' must be computable before run time")
        return None
    return T.value.reshape(-1)


def _choose(ctx, scales, sizes):
    """("scales" | "sizes", info) for the one given non-empty input; (kind, None) if unknown."""
    n_sc = 0 if scales is None else numel(scales.shape) if scales.shape is not None else None
    n_sz = 0 if sizes is None else numel(sizes.shape) if sizes.shape is not None else None
    if n_sc and n_sz:
        raise ctx.fail("scales and sizes are both given; exactly one may be non-empty")
    if n_sc == 0 and n_sz == 0:
        raise ctx.fail("one of scales and sizes must be given (non-empty)")
    if n_sc:
        return "scales", scales
    if n_sz:
        return "sizes", sizes
    return (None, None)  # a shape still unknown at load time


def _geometry(ctx, X, kind, vals, axes, policy, legacy):
    """(output shape, float64 scale per axis, None where unknown), as onnx's reference sets them.

    Scales: out = floor(in * scale).  Sizes: scale = size / in; the aspect-ratio policies use one
    scale, the min or max over the axes, and round half up (the spec's round_int)."""
    r = X.rank
    n = len(axes)
    ctx.check(len(vals) == n, f"{kind} has {len(vals)} entries, expected {n} (one per "
              f"{'axis in axes' if n != r else 'input axis'})")
    shape, scale = list(X.shape), [1.0] * r
    if kind == "scales":
        sc = [float(v) for v in vals]
        ctx.check(all(math.isfinite(s) and s > 0 for s in sc),
                  f"scales {sc} must be finite and > 0")
        if legacy == "upsample":
            ctx.check(all(s >= 1 for s in sc), f"Upsample scales {sc} must be >= 1")
        for a, s in zip(axes, sc):
            d = X.shape[a]
            scale[a] = s
            if known(d):
                o = d * s
                ctx.check(o <= MAX_DIM, f"scale {s} makes axis {a} ({d}) too long")
                shape[a] = math.floor(o)
            elif s != 1:
                shape[a] = None
        return tuple(shape), scale
    sz = [int(v) for v in vals]
    ctx.check(all(1 <= v <= MAX_DIM for v in sz), f"sizes {sz} must be >= 1 (and < 2**31)")
    ins = [X.shape[a] for a in axes]
    for a, d, v in zip(axes, ins, sz):
        ctx.check(d != 0, f"axis {a} is empty and cannot be resized to {v}")
    if policy == "stretch":
        for a, d, v in zip(axes, ins, sz):
            shape[a] = v
            scale[a] = v / d if known(d) else None
        return tuple(shape), scale
    if not all(known(d) for d in ins):
        for a in axes:
            shape[a] = scale[a] = None
        return tuple(shape), scale
    ratios = [v / d for v, d in zip(sz, ins)]
    s = min(ratios) if policy == "not_larger" else max(ratios)
    for a, d in zip(axes, ins):
        shape[a] = int(s * d + 0.5)
        ctx.check(shape[a] <= MAX_DIM, f"{policy} size for axis {a} is too long")
        scale[a] = s
    return tuple(shape), scale


def _resize(ctx, X, roi, scales, sizes, *, mode, ctm, nearest_mode, cubic_a=-0.75,
            exclude_outside=0, extrapolation=0.0, policy="stretch", axes=None, antialias=0,
            legacy=None):
    """Shared body of Resize and Upsample; ``legacy`` is "resize10"/"upsample" or None."""
    _one_of(ctx, "mode", mode, _MODES if legacy is None else _MODES[:2])
    ctms = _CTM + (("tf_half_pixel_for_nn",) if ctx.opset < 13 else ()) + \
        (("half_pixel_symmetric",) if ctx.opset >= 19 else ())
    _one_of(ctx, "coordinate_transformation_mode", ctm, ctms)
    if legacy is None:
        _one_of(ctx, "nearest_mode", nearest_mode, _NEAREST)
    _one_of(ctx, "keep_aspect_ratio_policy", policy, _POLICIES)
    exclude = _flag(ctx, "exclude_outside", exclude_outside)
    if exclude and mode == "nearest":  # one tap: nothing to renormalize when it is outside
        raise ctx.unsupported("exclude_outside=1 with mode nearest is undefined (onnxruntime "
                              "refuses it; onnx's reference outputs 0 at the border)")
    aa = _flag(ctx, "antialias", antialias) and mode != "nearest"  # the spec: linear/cubic only
    nearest = mode == "nearest"
    dtypes = _GATHER_TYPES if nearest else FLOAT16_UP
    if X.dtype not in dtypes:
        raise ctx.unsupported(f"{mode} Resize of {X.dtype} data is not supported")
    r = X.rank
    ctx.check(r is not None and r >= 1, "input rank must be known and >= 1")
    ax = list(range(r)) if axes is None else [norm_axis(ctx, a, r, "axes") for a in axes]
    ctx.check(len(set(ax)) == len(ax), f"axes {list(axes or [])} has duplicates")
    kind, T = _choose(ctx, scales, sizes)
    vals = None if T is None else _const(ctx, T, kind, "f" if kind == "scales" else "iu")
    if vals is None:
        if ctx.binding:
            raise ctx.unsupported("the output shape must be computable before run time")
        shape = tuple(None if a in ax else d for a, d in enumerate(X.shape))
        return ctx.result([shape], [X.dtype])
    shape, scale = _geometry(ctx, X, kind, vals, ax, policy if kind == "sizes" else "stretch",
                             legacy)
    box = [(0.0, 1.0)] * r
    if ctm == "tf_crop_and_resize":
        ctx.check(roi is not None, "tf_crop_and_resize needs the roi input")
        rv = _const(ctx, roi, "roi", "f")
        if rv is None:
            return ctx.result([shape], [X.dtype])
        ctx.check(len(rv) == 2 * len(ax), f"roi has {len(rv)} entries, expected {2 * len(ax)}")
        for i, a in enumerate(ax):  # numpy scalars: float32 roi arithmetic, as the reference
            box[a] = (rv[i], rv[i + len(ax)])
    if not ctx.binding:
        return ctx.result([shape], [X.dtype])
    taps = {"nearest": 1, "linear": 2, "cubic": 4}[mode]
    todo = {}  # axis -> taps, for the axes that change
    for a in ax:
        i_n, o_n = X.shape[a], shape[a]
        if 0 in (i_n, o_n) or (scale[a] == 1.0 and i_n == o_n and tuple(box[a]) == (0.0, 1.0)):
            continue
        todo[a] = K.antialias_taps(mode, scale[a]) if aa else taps
        ctx.check(todo[a] <= 8 * i_n + 8,  # valid scales keep it within ~4x the input (cubic)
                  f"the antialiasing filter of axis {a} is too wide")

    def build():
        tables = [None] * r
        for a in todo:
            tables[a] = K.axis_table(
                mode, "asymmetric" if legacy else ctm, X.shape[a], shape[a], scale[a],
                nearest_mode="legacy" if legacy else nearest_mode, cubic_a=float(cubic_a),
                exclude_outside=exclude, antialias=aa, roi=box[a])
        return K.Resizer(X.shape, shape, tables, nearest, X.dtype, float(extrapolation))

    # Tables are built now, once; only an output axis so long that its tables could outgrow the
    # plan's memory budget (checked after binding) waits for the first run, after that check.
    entries = sum(k * shape[a] for a, k in todo.items())
    bound = [build() if entries <= EAGER_TABLE_ENTRIES else None]
    lock = threading.Lock()

    def run(x, *rest):  # rest = (roi, scales, sizes present..., out)
        resizer = bound[0]
        if resizer is None:
            with lock:
                bound[0] = bound[0] or build()
                resizer = bound[0]
        resizer(x, rest[-1])

    macs = 0 if nearest else math.prod(shape) * sum(todo.values())
    return ctx.result([shape], [X.dtype], run, flops=macs)


@register_op("Resize", since=10)
def Resize_10(ctx, X, scales, *, mode="nearest"):
    return _resize(ctx, X, None, scales, None, mode=mode, ctm="asymmetric",
                   nearest_mode="legacy", legacy="resize10")


@register_op("Resize", since=(11, 13, 18, 19))
def Resize(ctx, X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
           coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
           extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
           nearest_mode="round_prefer_floor"):
    return _resize(ctx, X, roi, scales, sizes, mode=mode, ctm=coordinate_transformation_mode,
                   nearest_mode=nearest_mode, cubic_a=cubic_coeff_a,
                   exclude_outside=exclude_outside, extrapolation=extrapolation_value,
                   policy=keep_aspect_ratio_policy, axes=axes, antialias=antialias)


@register_op("Upsample", since=7)
def Upsample_7(ctx, X, *, mode="nearest", scales=None):
    ctx.check(scales is not None, "the scales attribute is required")
    sc = np.asarray(scales, np.float32).reshape(-1)
    return _resize(ctx, X, None, TensorInfo(sc.shape, sc.dtype, sc), None, mode=mode,
                   ctm="asymmetric", nearest_mode="legacy", legacy="upsample")


@register_op("Upsample", since=9)
def Upsample(ctx, X, scales, *, mode="nearest"):
    return _resize(ctx, X, None, scales, None, mode=mode, ctm="asymmetric",
                   nearest_mode="legacy", legacy="upsample")
