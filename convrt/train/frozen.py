"""The frozen part of a training graph, run as an inference plan.

Why: fine-tuning an exported CNN usually trains its head alone.  No gradient flows into the
backbone then, and with its BatchNormalization in eval mode (``Trainer(batchnorm="auto")`` for
frozen BN) the backbone computes the same function at every step.  The training forward runs the
graph as exported, one kernel per node (Conv, then BN, then Relu, each a pass over memory); the
inference pipeline folds the BN into the convolutions and fuses the activations, so the frozen
part runs at inference speed, as PyTorch runs a ``requires_grad=False`` backbone without
recording it.

Which nodes: those none of whose inputs depend on a trainable tensor or on a changing state
(the running statistics of a train-mode BN), and that behave alike in training and inference
(not Dropout, not a train-mode BN; eval-mode BN nodes join).  The values
they hand to the rest of the graph (or to its outputs) become the outputs of a copy of the graph
that the pass pipeline optimizes (everything downstream of them is dead code there) and a
runtime plan runs.  Its results equal the node-by-node forward up to the rounding of the fused
kernels (BN folded into the weights).

The eval-mode BN statistics are baked into the compiled copy; ``FrozenPrefix.current`` compares
them with the trainer's state on every use (a few kilobytes) and compiles again when a
checkpoint or the user changed them.
"""

from __future__ import annotations

import numpy as np

from ..compiler import optimize
from ..ir import Graph, copy_graph
from ..ops.registry import TensorInfo
from ..runtime.plan import Plan, plan_key
from ..runtime.threads import resolve_threads
MAX_PLANS = 4  # input shape sets kept (training alternates one batch size and a last short one)
# The ops whose ONNX definition depends on training mode (a ``training_mode`` attribute or input):
# they never join the prefix, except BN nodes the trainer runs in eval mode.  (Other ops with a
# training forward, MaxPool's, only save what their backward rule reads: frozen nodes need none.)
TRAINING_MODE_OPS = frozenset({"BatchNormalization", "Dropout"})


class FrozenPrefix:
    """Nodes of ``graph`` that no changing tensor reaches, compiled once per state of their
    constants and planned per input shapes.

    Args:
        graph: the training graph (not modified).
        changing: names of the values that change between steps (trainable initializers and
            the state of train-mode BN nodes).
        eval_bn: ids of the BatchNormalization nodes that run in eval mode.
        state: the trainer's BN state arrays by name (read, never written).
    """

    def __init__(self, graph: Graph, changing, eval_bn, state: dict):
        self.graph = graph
        self.state = state
        reached = set(changing)  # values that depend on something that changes
        runtime = {v.name for v in graph.runtime_inputs()}
        self.node_ids: set[int] = set()
        for node in graph.nodes:
            ins = [v.name for v in node.inputs if v is not None and v.name]
            special = node.op_type in TRAINING_MODE_OPS and id(node) not in eval_bn
            if special or any(n in reached for n in ins):
                reached.update(v.name for v in node.outputs if v.name)
            else:
                self.node_ids.add(id(node))
        made = {v.name for node in graph.nodes if id(node) in self.node_ids
                for v in node.outputs if v.name}
        outs = {v.name for v in graph.outputs}
        self.boundary = [n for n in dict.fromkeys(
            v.name for node in graph.nodes if id(node) not in self.node_ids
            for v in node.inputs if v is not None and v.name in made)]
        self.boundary += [n for n in made if n in outs and n not in self.boundary]
        # which BN statistics the compiled copy bakes in
        self.baked = sorted({v.name for node in graph.nodes if id(node) in self.node_ids
                             for v in node.inputs if v is not None and v.name in state})
        self.inputs = sorted({v.name for node in graph.nodes if id(node) in self.node_ids
                              for v in node.inputs if v is not None and v.name in runtime})
        self._threads = resolve_threads(0)
        self._snapshot: dict[str, np.ndarray] | None = None
        self._compiled: Graph | None = None
        self._plans: dict = {}

    def __bool__(self) -> bool:
        """Worth running: some node is frozen and hands a value on."""
        return bool(self.node_ids and self.boundary)

    def current(self) -> Graph:
        """The optimized copy for the present values of the baked statistics."""
        if self._compiled is not None and all(
                np.array_equal(self._snapshot[n], self.state[n]) for n in self.baked):
            return self._compiled
        g = copy_graph(self.graph)
        for n in self.baked:
            g.values[n].const = np.array(self.state[n], copy=True)
        g.outputs = [g.values[n] for n in self.boundary]
        optimize(g, "all")  # dead-code elimination drops every node past the boundary
        g.inputs = [v for v in g.inputs if v.name in self.inputs or v.const is not None]
        self._snapshot = {n: np.array(self.state[n], copy=True) for n in self.baked}
        self._compiled, self._plans = g, {}
        return g

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The boundary values for ``feeds`` (the runtime inputs the frozen nodes read)."""
        g = self.current()
        arrays = {n: feeds[n] for n in self.inputs}
        infos = {n: TensorInfo(tuple(int(d) for d in a.shape), a.dtype) for n, a in arrays.items()}
        key = plan_key(infos)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.pop(next(iter(self._plans))).release()
            plan = self._plans[key] = Plan(g, infos, None, self._threads)
        return dict(zip(self.boundary, plan.run(arrays)))
