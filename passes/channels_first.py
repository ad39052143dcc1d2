"""channels_first: a channels-last stretch between two Transposes, rewritten in NCHW.

Before::

    x (N,C,H,W) -> Transpose(0,2,3,1) -> LayerNormalization(axis -1) -> MatMul(W1 [C,K]) ->
    Add(b1 [K]) -> Gelu -> MatMul(W2 [K,C]) -> Add(b2 [C]) -> Transpose(0,3,1,2) -> y
                                                   (ConvNeXt's block: torchvision's Permute,
                                                    LayerNorm, Linear, GELU, Linear, Permute;
                                                    its LayerNorm2d is the Transpose -> LN ->
                                                    Transpose case)

After::

    x -> convrt.ChannelLayerNorm -> Conv 1x1 (W1^T, b1 [K,1,1] as an Add) -> Gelu ->
    Conv 1x1 (W2^T) -> Add(b2 [C,1,1]) -> y        (fuse_conv_bias then folds each Add into
                                                    its Conv's bias)

Conditions:
    * the first Transpose has perm (0,2,3,1) on a rank-4 float32/float64 tensor with static
      channels; the stretch ends at a Transpose with perm (0,3,1,2); every value between them
      is read only by the next node and is not a graph output (the first Transpose's input and
      the last one's output may have other readers);
    * every node between them is one of: LayerNormalization with axis -1 (or 3) and 1-D constant
      Scale/B of the channel count, only Y used; MatMul by a 2-D constant [C, K]; Add, Sub, Mul
      or Div with one input a constant that broadcasts along the last axis only ([K], [1,K],
      [1,1,1,K], or one element); a unary element-wise op (``UNARY``), which does not care about
      the layout; all in the default domain, but for convrt's Gelu/GeluTanh/Silu;
    * a constant read elsewhere is copied rather than rewritten in place.

Formula:
    T^-1 (f(T x)) = f'(x) where f' is f with the channel axis moved from 3 to 1: the
    LayerNorm's per-pixel statistics over C, MatMul as the 1x1 convolution with the weight
    transposed, a [K] constant reshaped to [K,1,1].  The values are those of the original
    (ChannelLayerNorm sums channels in the same order as the row kernel; the 1x1 convolution
    sums the same products, in its own order).

Why: ConvNeXt-tiny spent 46 Transposes and its 36 MatMuls in channels-last (a copy in and out
of NCHW per MatMul), about two thirds of its time; as 1x1 convolutions its MLPs run on the
pointwise kernel at 300-500 GFLOP/s.
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph, Node, Value
from convrt.ops.fused import ensure_function

from ._infra import Pass, PassResult
from ._match import FLOATS, new_const, only_consumer

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
UNARY = frozenset(("Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Abs", "Neg", "Exp", "Sqrt",
                   "Softplus", "Elu", "LeakyRelu", "HardSigmoid", "HardSwish", "Identity"))
CONVRT_UNARY = frozenset(("Gelu", "GeluTanh", "Silu"))
BINARY = frozenset(("Add", "Sub", "Mul", "Div"))


def _perm(node: Node, perm: list[int]) -> bool:
    return (node.op_type == "Transpose" and not node.domain
            and list(node.attrs.get("perm") or ()) == perm)


def _last_axis_const(graph: Graph, v: Value | None, width: int) -> np.ndarray | None:
    """``v``'s data when it is a constant broadcasting along the last axis of a rank-4 tensor
    with ``width`` entries there, without changing its shape; else None."""
    if v is None or not graph.is_constant(v) or v.const is None or v.const.ndim > 4:
        return None
    a = v.const
    if a.size == 1:
        return a
    if a.shape[-1] != width or any(d != 1 for d in a.shape[:-1]):
        return None
    return a


class _Step:
    """How one node of the stretch is rewritten: ``apply(graph)`` once the whole stretch has
    matched (nothing changes before that)."""

    def __init__(self, node: Node, width: int, apply):
        self.node, self.width, self.apply = node, width, apply


def _step(graph: Graph, node: Node, v: Value, width: int) -> _Step | None:
    """The rewrite of ``node`` (reading ``v`` with ``width`` channels last), or None."""
    if any(o.uses or o in graph.outputs for o in node.outputs[1:]):
        return None
    op = node.op_type
    if node.domain == "convrt" and op in CONVRT_UNARY or not node.domain and op in UNARY:
        return _Step(node, width, lambda g: None) if node.inputs[0] is v else None
    if node.domain:
        return None
    if op == "LayerNormalization" and node.inputs[0] is v:
        axis = int(node.attrs.get("axis", -1))
        scale, bias = node.input(1), node.input(2)
        consts = [t for t in (scale, bias) if t is not None]
        if axis not in (-1, 3) or any(
                not graph.is_constant(t) or t.const.shape != (width,) for t in consts):
            return None

        def ln(g):
            b = bias if bias is not None else new_const(
                g, f"{node.name or 'ln'}.bias", np.zeros(width, scale.const.dtype))
            for i in range(len(node.inputs)):
                node.set_input(i, None)
            node.inputs = []
            for t in (v, scale, b):
                node.add_input(t)
            del node.outputs[1:]
            node.op_type, node.domain = "ChannelLayerNorm", "convrt"
            node.attrs = {"epsilon": float(node.attrs.get("epsilon", 1e-5))}
            ensure_function(g, "ChannelLayerNorm")
        return _Step(node, width, ln)
    if op == "MatMul" and node.inputs[0] is v and node.inputs[1] is not v:
        w = node.inputs[1]
        if not graph.is_constant(w) or w.const.ndim != 2 or w.const.shape[0] != width:
            return None
        k = int(w.const.shape[1])

        def matmul(g):
            wt = np.ascontiguousarray(w.const.T)[:, :, None, None]
            node.set_input(1, new_const(g, f"{w.name}.conv", wt))
            node.op_type = "Conv"
            node.attrs = {"kernel_shape": [1, 1]}
        return _Step(node, k, matmul)
    if op in BINARY and len(node.inputs) == 2 and v in node.inputs:
        i = node.inputs.index(v)
        other = node.inputs[1 - i]
        if other is v:
            return None
        a = _last_axis_const(graph, other, width)
        if a is None:
            return None

        def binary(g):
            if a.size > 1:
                node.set_input(1 - i, new_const(g, f"{other.name}.nchw",
                                                a.reshape(width, 1, 1)))
        return _Step(node, width, binary)
    return None


class ChannelsFirstPass(Pass):
    name = "channels_first"
    level = "extended"

    def run(self, graph: Graph) -> PassResult:
        done = 0
        for t1 in [n for n in graph.nodes if _perm(n, TO_NHWC)]:
            if t1 not in graph.nodes:
                continue
            if self._rewrite(graph, t1):
                done += 1
        return self.result({"channels-last stretches moved to NCHW": done})

    @staticmethod
    def _rewrite(graph: Graph, t1: Node) -> bool:
        x, v = t1.inputs[0], t1.outputs[0]
        shape = x.shape if x is not None else None
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or \
                x.dtype not in FLOATS[1:]:
            return False
        width, steps = shape[1], []
        while True:
            node = only_consumer(graph, v)
            if node is None:
                return False
            if _perm(node, TO_NCHW):
                t2 = node
                break
            step = _step(graph, node, v, width)
            if step is None:
                return False
            steps.append(step)
            width, v = step.width, node.outputs[0]
        if not steps:
            return False
        for step in steps:
            step.apply(graph)
        first = steps[0].node
        first.set_input(first.inputs.index(t1.outputs[0]), x)
        graph.remove_nodes([t1])
        n, _, h, w = shape
        for step in steps:
            out = step.node.outputs[0]
            out.shape = (n, step.width, h, w)
        y = t2.outputs[0]
        t2.set_input(0, None)
        graph.set_output(steps[-1].node, 0, y)
        graph.remove_nodes([t2], keep=[y])
        return True
