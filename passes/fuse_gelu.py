"""fuse_gelu: GELU written out as Div -> Erf -> Add -> Mul -> Mul (or its tanh form) -> one node.

Before::

    x -> Div(x, sqrt 2) -> u -> Erf -> e -> Add(e, 1) -> p ;
         Mul(x, p) -> m -> Mul(m, 0.5) -> y             (PyTorch nn.GELU, legacy exporter)
     or  Mul(x, 0.5) -> h ;  Mul(h, p) -> y             (x * 0.5 * (1 + erf(...)), as in
                                                         Hugging Face's gelu)

    (every Mul and Add in either operand order; Mul(x, 1/sqrt 2) in place of the Div)

    tanh form (nn.GELU(approximate="tanh"); Hugging Face's gelu_new with Pow(x, 3)):
    Mul(x, x) -> Mul(x, .) (or Pow(x, 3)) -> Mul(0.044715, .) -> Add(x, .) -> Mul(sqrt(2/pi), .)
    -> Tanh -> Add 1 -> the same two tails

After::

    x -> Gelu[approximate] -> y        opset >= 20: the standard op
    x -> convrt.Gelu | GeluTanh -> y   older models: its ONNX function (convrt/ops/fused.py)
                                       is the chain, so the exported model stays loadable

Conditions:
    * every node is in the default domain; the model's opset is >= 12 (the function body's
      Constant value_float); ``x`` is float32, or float64 at opset >= 15 (the body casts its
      float constants with CastLike, an opset-15 op);
    * the constants are scalars (one element, rank <= x's, so broadcasting changes no shape),
      constant (initializers no feed overrides), and equal sqrt 2 (1/sqrt 2 for the Mul form),
      1 and 0.5 (tanh form: sqrt(2/pi), 0.044715, 3 for Pow) to within float32 rounding
      (relative 1e-6);
    * every intermediate (``u``, ``e``, ``p``, ``m`` or ``h``; the tanh form's square, cube,
      sum and argument) is read only by the next node of the chain and is not a graph output
      (an intermediate used elsewhere must stay, so the chain does too); ``x`` may have other
      readers.

Formula:
    y = 0.5 x (1 + erf(x / sqrt 2)), or 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) =
    x sigmoid(2 sqrt(2/pi) (...)) for the tanh form; the erf kernel (``kernels/erf.py``) computes 0.5 x erfc(|x| /
    sqrt 2) for x < 0, which is more accurate than the chain's cancelling 1 + erf in float32.

ConvNeXt-tiny has 18 such GELUs on its largest tensors (4x the block width); unfused each is five
passes over memory with a scalar libm erf.
"""

from __future__ import annotations

import math

import numpy as np

from convrt.ir import Graph, Node, Value
from convrt.ops.fused import ensure_function

from ._infra import Pass, PassResult
from ._match import only_consumer, replace_chain

SQRT2 = math.sqrt(2.0)
TANH_BETA, TANH_KAPPA = math.sqrt(2.0 / math.pi), 0.044715
REL = 1e-6


def scalar_value(graph: Graph, v: Value | None, rank: int | None) -> float | None:
    """The value of a one-element constant that broadcasts without changing a rank-``rank``
    tensor's shape; None otherwise."""
    if v is None or not graph.is_constant(v) or v.const is None or v.const.size != 1:
        return None
    if rank is None or v.const.ndim > rank:
        return None
    return float(v.const.reshape(-1)[0])


def _close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= REL * abs(b)


def _other(node: Node, v: Value) -> Value | None:
    """The input of binary ``node`` that is not ``v`` (None when both or neither are)."""
    a, b = node.inputs[0], node.inputs[1]
    if a is v and b is not v:
        return b
    if b is v and a is not v:
        return a
    return None


def _binary(node: Node | None, op: str) -> bool:
    return node is not None and not node.domain and node.op_type == op and \
        len(node.inputs) == 2 and all(i is not None for i in node.inputs)


def _erf_head(graph: Graph, erf: Node) -> tuple[Value, list[Node]] | None:
    """``(x, [scale, erf])`` when ``erf`` reads Div(x, sqrt 2) or Mul(x, 1/sqrt 2)."""
    u = erf.input(0)
    scale = u.producer if u is not None else None
    if not (_binary(scale, "Div") or _binary(scale, "Mul")) or scale.outputs[0] is not u:
        return None
    if only_consumer(graph, u) is not erf:
        return None
    if scale.op_type == "Div":
        x, c = scale.inputs
        ok = _close(scalar_value(graph, c, _rank(x)), SQRT2)
    else:
        x = next((i for i in scale.inputs if not graph.is_constant(i)), None)
        c = _other(scale, x) if x is not None else None
        ok = _close(scalar_value(graph, c, _rank(x)), 1 / SQRT2)
    if not ok or x is None or graph.is_constant(x):
        return None
    return x, [scale, erf]


