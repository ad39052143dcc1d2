"""Fused ops in domain ``convrt``, emitted by ``passes/``; each also has an ONNX definition.

Natively each op is one kernel: the conv variants run the packed direct convolution with bias,
residual add and activation applied in its epilogue (``bind_conv``); ``FusedGemmRelu`` is the
packed GEMM with its ReLU epilogue (``bind_gemm``); ``ChannelAffine`` is a folded standalone
BatchNormalization (``y = x * scale[c] + shift[c]``).

For export, :func:`function_def` describes each op as a model-local function (``ir.Function``,
plain data) whose body is the standard ops it replaces (e.g. Conv + Relu); ``convrt/onnx_io``
writes it as an ``onnx.FunctionProto``, so onnxruntime, ``onnx.checker`` and Netron load the
optimized model, and keeps convrt-domain functions un-inlined when reading, so convrt runs its
own output with the fused kernels.  Variants (one op type each, since an ONNX function has
one body):

=====================  =======================  =============================================
op                     inputs                   body
=====================  =======================  =============================================
FusedConvRelu          X, W, B                  Conv -> Relu
FusedConvLeakyRelu     X, W, B                  Conv -> LeakyRelu(alpha)
FusedConvClip          X, W, B, min, max        Conv -> Clip(min, max)   (ReLU6: 0, 6)
FusedConvSigmoid       X, W, B                  Conv -> Sigmoid
FusedConvTanh          X, W, B                  Conv -> Tanh
FusedConvSilu          X, W, B                  Conv -> Sigmoid -> Mul(conv, sigmoid)   (SiLU)
FusedConvHardSigmoid   X, W, B                  Conv -> HardSigmoid(alpha, beta)
FusedConvHardSwish     X, W, B                  Conv -> HardSwish        (MobileNetV3)
Silu                   X                        Sigmoid -> Mul(X, sigmoid)   (no conv before it)
Gelu                   X                        Div(X, sqrt 2) -> Erf -> Add 1 -> Mul X -> Mul 0.5
                                                (registered in ops/gelu.py; opset >= 15 bodies
                                                cast the constants to X's type with CastLike)
GeluTanh               X                        0.5 X (1 + Tanh(sqrt(2/pi) (X + 0.044715 X^3)))
                                                as Mul/Add/Tanh, PyTorch's tanh GELU export
FusedConvAddRelu       X, W, B, Z               Conv -> Add(Z) -> Relu   (ResNet block tail)
FusedConvAdd           X, W, B, Z               Conv -> Add(Z)           (MobileNetV2 residual)
FusedConvReluMaxPool   X, W, B                  Conv -> Relu -> MaxPool(pool_kernel_shape,
                                                pool_strides, pool_pads); absent: 2x2/2, no
                                                pads (VGG); ResNet's stem: 3x3/2, pads 1
FusedGemmRelu          A, B, C                  Gemm -> Relu
ChannelAffine          X, scale, shift          Mul -> Add   (scale/shift shaped [C,1,..])
ChannelLayerNorm       X, Scale, B              Transpose(0,2,3,1) -> LayerNormalization(axis -1,
                                                epsilon) -> Transpose(0,3,1,2)   (4-D X; the op
                                                is in ops/normalization.py)
=====================  =======================  =============================================
"""

from __future__ import annotations

import math

from ..activations import ONNX_OPS, hard_params
from ._shape import FLOAT_TYPES
from .activation import clip_bounds
from .conv import bind_conv, conv_geometry
from .params import as_channel_param  # noqa: F401  (re-exported for older imports)
from .linear import bind_gemm
from .registry import CONVRT_DOMAIN, register_op
from ..ir import Function, FunctionNode
from ..onnx_io.functions import function_to_proto
from ..kernels.elementwise import channel_affine, silu

# attribute name -> ONNX attribute type name (a body node takes them from the calling node)
CONV_ATTRS = {"auto_pad": "STRING", "dilations": "INTS", "group": "INT", "kernel_shape": "INTS",
              "pads": "INTS", "strides": "INTS"}
GEMM_ATTRS = {"alpha": "FLOAT", "beta": "FLOAT", "transA": "INT", "transB": "INT"}

