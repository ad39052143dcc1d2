"""Reverse-mode autodiff over convrt's IR.

:class:`Program` runs a validated :class:`~convrt.ir.Graph` forward in training (or eval) mode,
keeping every node's inputs and outputs on a :class:`Tape`, then walks the tape in reverse
topological order calling one backward rule per node (``grads/``).  It asserts each rule's
gradient count, un-broadcasts in one place (:func:`unbroadcast`) and accumulates with ``+=``.

Forward kernels are convrt's own inference kernels, bound once per set of input shapes through
``ops.infer.infer(binding=True)`` with the changing tensors (trainable weights, BN running
statistics) presented as graph inputs, so they are never folded or packed as constants.  Ops that
behave differently in training (BatchNormalization, Dropout) or must save extra state (MaxPool's
argmax) use a training forward from the rule table instead.

Which nodes need a backward rule is decided statically: a node is on the differentiable path when
one of its float outputs depends on a tensor we differentiate with respect to (``wrt``) *and*
the loss output depends on it, both through differentiable input positions only.  Such a node
without a rule is a :class:`~convrt.errors.TrainingError` naming it, raised at construction.
"""

from __future__ import annotations

import inspect

import numpy as np

from ..errors import TrainingError
from ..ir import Graph
from ..ops.infer import infer, node_label, resolve
from ..ops.registry import TensorInfo
from ._threads import ThreadBudget
from .grads import grad_rule, train_forward

_EMPTY = inspect.Parameter.empty

class NodeCtx:
    """What a training forward and a backward rule see of one node in one run."""

    __slots__ = ("node", "attrs", "opset", "inputs", "outputs", "saved", "needs", "training",
                 "rng", "cache", "scratch", "label")

    def __init__(self, step: "_Step", inputs, training: bool, rng, keep: bool = True):
        self.node = step.node
        self.label = step.label
        self.attrs = step.attrs
        self.opset = step.opset
        self.needs = step.needs
        self.cache = step.cache  # per (node, input shapes): resolved geometry and the like
        # where big arrays are kept between runs (grads/registry.kept): a training step's
        # tape, not an inference forward (predict/evaluate at batch 512 would keep them all)
        self.scratch = step.cache if keep else None
        self.inputs = inputs
        self.outputs: tuple = ()
        self.saved: dict = {}
        self.training = training
        self.rng = rng

    def input(self, i: int):
        return self.inputs[i] if i < len(self.inputs) else None


