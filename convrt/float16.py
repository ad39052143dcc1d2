"""Float16 models (a PyTorch ``model.half()`` export) run in float32 behind a float16 interface.

convrt's kernels compute in float32 and float64 only.  A float16 copy of every op would have
to widen its sums to float32 anyway (float16 accumulators lose the precision users expect), so
instead :func:`lower` rewrites the IR once, at load (``compiler.load``, before shape inference,
so it applies at every optimization level including "disable": without it the graph cannot
run at all)::

    Before:  input:f16 ─► Conv(W:f16, B:f16) ─► Relu ─► logits:f16
    After:   input:f16 ─► Cast(to=FLOAT) ─► input__f32 ─► Conv(W:f32, B:f32) ─► Relu
                 ─► logits__f32 ─► Cast(to=FLOAT16) ─► logits:f16

Conditions: the graph holds a float16 tensor somewhere (an initializer, a graph input or
output, a value_info, a tensor attribute, a ``Cast``/``dtype`` attribute naming FLOAT16); other
graphs are not touched, so float32 models behave exactly as before.

Rules:
    * float16 initializers become float32 arrays under the same name, after a check that they
      are finite: a NaN or an infinity in a float16 model's weights (an overflow in the half
      conversion, a corrupt file) is a one-line ModelLoadError naming the initializer.  The
      float32 weights count against the memory budget.  An initializer that is also a graph
      input (an overridable default) or a graph output keeps its float16 data, and the nodes
      read a float32 Cast or copy of it.
    * Graph inputs keep float16 (the session validates feeds against them and
      ``get_inputs()`` reports ``tensor(float16)``); a Cast(to=FLOAT) after each feeds its
      readers.
    * A ``Cast(to=FLOAT16)`` inside the graph still rounds to float16 (as onnxruntime and
      PyTorch do when they store that tensor), and its readers get a float32 Cast of it.
    * float16 tensor attributes (``Constant``, ``ConstantOfShape`` value) become float32, and
      ``dtype`` / ``output_dtype`` attributes naming FLOAT16 (EyeLike, RandomNormal...) name
      FLOAT; ``CastLike`` follows its target, which is float32 by then.  value_info types of
      float16 become float32.  Values keep their names.
    * After inference, :func:`cast_outputs` ends each graph output that is float16 in the
      model with a Cast(to=FLOAT16) writing the output's name; the float32 value it reads is
      renamed ``<name>__f32``.  An output without a declared type is cast back when it derives
      from float16 values (its producer's first float input does, transitively).

Formula: every op computes in float32 from float16-exact inputs, so results differ from a
runtime that stores each intermediate in float16 by that rounding only (``vgg_half.onnx``: 8e-4
of max |y| from PyTorch half and from onnxruntime; the tests allow 1e-2).  Intermediates do not
overflow at float16's 65504 where PyTorch half's would; on the way out (a graph output, a
Cast to FLOAT16) values beyond that range become +-inf as in PyTorch, and numpy says
"RuntimeWarning: overflow encountered in cast".  ``convrt optimize`` writes this float32 form:
float16 inputs and outputs, float32 weights (twice the bytes), Casts at the edges: valid ONNX
that onnxruntime runs and convrt reloads unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ModelLoadError, ShapeError
from .ir import Graph, Node, Value
from .onnx_io import onnx_type

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
TO_F16 = onnx_type(F16)  # ONNX element type numbers (TensorProto.FLOAT16, FLOAT)
TO_F32 = onnx_type(F32)
DTYPE_ATTRS = ("dtype", "output_dtype")  # attributes that name an output element type


@dataclass
class Lowering:
    """What :func:`lower` did, and what :func:`cast_outputs` still has to do after inference.

    Attributes:
        derived: names of float32 values that stand for float16 ones (seeds for outputs
            whose type the model does not declare).
        outputs: ids of graph output Values the model declares float16 but that now compute
            float32 (their declared dtype is cleared until :func:`cast_outputs`).
        stats: counts by kind, for reports.
    """

    derived: set[str] = field(default_factory=set)
    outputs: set[int] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.stats[kind] = self.stats.get(kind, 0) + n


def uses_float16(graph: Graph) -> bool:
    """Whether any tensor of ``graph`` is float16 (or any node makes one)."""
    if any(v.dtype == F16 for v in graph.values.values()):
        return True  # initializers, inputs, outputs and value_info all live in graph.values
    return any(_makes_float16(n) or any(isinstance(a, np.ndarray) and a.dtype == F16
                                        for a in n.attrs.values()) for n in graph.nodes)


def _names_f16(a) -> bool:
    """Whether attribute value ``a`` is the element type FLOAT16 (an int; a malformed model may
    put anything there, which shape inference reports later)."""
    return type(a) is int and a == TO_F16


def _is_cast(node: Node) -> bool:
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx")


def _makes_float16(node: Node) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    if _is_cast(node):
        return _names_f16(node.attrs.get("to"))
    return any(_names_f16(node.attrs.get(k)) for k in DTYPE_ATTRS)


def lower(graph: Graph, budget: int | None = None) -> Lowering | None:
    """Rewrite ``graph`` (loaded, not yet inferred) to compute in float32; None if no float16.

    Raises:
        ModelLoadError: a float16 initializer holds NaN or infinity, or the float32 weights
            exceed ``budget`` bytes.
    """
    if not uses_float16(graph):
        return None
    low = Lowering()
    _check_finite(graph)
    keep: set[int] = set()  # ids of Values that stay float16
    node_names = {n.name for n in graph.nodes}

    def cast_after(v: Value, front: bool) -> None:
        """Give the node readers of float16 ``v`` a Cast(to=FLOAT) of it.  Cast nodes keep
        reading ``v``: a cast from float16 is as exact as one from its float32 copy, and a
        reload of ``convrt optimize``'s output then gains no second Cast."""
        readers = [(n, i) for n, i in v.uses if not _is_cast(n)]
        if not readers:
            return
        new = graph.value(_unique(graph.values, f"{v.name}__f32"), v.shape, F32)
        name = _unique(node_names, f"{v.name}_to_float32")
        node_names.add(name)
        cast = Node("Cast", [v], [new], {"to": TO_F32}, name)
        at = 0 if front else graph.nodes.index(v.producer) + 1
        graph.add_node(cast, at)
        for reader, i in readers:
            reader.set_input(i, new)
        low.derived.add(new.name)

    # graph inputs (overridable initializers included) stay float16: feeds are validated so
    for v in graph.inputs:
        if v.dtype == F16:
            keep.add(id(v))
            cast_after(v, front=True)
            low.count("inputs")
    outputs = {id(v) for v in graph.outputs}
    for name, v in list(graph.initializers.items()):
        if v.dtype != F16 or id(v) in keep:
            continue
        low.count("initializers")
        if id(v) in outputs:  # keep the float16 output; readers get a float32 copy
            keep.add(id(v))
            if v.uses:
                copy = graph.add_initializer(_unique(graph.values, f"{name}__f32"),
                                             v.const.astype(F32))
                for reader, i in list(v.uses):
                    reader.set_input(i, copy)
                low.derived.add(copy.name)
            continue
        v.const = v.const.astype(F32)
        v.dtype = F32
        low.derived.add(name)
    for node in list(graph.nodes):
        if node.domain not in ("", "ai.onnx"):
            continue
        if _is_cast(node) and _names_f16(node.attrs.get("to")) and node.outputs:
            out = node.outputs[0]
            keep.add(id(out))
            out.dtype = F16
            cast_after(out, front=False)
            low.count("casts")
            continue
        changed = False
        for k, a in node.attrs.items():
            if isinstance(a, np.ndarray) and a.dtype == F16:
                node.attrs[k] = a.astype(F32)
                changed = True
            elif k in DTYPE_ATTRS and _names_f16(a):
                node.attrs[k] = TO_F32
                changed = True
        if changed:
            low.count("attributes")
            low.derived.update(o.name for o in node.outputs)
    for v in graph.outputs:
        if v.dtype == F16 and id(v) not in keep and v.producer is not None:
            low.outputs.add(id(v))
            v.dtype = None  # computed in float32; cast_outputs casts it back
    for v in graph.values.values():  # value_info annotations
        if v.dtype == F16 and id(v) not in keep:
            v.dtype = F32
    if budget is not None:
        total = sum(v.const.nbytes for v in graph.initializers.values()) + sum(
            a.nbytes for n in graph.nodes for a in n.attrs.values() if isinstance(a, np.ndarray))
        if total > budget:
            raise ModelLoadError(f"{graph.source}: the float16 weights take {total} bytes as "
                                 f"float32, over the memory budget of {budget}")
    return low