# op type -> (activation applied after the conv (+ residual), extra inputs after X, W, B)
CONV_VARIANTS = {
    "FusedConvRelu": ("relu", ()),
    "FusedConvLeakyRelu": ("leaky_relu", ()),
    "FusedConvClip": ("clip", ("min", "max")),
    "FusedConvSigmoid": ("sigmoid", ()),
    "FusedConvTanh": ("tanh", ()),
    "FusedConvSilu": ("silu", ()),
    "FusedConvHardSigmoid": ("hard_sigmoid", ()),
    "FusedConvHardSwish": ("hard_swish", ()),
    "FusedConvAddRelu": ("relu", ("Z",)),
    "FusedConvAdd": ("none", ("Z",)),
}
# activation op (ONNX) -> fused conv op type (the table: convrt/activations.py)
CONV_ACTIVATIONS = {op: "FusedConv" + op for op in ONNX_OPS}
# fused conv op -> the conv op it pools (floor mode, no dilation; the window's attributes)
POOLED = {"FusedConvReluMaxPool": "FusedConvRelu"}
# the fused op's attribute -> (MaxPool's attribute, type, value where the node has none)
POOL_ATTRS = {"pool_kernel_shape": ("kernel_shape", "INTS", [2, 2]),
              "pool_strides": ("strides", "INTS", [2, 2]),
              "pool_pads": ("pads", "INTS", [0, 0, 0, 0])}
FUSED_OPS = tuple(CONV_VARIANTS) + tuple(POOLED) + ("FusedGemmRelu", "ChannelAffine", "Silu",
                                                     "Gelu", "GeluTanh", "ChannelLayerNorm")
# activations only the 2-D kernels' epilogues apply (ops/conv3d.py has its own table)
EPILOGUE_2D_ONLY = ("silu", "hard_sigmoid", "hard_swish")


def _pool_window(ctx, kernel, strides, pads) -> tuple:
    """The fused pool's window as ``conv_pool.POOL_2X2`` orders it, checked."""
    defaults = (default for _, _, default in POOL_ATTRS.values())  # 2x2/2, no pads
    k, s, p = ([int(v) for v in (default if given is None else given)]
               for given, default in zip((kernel, strides, pads), defaults))
    ctx.check(len(k) == 2 and len(s) == 2 and len(p) == 4,
              f"pool_kernel_shape {k}, pool_strides {s} and pool_pads {p} must have 2, 2 and "
              f"4 entries")
    ctx.check(all(v >= 1 for v in k + s), f"pool_kernel_shape {k} and pool_strides {s} must be "
              f"positive")
    ctx.check(all(0 <= v < k[i % 2] for i, v in enumerate(p)),
              f"pool_pads {p} must be non-negative and smaller than pool_kernel_shape {k}")
    return (*k, *s, *p)


def _conv(ctx, X, W, B, activation, alpha=0.01, clip=(-math.inf, math.inf), Z=None,
          pool=None, **conv):
    geo = conv_geometry(ctx, X, W, B, conv["auto_pad"], conv["dilations"], conv["group"],
                        conv["kernel_shape"], conv["pads"], conv["strides"])
    if activation in EPILOGUE_2D_ONLY:
        ctx.check(W.rank == 4, f"{activation} is fused into 2-D convolutions only, W has rank "
                  f"{W.rank}")
    if pool:
        out = geo[5][2:]
        ctx.check(len(out) == 2, f"a fused max pool needs a 2-D convolution, got {len(out)}-D")
        ctx.check(all(not isinstance(v, int) or v + pool[4 + i] + pool[6 + i] >= pool[i]
                      for i, v in enumerate(out)),
                  f"conv output {list(out)} is smaller than the {pool[0]}x{pool[1]} pool window")
    if Z is not None:
        shape = geo[5]
        ctx.check(Z.dtype == X.dtype, f"Z dtype {Z.dtype} differs from X dtype {X.dtype}")
        ctx.check(Z.shape is not None and len(Z.shape) == len(shape) and all(
            a == b or not (isinstance(a, int) and isinstance(b, int))
            for a, b in zip(Z.shape, shape)),
            f"residual Z shape {Z.shape} must equal the conv output shape {shape}")
    return bind_conv(ctx, X, W, B, *geo, activation=activation, alpha=float(alpha), clip=clip,
                     residual=Z is not None, pool=pool)


