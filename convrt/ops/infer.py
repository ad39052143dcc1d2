"""Shape/dtype inference and constant propagation over a whole graph.

One walk serves two moments:

* load time (``binding=False``): symbolic dims allowed; validates every node and records the
  inferred shapes and dtypes on the IR values;
* plan time (``binding=True``): concrete input shapes; every node gets its bound kernel.

Nodes whose inputs are all constant are evaluated on the spot (their kernel run once on the
constants), which is how ``Shape -> Gather -> Concat -> Reshape`` chains from exporters resolve.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConvrtError, ModelLoadError, ShapeError, UnsupportedOpError
from ..ir import Graph, Node, Released, Value
from .registry import (OpContext, OpDef, OpResult, TensorInfo, attr_type_ok, lookup,
                       schema_attribute_types, schema_attributes)

FOLD_LIMIT = 1 << 22  # elements: larger constant subgraphs are left to run time
FOLD_TOTAL = 1 << 28  # bytes of folded values per walk; past it, folding is left to run time


@dataclass
class NodeInfo:
    node: Node
    opdef: OpDef
    result: OpResult
    folded: bool  # all outputs computed as constants


def node_label(node: Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else node.op_type)


def resolve(graph: Graph) -> dict[int, OpDef]:
    """Find every node's OpDef; report all unsupported ops in one UnsupportedOpError."""
    found, missing = {}, []
    for node in graph.nodes:
        opset = graph.opsets.get(node.domain or "", None)
        if opset is None and node.domain in ("", "ai.onnx"):
            opset = graph.opset
        opdef = lookup(node.op_type, node.domain, opset or 0)
        if opdef is None:
            dom = f"{node.domain}." if node.domain else ""
            missing.append(f"{dom}{node.op_type} (opset {opset}, node '{node_label(node)}')")
        else:
            found[id(node)] = opdef
    if missing:
        raise UnsupportedOpError(
            f"{graph.source}: unsupported op(s): " + "; ".join(missing))
    return found


def _call(ctx: OpContext, opdef: OpDef, node: Node, infos: list[TensorInfo | None]) -> OpResult:
    n_in = len(infos)
    while n_in and infos[n_in - 1] is None:
        n_in -= 1
    if n_in < opdef.n_required:
        raise ctx.fail(f"expects at least {opdef.n_required} inputs, got {n_in}")
    if opdef.n_inputs is not None and n_in > opdef.n_inputs:
        raise ctx.fail(f"expects at most {opdef.n_inputs} inputs, got {n_in}")
    for i, info in enumerate(infos[:opdef.n_required]):
        if info is None:
            raise ctx.fail(f"required input {i} is missing")
    allowed = schema_attributes(node.op_type, node.domain, ctx.opset)
    unknown = set(node.attrs) - set(opdef.attrs if allowed is None else allowed)
    if unknown:
        raise ctx.fail(f"unexpected attribute(s) {sorted(unknown)}")
    types = schema_attribute_types(node.op_type, node.domain, ctx.opset) or {}
    mistyped = sorted(k for k, v in node.attrs.items() if k in types and
                      not attr_type_ok(v, types[k]))
    if mistyped:
        raise ctx.fail(f"attribute(s) {mistyped} have the wrong type for the ONNX schema")
    missing = [k for k, d in opdef.attrs.items()
               if d is inspect.Parameter.empty and k not in node.attrs]
    if missing:
        raise ctx.fail(f"missing required attribute(s) {missing}")
    try:
        res = opdef.fn(ctx, *infos[:n_in], **node.attrs)
    except ConvrtError:
        raise
    except Exception as e:  # anything an op function did not anticipate: one ShapeError
        raise ctx.fail(f"invalid inputs or attributes ({one_line(e)})") from None
    if len(res.outputs) < len(node.outputs):
        raise ctx.fail(f"produces {len(res.outputs)} outputs, node lists {len(node.outputs)}")
    return res