def _const_operand(graph: Graph, node: Node, value: float) -> Value | None:
    """The non-constant input of binary ``node`` whose other input is the scalar ``value``."""
    for i in (0, 1):
        v, c = node.inputs[i], node.inputs[1 - i]
        if v is not c and not graph.is_constant(v) and \
                _close(scalar_value(graph, c, _rank(v)), value):
            return v
    return None


def _private(graph: Graph, v: Value | None, reader: Node) -> Node | None:
    """``v``'s producer when ``reader`` is its only reader (and it is not a graph output)."""
    if v is None or v.producer is None or only_consumer(graph, v) is not reader or \
            v.producer.outputs[0] is not v:
        return None
    return v.producer


def _tanh_head(graph: Graph, tanh: Node) -> tuple[Value, list[Node]] | None:
    """``(x, nodes)`` when ``tanh`` reads sqrt(2/pi) (x + 0.044715 x^3), the cube as
    Mul(x, Mul(x, x)) (either order) or Pow(x, 3)."""
    inner = _private(graph, tanh.input(0), tanh)
    if not _binary(inner, "Mul"):
        return None
    s = _const_operand(graph, inner, TANH_BETA)
    add = _private(graph, s, inner)
    if not _binary(add, "Add"):
        return None
    for i in (0, 1):
        x, kc = add.inputs[i], add.inputs[1 - i]
        scaled = _private(graph, kc, add)
        if x is kc or not _binary(scaled, "Mul"):
            continue
        cube = _const_operand(graph, scaled, TANH_KAPPA)
        cubing = _private(graph, cube, scaled)
        if cubing is None or cubing.domain or len(cubing.inputs) != 2:
            continue
        a, b = cubing.inputs
        if cubing.op_type == "Pow" and a is x and _close(scalar_value(graph, b, _rank(x)), 3.0):
            return x, [cubing, scaled, add, inner, tanh]
        if cubing.op_type != "Mul":
            continue
        sq_v = b if a is x else a if b is x else None
        square = _private(graph, sq_v, cubing) if sq_v is not None and sq_v is not x else None
        if _binary(square, "Mul") and square.inputs[0] is x and square.inputs[1] is x:
            return x, [square, cubing, scaled, add, inner, tanh]
    return None


def match_gelu(graph: Graph, node: Node) -> tuple[Value, list[Node]] | None:
    """``(x, chain)`` when ``node`` (an Erf or a Tanh) is the core of a GELU (the chain in
    order, the last node writing y); None otherwise."""
    head = _erf_head(graph, node) if node.op_type == "Erf" else _tanh_head(graph, node)
    if head is None:
        return None
    x, chain = head
    if graph.is_constant(x):
        return None
    rank = _rank(x)
    e = node.outputs[0]
    add = only_consumer(graph, e)
    if not _binary(add, "Add") or not _close(scalar_value(graph, _other(add, e), rank), 1.0):
        return None
    p = add.outputs[0]
    mul = only_consumer(graph, p)
    if not _binary(mul, "Mul"):
        return None
    q = _other(mul, p)
    if q is x:  # Mul(x, p) -> m -> Mul(m, 0.5)
        m = mul.outputs[0]
        last = only_consumer(graph, m)
        if not _binary(last, "Mul") or not _close(scalar_value(graph, _other(last, m), rank),
                                                   0.5):
            return None
        return x, chain + [add, mul, last]
    half = q.producer if q is not None else None  # Mul(x, 0.5) -> h ; Mul(h, p)
    if not _binary(half, "Mul") or half.outputs[0] is not q or only_consumer(graph, q) is not mul \
            or _other(half, x) is None or not _close(
                scalar_value(graph, _other(half, x), rank), 0.5):
        return None
    return x, chain + [add, half, mul]


def _rank(v: Value | None) -> int | None:
    return None if v is None or v.shape is None else len(v.shape)


class FuseGeluPass(Pass):
    name = "fuse_gelu"
    level = "extended"

    def run(self, graph: Graph) -> PassResult:
        n = 0
        if graph.opset < 12:
            return self.result({})
        for core in list(graph.nodes):
            if core.domain or core.op_type not in ("Erf", "Tanh") or core not in graph.nodes:
                continue
            found = match_gelu(graph, core)
            if found is None:
                continue
            x, chain = found
            f64_ok = graph.opset >= 15  # the function body's CastLike
            if x.dtype != np.float32 and not (x.dtype == np.float64 and f64_ok):
                continue
            tanh = core.op_type == "Tanh"
            y = chain[-1].outputs[0]
            if graph.opset >= 20:
                new = Node("Gelu", [x], [y], {"approximate": "tanh"} if tanh else {},
                           name=core.name)
            else:
                new = Node("GeluTanh" if tanh else "Gelu", [x], [y], {}, name=core.name,
                           domain="convrt")
            replace_chain(graph, chain, new)
            if new.domain:
                ensure_function(graph, new.op_type)
            n += 1
        if n:
            graph.remove_unused_initializers()
        return self.result({"GELU": n} if n else {})

    def describe(self, stats):
        if not stats:
            return f"{self.name}: no change"
        return f"{self.name}: {stats['GELU']} GELU fused"