class _Step:
    __slots__ = ("node", "label", "kernel", "alias", "out_infos", "fwd", "rule", "attrs",
                 "opset", "needs", "cache", "on_path", "out_size")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class Tape:
    """One forward pass: every value computed, and the records backward walks."""

    def __init__(self, env: dict, records: list[NodeCtx], state_updates: dict):
        self.env = env
        self.records = records
        self.state_updates = state_updates  # BN running stats name -> new value (training)


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` (of a broadcast shape) down to ``shape``: the one place autodiff un-broadcasts."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra < 0:
        raise ValueError(f"gradient of shape {g.shape} cannot reduce to {shape}")
    axes = tuple(range(extra)) + tuple(
        extra + i for i, d in enumerate(shape) if d == 1 and g.shape[extra + i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class Program:
    """A graph prepared for training: the differentiable path and bound forward plans.

    Args:
        graph: a validated graph (``convrt.load``).
        wrt: names (initializers or graph inputs) to differentiate with respect to.
        dynamic: initializer names whose values change between runs (trainable weights and BN
            running statistics); they are fed on every run instead of being folded.
    """

    def __init__(self, graph: Graph, wrt, dynamic=()):
        self.graph = graph
        self.source = graph.source
        self.wrt = list(wrt)
        self.dynamic = list(dict.fromkeys(list(dynamic) + [n for n in self.wrt
                                                           if n in graph.initializers]))
        self.opdefs = resolve(graph)
        self.loss_output = graph.outputs[0]
        self.needs: dict[int, list[bool]] = {}
        self.on_path: set[int] = set()
        self._analyze()
        self._bound: dict = {}

    # -- static analysis --------------------------------------------------------------------
    def _diff_inputs(self, node):
        rule = grad_rule(node.op_type)
        nondiff = rule.nondiff if rule is not None else frozenset()
        return [(i, v) for i, v in enumerate(node.inputs)
                if v is not None and v.name and i not in nondiff]

    def _analyze(self) -> None:
        g = self.graph
        depends = set(self.wrt)  # values that depend on wrt
        for node in g.nodes:
            if any(v.name in depends for _, v in self._diff_inputs(node)):
                for v in node.outputs:
                    if v.dtype is None or v.dtype.kind == "f":
                        depends.add(v.name)
        feeds_loss = {self.loss_output.name}  # values the loss depends on
        for node in reversed(g.nodes):
            if any(v.name in feeds_loss for v in node.outputs):
                for _, v in self._diff_inputs(node):
                    feeds_loss.add(v.name)
        if not any(n in feeds_loss for n in self.wrt):
            raise TrainingError(f"{self.source}: output '{self.loss_output.name}' does not "
                                "depend on any trainable tensor")
        path = depends & feeds_loss
        missing = []
        for node in g.nodes:
            if not any(v.name in path for v in node.outputs):
                continue
            if grad_rule(node.op_type) is None:
                missing.append(f"node '{node_label(node)}' ({node.op_type})")
                continue
            self.on_path.add(id(node))
            self.needs[id(node)] = [v is not None and v.name in depends and
                                    v.name in feeds_loss for v in node.inputs]
        if missing:
            raise TrainingError(f"{self.source}: no backward rule for " + "; ".join(missing))

    # -- binding ----------------------------------------------------------------------------
    def _attrs(self, node) -> dict:
        opdef = self.opdefs[id(node)]
        attrs = {k: v for k, v in opdef.attrs.items() if v is not _EMPTY}
        attrs.update(node.attrs)
        return attrs

    def _bind(self, infos: dict[str, TensorInfo]):
        g = self.graph
        extra = [g.values[n] for n in self.dynamic if g.values[n] not in g.inputs]
        saved_inputs = g.inputs
        g.inputs = list(saved_inputs) + extra
        try:
            env, ninfos = infer(g, infos, binding=True)
        finally:
            g.inputs = saved_inputs
        consts = {name: info.value for name, info in env.items() if info.value is not None}
        steps = []
        for ni in ninfos:
            if ni.folded:
                continue
            node = ni.node
            opset = g.opsets.get(node.domain, g.opset) if node.domain else g.opset
            on = id(node) in self.on_path
            steps.append(_Step(node=node, label=node_label(node), kernel=ni.result.kernel,
                               alias=ni.result.alias, out_infos=ni.result.outputs,
                               fwd=train_forward(node.op_type), rule=grad_rule(node.op_type),
                               attrs=self._attrs(node), opset=opset,
                               needs=self.needs.get(id(node), []), cache={}, on_path=on,
                               out_size=max([int(np.prod(o.shape)) for o in
                                             ni.result.outputs if o.shape is not None] + [0])))
        return consts, steps

    def bound(self, arrays: dict[str, np.ndarray]):
        key = tuple(sorted((n, a.shape, a.dtype.str) for n, a in arrays.items()))
        b = self._bound.get(key)
        if b is None:
            infos = {n: TensorInfo(tuple(int(d) for d in a.shape), a.dtype)
                     for n, a in arrays.items()}
            b = self._bound[key] = self._bind(infos)
        return b

    # -- running ----------------------------------------------------------------------------
    def forward(self, feeds: dict, dynamic: dict, training: bool = True, rng=None,
                keep: bool = True, eval_nodes=frozenset(), prefix=None) -> Tape:
        """Run the graph; ``feeds`` are runtime inputs, ``dynamic`` the changing initializers.

        With ``keep`` the tape records what backward needs (only nodes on the path).
        ``eval_nodes`` (node ids) run in eval mode even when ``training``: a frozen backbone's
        BatchNormalization uses its stored statistics and reports no state update.
        ``prefix`` (a ``frozen.FrozenPrefix``): its nodes are not run here; its inference plan
        supplies the values they hand on.
        """
        arrays = dict(dynamic)
        arrays.update(feeds)
        consts, steps = self.bound(arrays)
        env = dict(consts)
        env.update(arrays)
        skip = frozenset()
        if prefix:
            env.update(prefix.run(feeds))
            skip = prefix.node_ids
        records: list[NodeCtx] = []
        state_updates: dict = {}
        rng = rng if rng is not None else np.random.default_rng(0)
        with ThreadBudget() as threads:
            self._run_steps(steps, env, records, state_updates, training, rng, keep, threads,
                            eval_nodes, skip)
        return Tape(env, records, state_updates)

    def _run_steps(self, steps, env, records, state_updates, training, rng, keep, threads,
                   eval_nodes, skip):
        for st in steps:
            node = st.node
            if id(node) in skip:
                continue
            args = [None if v is None or not v.name else env[v.name] for v in node.inputs]
            while args and args[-1] is None:
                args.pop()
            threads.set_for(args, st.out_size)
            ctx = NodeCtx(st, args, training and id(node) not in eval_nodes, rng, keep)
            if st.fwd is not None:
                outs = st.fwd(ctx, *args)
            elif st.alias:
                outs = st.kernel(*args)
                outs = outs if isinstance(outs, tuple) else (outs,)
            else:  # a step's buffers kept per node and shapes (grads/registry.kept says why)
                outs = st.cache.get("outs") if keep else None
                if outs is None:
                    outs = tuple(np.empty(o.shape, o.dtype) for o in st.out_infos)
                    if keep:
                        st.cache["outs"] = outs
                st.kernel(*args, *outs)
            outs = tuple(outs[:len(node.outputs)])
            for v, a in zip(node.outputs, outs):
                if v.name:
                    env[v.name] = a
            ctx.outputs = outs
            upd = ctx.saved.get("state_updates")
            if upd:
                for i, val in upd.items():
                    state_updates[node.inputs[i].name] = val
            if keep and st.on_path:
                records.append(ctx)

    def backward(self, tape: Tape, out_grads: dict[str, np.ndarray],
                 on_final=None) -> dict[str, np.ndarray]:
        """Gradients of the ``wrt`` tensors given gradients of some values (usually the loss
        output's).  ``on_final(name, g)``, if given, is called for each ``wrt`` tensor as soon
        as no later node adds to its gradient (while ``g`` is still in the caches), and after
        the walk for those no node reached (their zeros)."""
        grads: dict[str, np.ndarray] = {}
        owned: set[str] = set()

        def accumulate(name, g):
            if name not in grads:
                grads[name] = g
            elif name in owned:
                grads[name] += g
            else:
                grads[name] = grads[name] + g
                owned.add(name)

        for name, g in out_grads.items():
            accumulate(name, g)
        final = self._final_after(tape) if on_final is not None else {}
        called: set = set()

        def finished(name, g):
            called.add(name)
            on_final(name, g)

        with ThreadBudget() as threads:
            for ctx in reversed(tape.records):
                self._step_back(ctx, grads, accumulate, threads)
                for name in final.get(id(ctx), ()):
                    if name in grads:
                        finished(name, grads[name])
        out = {}
        for n in self.wrt:
            g = grads.get(n)
            if g is None:
                a = tape.env[n]
                g = np.zeros_like(a)
            if on_final is not None and n not in called:
                finished(n, g)
            out[n] = g
        return out

    def _final_after(self, tape):
        """``{id(record): wrt names}``: the record of the walk after which each ``wrt``
        tensor's gradient takes no more terms (the last one in walk order reading it)."""
        wrt, last = set(self.wrt), {}
        for ctx in reversed(tape.records):
            for i, v in enumerate(ctx.node.inputs):
                if v is not None and v.name in wrt and ctx.needs[i]:
                    last[v.name] = id(ctx)
        final: dict = {}
        for name, rid in last.items():
            final.setdefault(rid, []).append(name)
        return final

    def _step_back(self, ctx, grads, accumulate, threads):
        """One record's backward rule, its input gradients added into ``grads``."""
        node = ctx.node
        gy = [grads.get(v.name) for v in node.outputs]
        if all(g is None for g in gy):
            return
        rule = grad_rule(node.op_type)
        threads.set_for(list(ctx.inputs) + list(ctx.outputs))
        res = rule.fn(ctx, gy)
        if len(res) != len(node.inputs):
            raise AssertionError(f"backward rule of {node.op_type} returned {len(res)} "
                                 f"gradients for {len(node.inputs)} inputs")
        for i, (v, g) in enumerate(zip(node.inputs, res)):
            if g is None or not ctx.needs[i]:
                continue
            x = ctx.inputs[i]
            g = unbroadcast(np.asarray(g), x.shape)
            if g.dtype != x.dtype:
                g = g.astype(x.dtype)
            accumulate(v.name, g)