@register_op("FusedConvRelu", since=1, domain=CONVRT_DOMAIN)
def FusedConvRelu(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                  kernel_shape=None, pads=None, strides=None):
    return _conv(ctx, X, W, B, "relu", auto_pad=auto_pad, dilations=dilations, group=group,
                 kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedConvLeakyRelu", since=1, domain=CONVRT_DOMAIN)
def FusedConvLeakyRelu(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                       kernel_shape=None, pads=None, strides=None, alpha=0.01):
    return _conv(ctx, X, W, B, "leaky_relu", alpha, auto_pad=auto_pad, dilations=dilations,
                 group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedConvClip", since=1, domain=CONVRT_DOMAIN)
def FusedConvClip(ctx, X, W, B=None, min=None, max=None, *, auto_pad="NOTSET", dilations=None,
                  group=1, kernel_shape=None, pads=None, strides=None):
    lo, hi = clip_bounds(ctx, X, min, max)
    clip = (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))
    return _conv(ctx, X, W, B, "clip", clip=clip, auto_pad=auto_pad, dilations=dilations,
                 group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedConvSigmoid", since=1, domain=CONVRT_DOMAIN)
def FusedConvSigmoid(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                     kernel_shape=None, pads=None, strides=None):
    return _conv(ctx, X, W, B, "sigmoid", auto_pad=auto_pad, dilations=dilations, group=group,
                 kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedConvTanh", since=1, domain=CONVRT_DOMAIN)
def FusedConvTanh(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                  kernel_shape=None, pads=None, strides=None):
    return _conv(ctx, X, W, B, "tanh", auto_pad=auto_pad, dilations=dilations, group=group,
                 kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedConvSilu", since=1, domain=CONVRT_DOMAIN)
def FusedConvSilu(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                  kernel_shape=None, pads=None, strides=None):
    return _conv(ctx, X, W, B, "silu", auto_pad=auto_pad, dilations=dilations, group=group,
                 kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedConvHardSigmoid", since=1, domain=CONVRT_DOMAIN)
def FusedConvHardSigmoid(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                         kernel_shape=None, pads=None, strides=None, alpha=0.2, beta=0.5):
    # alpha*x + beta rides in the epilogue's alpha and clip-min slots (activations.params)
    a, b = hard_params("hard_sigmoid", alpha, beta)
    return _conv(ctx, X, W, B, "hard_sigmoid", a, clip=(b, math.inf), auto_pad=auto_pad,
                 dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                 strides=strides)


@register_op("FusedConvHardSwish", since=1, domain=CONVRT_DOMAIN)
def FusedConvHardSwish(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                       kernel_shape=None, pads=None, strides=None):
    a, b = hard_params("hard_swish")
    return _conv(ctx, X, W, B, "hard_swish", a, clip=(b, math.inf), auto_pad=auto_pad,
                 dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                 strides=strides)


@register_op("Silu", since=1, domain=CONVRT_DOMAIN)
def Silu(ctx, X):
    """x * sigmoid(x) in one pass over x (the standalone Mul(x, Sigmoid(x)))."""
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    return ctx.result([X.shape], [X.dtype],
                      lambda x, out: silu(x.reshape(-1), out.reshape(-1)))


@register_op("FusedConvAddRelu", since=1, domain=CONVRT_DOMAIN)
def FusedConvAddRelu(ctx, X, W, B, Z, *, auto_pad="NOTSET", dilations=None, group=1,
                     kernel_shape=None, pads=None, strides=None):
    return _conv(ctx, X, W, B, "relu", Z=Z, auto_pad=auto_pad, dilations=dilations,
                 group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedConvAdd", since=1, domain=CONVRT_DOMAIN)
def FusedConvAdd(ctx, X, W, B, Z, *, auto_pad="NOTSET", dilations=None, group=1,
                 kernel_shape=None, pads=None, strides=None):
    return _conv(ctx, X, W, B, "none", Z=Z, auto_pad=auto_pad, dilations=dilations,
                 group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedConvReluMaxPool", since=1, domain=CONVRT_DOMAIN)
def FusedConvReluMaxPool(ctx, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1,
                         kernel_shape=None, pads=None, strides=None, pool_kernel_shape=None,
                         pool_strides=None, pool_pads=None):
    pool = _pool_window(ctx, pool_kernel_shape, pool_strides, pool_pads)
    return _conv(ctx, X, W, B, "relu", pool=pool, auto_pad=auto_pad, dilations=dilations,
                 group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)


@register_op("FusedGemmRelu", since=1, domain=CONVRT_DOMAIN)
def FusedGemmRelu(ctx, A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return bind_gemm(ctx, A, B, C, alpha, beta, transA, transB, act="relu")


@register_op("ChannelAffine", since=1, domain=CONVRT_DOMAIN)
def ChannelAffine(ctx, X, scale, shift):
    ctx.check(X.dtype in FLOAT_TYPES, f"dtype {X.dtype} is not supported")
    ctx.check(X.rank is not None and X.rank >= 2, f"input rank {X.rank} must be >= 2")
    c = X.shape[1]
    for name, t in (("scale", scale), ("shift", shift)):
        ctx.check(t.dtype == X.dtype, f"{name} dtype {t.dtype} differs from X {X.dtype}")
        ctx.check(t.shape is not None and len(t.shape) == X.rank - 1 and
                  all(d == 1 for d in t.shape[1:]) and (not isinstance(c, int) or
                                                         t.shape[0] == c),
                  f"{name} shape {t.shape} must be [C, 1, ...] for input {X.shape}")
    if not ctx.binding:
        return ctx.result([X.shape], [X.dtype])

    def run(x, a, b, out):
        n, ch = x.shape[:2]
        channel_affine(x.reshape(n, ch, -1), a.reshape(-1), b.reshape(-1),
                       out.reshape(n, ch, -1))

    return ctx.result([X.shape], [X.dtype], run)


# -- ONNX definitions (model-local functions, plain data) -----------------------------------
def _node(op, inputs, outputs, refs=None, **attrs):
    """A body node; ``refs`` maps attribute name -> type name, each referring to the caller's."""
    return FunctionNode(op, tuple(inputs), tuple(outputs), attrs,
                        {name: (name, typ) for name, typ in (refs or {}).items()})


def function_def(op_type: str, opset: int) -> Function:
    """The function defining ``op_type`` with default-domain ``opset`` ops."""
    attrs = []
    doc = f"convrt fused op {op_type} (see convrt/ops/fused.py)"
    if op_type in POOLED:
        f = function_def(POOLED[op_type], opset)
        nodes = list(f.nodes)
        last = nodes[-1]
        nodes[-1] = FunctionNode(last.op_type, last.inputs, ("unpooled",) + last.outputs[1:],
                                 last.attrs, last.attr_refs, last.domain)
        # the window comes from the calling node, which the pass gives all three attributes
        nodes.append(FunctionNode("MaxPool", ("unpooled",), ("Y",), {}, {
            onnx_name: (name, typ) for name, (onnx_name, typ, _) in POOL_ATTRS.items()}))
        return Function(CONVRT_DOMAIN, op_type, f.inputs, ("Y",), tuple(nodes),
                        {"": int(opset)}, tuple(f.attributes) + tuple(POOL_ATTRS), doc)
    if op_type in CONV_VARIANTS:
        act, extra = CONV_VARIANTS[op_type]
        inputs = ["X", "W", "B", *extra]
        nodes = [_node("Conv", ["X", "W", "B"], ["conv"], CONV_ATTRS)]
        attrs = list(CONV_ATTRS)
        y = "conv"
        if "Z" in extra:
            nodes.append(_node("Add", ["conv", "Z"], ["Y" if act == "none" else "sum"]))
            y = "sum"
        if act == "none":
            pass
        elif act == "relu":
            nodes.append(_node("Relu", [y], ["Y"]))
        elif act == "leaky_relu":
            nodes.append(_node("LeakyRelu", [y], ["Y"], {"alpha": "FLOAT"}))
            attrs.append("alpha")
        elif act == "clip":
            nodes.append(_node("Clip", [y, "min", "max"], ["Y"]))
        elif act == "silu":
            nodes += [_node("Sigmoid", [y], ["sig"]), _node("Mul", [y, "sig"], ["Y"])]
        elif act == "hard_sigmoid":
            nodes.append(_node("HardSigmoid", [y], ["Y"], {"alpha": "FLOAT", "beta": "FLOAT"}))
            attrs += ["alpha", "beta"]
        elif act == "hard_swish":
            nodes.append(_node("HardSwish", [y], ["Y"]))
        else:
            nodes.append(_node(act.capitalize(), [y], ["Y"]))
    elif op_type == "FusedGemmRelu":
        inputs = ["A", "B", "C"]
        nodes = [_node("Gemm", ["A", "B", "C"], ["gemm"], GEMM_ATTRS),
                 _node("Relu", ["gemm"], ["Y"])]
        attrs = list(GEMM_ATTRS)
    elif op_type == "Silu":
        inputs = ["X"]
        nodes = [_node("Sigmoid", ["X"], ["sig"]), _node("Mul", ["X", "sig"], ["Y"])]
    elif op_type == "Gelu":
        inputs = ["X"]
        nodes = _gelu_body(opset)
    elif op_type == "GeluTanh":
        inputs = ["X"]
        nodes = _gelu_tanh_body(opset)
    elif op_type == "ChannelAffine":
        inputs = ["X", "scale", "shift"]
        nodes = [_node("Mul", ["X", "scale"], ["scaled"]), _node("Add", ["scaled", "shift"], ["Y"])]
    elif op_type == "ChannelLayerNorm":
        inputs = ["X", "Scale", "B"]
        nodes = [_node("Transpose", ["X"], ["nhwc"], perm=[0, 2, 3, 1]),
                 _node("LayerNormalization", ["nhwc", "Scale", "B"], ["normed"],
                       {"epsilon": "FLOAT"}, axis=-1),
                 _node("Transpose", ["normed"], ["Y"], perm=[0, 3, 1, 2])]
        attrs = ["epsilon"]
    else:
        raise KeyError(op_type)
    return Function(CONVRT_DOMAIN, op_type, tuple(inputs), ("Y",), tuple(nodes), {"": int(opset)},
                    tuple(attrs), doc)


def _constants(opset: int, values) -> list:
    """Constant nodes (Constant's value_float: opset >= 12, which fuse_gelu requires), cast to
    X's type from opset 15 on (CastLike), so a body also types for float64 there (the pass fuses
    float64 only then)."""
    nodes = []
    for name, v in values:
        c = name if opset < 15 else f"{name}_f"
        nodes.append(_node("Constant", [], [c], value_float=v))
        if opset >= 15:
            nodes.append(_node("CastLike", [c, "X"], [name]))
    return nodes


def _gelu_body(opset: int) -> list:
    """PyTorch's erf GELU as the legacy exporter writes it."""
    return _constants(opset, (("sqrt2", math.sqrt(2.0)), ("one", 1.0), ("half", 0.5))) + [
        _node("Div", ["X", "sqrt2"], ["u"]), _node("Erf", ["u"], ["e"]),
        _node("Add", ["e", "one"], ["p"]), _node("Mul", ["X", "p"], ["m"]),
        _node("Mul", ["m", "half"], ["Y"])]


def _gelu_tanh_body(opset: int) -> list:
    """PyTorch's tanh GELU (``approximate="tanh"``) as the legacy exporter writes it."""
    consts = (("beta", math.sqrt(2.0 / math.pi)), ("kappa", 0.044715), ("one", 1.0),
              ("half", 0.5))
    return _constants(opset, consts) + [
        _node("Mul", ["X", "X"], ["sq"]), _node("Mul", ["X", "sq"], ["cube"]),
        _node("Mul", ["kappa", "cube"], ["kc"]), _node("Add", ["X", "kc"], ["s"]),
        _node("Mul", ["beta", "s"], ["inner"]), _node("Tanh", ["inner"], ["t"]),
        _node("Add", ["one", "t"], ["p"]), _node("Mul", ["X", "p"], ["m"]),
        _node("Mul", ["half", "m"], ["Y"])]


def function_proto(op_type: str, opset: int):
    """``function_def`` as an ``onnx.FunctionProto`` (for tests that build models by hand)."""
    return function_to_proto(function_def(op_type, opset))


def ensure_function(graph, op_type: str) -> None:
    """Make ``graph`` carry the ONNX definition of ``op_type`` and import domain convrt."""
    key = (CONVRT_DOMAIN, op_type)
    if key not in graph.functions:
        graph.functions[key] = function_def(op_type, graph.opset)
    graph.opsets[CONVRT_DOMAIN] = 1
    graph.ir_version = max(graph.ir_version, 8)  # model-local functions need IR >= 8