def cast_outputs(graph: Graph, low: Lowering) -> None:
    """After inference: end each float16 graph output with a Cast(to=FLOAT16) (see module doc).

    The Cast is placed right after the producer, so ``graph.nodes`` stays topologically sorted
    and the shapes and dtypes recorded by inference stay complete.
    """
    derived = None
    done: set[int] = set()
    for v in graph.outputs:
        if id(v) in done:
            continue
        done.add(id(v))
        if id(v) in low.outputs:
            if v.dtype != F32:
                raise ShapeError(f"{graph.source}: value '{v.name}' is declared float16 but "
                                 f"computes to {v.dtype}")
        elif v.dtype == F32 and v.producer is not None:
            if derived is None:
                derived = _derived(graph, low.derived)
            if v.name not in derived:
                continue
        else:
            continue
        _cast_back(graph, v)
        low.count("outputs")


def _cast_back(graph: Graph, v: Value) -> None:
    """Rename ``v`` to a float32 ``<name>__f32`` and write ``v`` (float16) by a Cast of it."""
    producer = v.producer
    inner = graph.value(_unique(graph.values, f"{v.name}__f32"), v.shape, F32)
    producer.outputs[producer.outputs.index(v)] = inner
    inner.producer = producer
    for reader, i in list(v.uses):
        reader.set_input(i, inner)
    names = {n.name for n in graph.nodes}
    cast = Node("Cast", [inner], [v], {"to": TO_F16}, _unique(names, f"{v.name}_to_float16"))
    graph.add_node(cast, graph.nodes.index(producer) + 1)
    v.dtype = F16