def one_line(e: BaseException) -> str:
    """``Type: message`` cut to its first line (numba's typing errors span many lines)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _evaluate(res: OpResult, infos: list[TensorInfo | None], n_out: int) -> list[np.ndarray]:
    args = [None if i is None else i.value for i in infos]
    while args and infos[len(args) - 1] is None:  # trailing omitted inputs: as Plan passes them
        args.pop()
    if res.alias:
        outs = res.kernel(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return [np.array(o) for o in outs[:n_out]]
    outs = [np.empty(o.shape, o.dtype) for o in res.outputs]
    res.kernel(*args, *outs)
    return outs[:n_out]


def infer(graph: Graph, feeds: dict[str, TensorInfo] | None = None,
          binding: bool = False, release=None) -> tuple[dict[str, TensorInfo], list[NodeInfo]]:
    """Walk ``graph.nodes`` (already topologically sorted) inferring every value.

    Args:
        feeds: info per runtime input (and per overridden initializer); defaults to the
            declared graph inputs.
        binding: plan mode: concrete shapes required, kernels bound.
        release: plan mode: ``release(names)`` frees constants a kernel just packed and no
            other node reads (the session's ``ReleasedWeights.release``), so that a model's
            original and packed weights are not all resident at once while a plan is built;
            the env then holds a stand-in (``Released``) for each.

    Returns:
        (info per value name, NodeInfo per node in order).
    """
    opdefs = resolve(graph)
    env: dict[str, TensorInfo] = {}
    for name, v in graph.initializers.items():
        # an overridable initializer (also a graph input) not fed to this plan is its default:
        # a constant for the plan
        const = graph.is_constant(v) or (feeds is not None and name not in feeds)
        # a released weight (convrt/weights.py) is a stand-in: its data stays where it is
        value = (Released(v) if v.released else v.const) if const else None
        env[name] = TensorInfo(tuple(v.shape), v.dtype, value, v if const else None)
    for v in graph.inputs:
        if feeds is not None and v.name in feeds:
            env[v.name] = feeds[v.name]
        elif not v.has_const:
            env[v.name] = TensorInfo(v.shape, v.dtype)
    out: list[NodeInfo] = []
    folded_bytes = 0
    sole = _sole_readers(graph, env) if release is not None else {}
    for node in graph.nodes:
        label = node_label(node)
        infos: list[TensorInfo | None] = []
        for v in node.inputs:
            if v is None or v.name == "":
                infos.append(None)
            elif v.name not in env:
                raise ModelLoadError(f"{graph.source}: node '{label}' ({node.op_type}) reads "
                                     f"undefined value '{v.name}'")  # a malformed graph
            else:
                infos.append(env[v.name])
        present = [i for i in infos if i is not None]
        foldable = all(i.value is not None for i in present) and all(
            i.static and math.prod(i.shape) <= FOLD_LIMIT for i in present)
        opdef = opdefs[id(node)]
        opset = graph.opsets.get(node.domain, graph.opset) if node.domain else graph.opset
        ctx = OpContext(label, node.op_type, opset, binding or foldable, graph.source)
        ctx.n_outputs = len(node.outputs)
        res = _call(ctx, opdef, node, infos)
        folded = all(o.value is not None for o in res.outputs)  # e.g. Shape of static dims
        if folded:
            pass
        elif foldable and res.kernel is not None and all(
                o.static and math.prod(o.shape) <= FOLD_LIMIT for o in res.outputs) and \
                folded_bytes <= FOLD_TOTAL:
            try:
                values = _evaluate(res, infos, len(node.outputs))
            except ConvrtError:
                raise
            except Exception as e:
                raise ctx.fail(f"failed at run time while folding constants ({one_line(e)})") \
                    from None
            folded_bytes += sum(a.nbytes for a in values)
            res.outputs[:len(values)] = [TensorInfo(tuple(a.shape), a.dtype, a) for a in values]
            folded = True
        elif foldable and not binding:
            res.kernel = None  # bound only to fold; dropped outputs too big to keep
        for v, o in zip(node.outputs, res.outputs):
            if v.name:
                env[v.name] = o
        out.append(NodeInfo(node, opdef, res, folded))
        if sole and not folded:
            _release_packed(graph, node, res, env, sole, release)
    return env, out


def _sole_readers(graph: Graph, env: dict[str, TensorInfo]) -> dict[str, int]:
    """{constant name: id of the one node reading it}, for the resident constants read by a
    single node (once) and not graph outputs: those a packing kernel may release at once."""
    reads: dict[str, list[int]] = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None and v.name in graph.initializers:
                reads.setdefault(v.name, []).append(id(node))
    outputs = {v.name for v in graph.outputs}
    return {n: r[0] for n, r in reads.items() if len(r) == 1 and n not in outputs
            and isinstance(env[n].value, np.ndarray)}


def _release_packed(graph, node, res: OpResult, env, sole, release) -> None:
    """Release the constants ``node``'s kernel packed (``extra["packed"]``: input indices)
    that only it reads; their env entries become stand-ins (no reference to the data)."""
    names = [node.inputs[k].name for k in res.extra.get("packed", ())
             if k < len(node.inputs) and node.inputs[k] is not None
             and sole.get(node.inputs[k].name) == id(node)]
    if not names:
        return
    release(names)
    for name in names:
        v = graph.initializers[name]
        if v.released:
            info = env[name]
            env[name] = TensorInfo(info.shape, info.dtype, Released(v), info.key)


def record(graph: Graph, env: dict[str, TensorInfo]) -> None:
    """Write inferred shapes/dtypes onto the IR, checking declared ones agree."""
    for name, info in env.items():
        v: Value | None = graph.values.get(name)
        if v is None or graph.is_constant(v):
            continue
        if v.shape is not None and info.shape is not None:
            if len(v.shape) != len(info.shape):
                raise ShapeError(f"{graph.source}: value '{name}' is declared with rank "
                                 f"{len(v.shape)} but computes to rank {len(info.shape)}")
            for d0, d1 in zip(v.shape, info.shape):
                if isinstance(d0, int) and isinstance(d1, int) and d0 != d1:
                    raise ShapeError(f"{graph.source}: value '{name}' is declared with shape "
                                     f"{list(v.shape)} but computes to {list(info.shape)}")
        if v.dtype is not None and info.dtype is not None and v.dtype != info.dtype:
            raise ShapeError(f"{graph.source}: value '{name}' is declared {v.dtype} but "
                             f"computes to {info.dtype}")
        if info.shape is not None:
            if v.shape is None:
                v.shape = info.shape
            else:  # keep declared symbolic names where inference lost them
                v.shape = tuple(d1 if isinstance(d1, int) or d0 is None else d0
                                for d0, d1 in zip(v.shape, info.shape))
        v.dtype = info.dtype or v.dtype
