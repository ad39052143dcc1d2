"""Give every trainable tensor and BatchNormalization running statistic its own initializer.

PyTorch's legacy (TorchScript) ONNX exporter de-duplicates initializers whose values are *equal*
at export time.  A freshly built network is full of such coincidences: a BatchNorm's weight and
running_var are both ones, its bias and running_mean both zeros, and zero-initialized conv biases
equal each other and those zeros.  The exporter keeps one tensor and re-creates the others as
``Identity`` outputs of it; other tools (and hand-built graphs) let several nodes read the one
initializer name instead:

    Before:  ones  --> BN.scale;  ones --> Identity --> v --> BN.input_var
             zeros --> Conv1.B;   zeros --> Conv2.B;  zeros --> Identity --> m --> BN.input_mean
    After:   ones  --> BN.scale;  v (a copy of ones) --> BN.input_var
             zeros --> Conv1.B;   zeros__Conv2 (a copy) --> Conv2.B;  m (a copy) --> BN.input_mean

Training the file as it stands is wrong: the running statistics are Identity outputs, not
initializers, so they cannot be updated; and where two trainable roles read one tensor, the
summed gradient trains them as one tensor (losses drift from PyTorch's from the second step).
PyTorch trains the original module, where each parameter and buffer is its own tensor, so
separating the aliases reproduces it.

A weight a model author tied on purpose also reaches ONNX as one initializer read twice (torch
2.13 exports a module called twice that way, while its merges of equal tensors are Identity
nodes), and the file cannot tell that from a merge.  By default we untie every alias anyway: the
exporter merges only tensors that are equal at export, which is every fresh BatchNorm and zero
bias of an untrained CNN, while deliberate ties are rare in convrt's domain; a deliberately tied
model then trains with independent copies, listed in the returned mapping.  ``keep_ties=True``
keeps a shared name shared among uses of one kind (trainable inputs with trainable inputs, BN
statistics with BN statistics): only a mix of kinds, which no tie intends (a buffer is never a
parameter, a constant never trains), is split.

Rules (float tensors only: nothing else is trained or updated):

* (a) ``Identity`` whose input is an initializer and whose output is not a graph output: its
  output becomes an initializer holding a copy, under the Identity's output name (the name the
  exporter gave the parameter, e.g. ``features.1.running_var``); the node is removed.  Chains of
  Identity nodes resolve in graph order.
* (b) an initializer read at several uses, at least one trained or updated: each use has a kind,
  ``param`` (a differentiable input position: the trainer's own test for trainable tensors),
  ``state`` (a BN running statistic) or ``const`` (anything else, say a Clip bound equal to a
  zero bias).  The first non-const use keeps the name; every other use gets its own copy named
  ``<name>__<consumer>`` (the consumer's node name, else ``<op_type><node index>``), so training
  cannot move a constant or a statistic.  With ``keep_ties`` uses of the keeper's kind stay on
  the name and each other kind shares one copy.
* an initializer left without readers by (a), and not a graph input or output, is dropped.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Value
from .grads import grad_rule

#: BatchNormalization inputs that are running statistics (state updated in training mode).
BN_STATE_INPUTS = (3, 4)


def _is_float(v) -> bool:
    return v is not None and v.const is not None and v.const.dtype.kind == "f"


def use_kind(node, i: int) -> str:
    """``"state"`` for a BN running statistic, ``"param"`` where the trainer would train an
    initializer (no backward rule, or a differentiable position), else ``"const"``."""
    if node.op_type == "BatchNormalization" and i in BN_STATE_INPUTS:
        return "state"
    rule = grad_rule(node.op_type)
    return "param" if rule is None or i not in rule.nondiff else "const"


def _consumer_label(g: Graph, node) -> str:
    return node.name or f"{node.op_type}{g.nodes.index(node)}"


def _copy(g: Graph, v: Value, node) -> Value:
    base = f"{v.name}__{_consumer_label(g, node)}"
    name = base if base not in g.values else g.fresh_name(base)
    return g.add_initializer(name, np.array(v.const, copy=True))


def _identities_to_initializers(g: Graph, created: dict) -> set:
    """Rule (a); returns the names of initializers it left without readers."""
    emptied = set()
    outputs = {id(v) for v in g.outputs}
    for node in list(g.nodes):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            continue
        src, out = node.input(0), node.outputs[0]
        if not _is_float(src) or src.name not in g.initializers or id(out) in outputs:
            continue
        g.remove_node(node)  # out keeps its readers, loses its producer
        out.const = np.array(src.const, copy=True)
        out.shape, out.dtype = tuple(out.const.shape), out.const.dtype
        g.initializers[out.name] = g.values[out.name] = out
        created[out.name] = created.get(src.name, src.name)
        if not src.uses:
            emptied.add(src.name)
    return emptied


def _split_shared(g: Graph, created: dict, keep_ties: bool) -> None:
    """Rule (b)."""
    for name, v in list(g.initializers.items()):
        if not _is_float(v) or len(v.uses) < 2:
            continue
        uses = list(v.uses)
        kinds = [use_kind(*u) for u in uses]
        keeper = next((k for k in kinds if k != "const"), None)
        if keeper is None:
            continue
        first = kinds.index(keeper)
        group_copies = {}
        for j, ((node, i), kind) in enumerate(zip(uses, kinds)):
            if j == first or (keep_ties and kind == keeper):
                continue
            copy = group_copies.get(kind) if keep_ties else None
            if copy is None:
                copy = group_copies[kind] = _copy(g, v, node)
                created[copy.name] = created.get(name, name)
            node.set_input(i, copy)


def untie_initializers(g: Graph, keep_ties: bool = False) -> dict[str, str]:
    """Untie aliased float initializers of ``g`` in place (see the module docstring).

    Args:
        g: a loaded graph.
        keep_ties: keep one name shared among uses of the same kind (a deliberate tie).

    Returns:
        new initializer name -> the original initializer it copies, in creation order.
    """
    created: dict[str, str] = {}
    emptied = _identities_to_initializers(g, created)
    _split_shared(g, created, keep_ties)
    kept = {id(v) for v in g.inputs} | {id(v) for v in g.outputs}
    for name in emptied:
        v = g.initializers.get(name)
        if v is not None and not v.uses and id(v) not in kept:
            del g.initializers[name]
            g.values.pop(name, None)
    return {n: src for n, src in created.items() if n in g.initializers}