def _derived(graph: Graph, seeds: set[str]) -> set[str]:
    """Float32 values that stand for float16 ones: a node's float outputs follow its first
    float input (its target for CastLike); Cast decides by its ``to`` (our Casts are seeds)."""
    derived = set(seeds)
    for node in graph.nodes:  # topologically sorted by inference
        if _is_cast(node):
            continue
        ins = node.inputs[1:2] if node.op_type == "CastLike" else node.inputs
        first = next((v for v in ins if v is not None and v.dtype is not None
                      and v.dtype.kind == "f"), None)
        if first is not None and first.name in derived:
            derived.update(o.name for o in node.outputs if o.dtype == F32)
    return derived


def _check_finite(graph: Graph) -> None:
    """A NaN or infinite float16 weight is a load error: an overflow in the half conversion or
    a corrupt file, never a value a trained network holds, and it would spread through every
    output silently."""
    for name, v in graph.initializers.items():
        a = v.const
        if a is None or a.dtype != F16:
            continue
        finite = np.isfinite(a)
        if not finite.all():
            nan = int(np.isnan(a).sum())
            inf = int(a.size - finite.sum()) - nan
            what = " and ".join(f"{n} {k}" for n, k in ((nan, "NaN"), (inf, "infinite")) if n)
            raise ModelLoadError(f"{graph.source}: float16 initializer '{name}' holds {what} "
                                 f"value(s) of {a.size}; the weights must be finite")


def _unique(taken, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever is not in ``taken`` (names or a dict)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name
