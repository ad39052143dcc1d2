"""Compile a Graph for concrete input shapes into a flat list of steps over buffer slots.

Planning does every decision once: shape inference with concrete dims, constant folding, kernel
binding (weights packed), and a memory plan that gives every intermediate value a slot in a few
shared byte buffers, reused as soon as the value's last reader has run (liveness).  Ops that only
relabel data (Reshape, Flatten, Identity...) produce views and extend their source's lifetime.
Where one convolution's output is read by the next convolution alone, the two agree on the
reader's zero-bordered input layout (``_pad_handoffs``): the writer stores into the border's
interior and the reader skips its input copy.

``Plan.run`` then walks ``self.steps`` and nothing else: no graph walk, no op-name branches.
An :class:`Arena` holds one set of buffers; concurrent runs each take their own arena, so one
plan serves many threads.
"""

from __future__ import annotations

import math
import operator
import threading
import time
from dataclasses import dataclass

import numba
import numpy as np

from ..errors import ConvrtError, InputError, ShapeError
from ..ir import Graph
from ..ops.infer import NodeInfo, infer, one_line
from ..ops.registry import TensorInfo

ALIGN = 64
# Steps with less work than this run on the calling thread alone: waking the pool for a few
# microseconds of work costs more than it saves, and far more when another process holds the
# other cores (a parallel region waits for its slowest thread's next time slice).
SERIAL_MACS = 1 << 21  # multiply-accumulates (Conv, Gemm...)
SERIAL_ELEMS = 1 << 17  # output elements, for ops that report no MACs
# ... unless the step streams this many bytes of constant inputs (weights): a batch-1 FC layer
# is a memory-bound GEMV with few MACs per byte, and two cores stream it faster than one.
PARALLEL_CONST_BYTES = 1 << 20
# Convolutions hand their output to the next one in its zero-bordered layout (_pad_handoffs);
# False turns that off (the tests compare both ways).
PAD_HANDOFFS = True


@dataclass
class Step:
    """One bound node: ``run(env)`` reads and writes slots of ``env``."""

    label: str
    op_type: str
    run: object
    serial: bool = False  # run single-threaded (little work; see SERIAL_MACS)


def _n_inputs(node) -> int:
    n = len(node.inputs)
    while n and (node.inputs[n - 1] is None or node.inputs[n - 1].name == ""):
        n -= 1
    return n


def _make_step(kernel, ins: list[int | None], outs: list[int], n_keep: int, alias: bool,
               none_slot: int):
    """A closure over slot indices; None inputs (omitted optionals) read ``none_slot``, which
    always holds None.  The slots are fetched by one ``operator.itemgetter`` (C speed: no
    per-call list comprehension)."""
    if alias:
        get = _getter([none_slot if i is None else i for i in ins])

        def run(env, get=get):  # a default, not a closure cell: introspection sees kernels only
            res = kernel(*get(env))
            res = res if isinstance(res, tuple) else (res,)
            for o, a in zip(outs[:n_keep], res):
                env[o] = a
    else:
        get = _getter([none_slot if i is None else i for i in ins] + list(outs))

        def run(env, get=get):
            kernel(*get(env))
    return run


def _getter(slots: list[int]):
    """``env -> tuple of env[s] for s in slots`` (itemgetter returns a bare item for one slot,
    and needs at least one)."""
    if not slots:
        return lambda env: ()
    if len(slots) == 1:
        s = slots[0]
        return lambda env: (env[s],)
    return operator.itemgetter(*slots)


def _raw_thread_setter():
    """numba's own per-thread setter, without ``numba.set_num_threads``' checks (which cost
    ~2 us per call; the plan only asks for counts it validated).  Falls back to the public
    function if numba's internals differ."""
    try:
        from numba.np.ufunc import parallel as par
        par._launch_threads()
        raw = par._set_num_threads
        if callable(raw):
            return raw
    except Exception:  # pragma: no cover - depends on numba's internals
        pass
    return numba.set_num_threads


class Plan:
    """An executable form of ``graph`` for one set of input shapes."""

    def __init__(self, graph: Graph, feeds: dict[str, TensorInfo], budget: int | None = None,
                 threads: int = 1):
        self.source = graph.source
        env, infos = infer(graph, feeds, binding=True)
        slot: dict[str, int] = {}
        self.template: list = []  # per slot: constant array, or None (filled per run/arena)

        def slot_of(name: str) -> int:
            if name not in slot:
                slot[name] = len(self.template)
                info = env.get(name)
                self.template.append(None if info is None else info.value)
            return slot[name]

        self.feed_slots = {name: slot_of(name) for name in feeds}
        self._none_slot = len(self.template)  # always None: omitted optional inputs
        self.template.append(None)
        self.steps: list[Step] = []
        self._links: list = []  # per step: (input slots, kernel reading X, kernel writing Y)
        self.scratch_bytes = 0  # per-run kernel scratch (Conv's padded input copy...)
        defs: list[tuple[int, TensorInfo]] = []  # (slot, info) of buffers per step, in order
        step_defs: list[list[int]] = []
        alias_of: dict[int, int] = {}  # view slot -> slot it views (root)
        last_use: dict[int, int] = {}
        for ni in infos:
            if ni.folded:
                continue
            self._bind(ni, slot_of, env, defs, step_defs, alias_of, last_use)
        self.output_slots = [slot_of(v.name) for v in graph.outputs]
        self.output_infos = [env[v.name] for v in graph.outputs]
        end = len(self.steps)
        for s in self.output_slots:
            last_use[alias_of.get(s, s)] = end
        self.padded = self._pad_handoffs(step_defs, alias_of) if PAD_HANDOFFS else {}
        self._plan_memory(step_defs, defs, last_use, alias_of, budget)
        self._schedule(threads)
        self._lock = threading.Lock()
        self._free: list[list] = []

    # -- building -----------------------------------------------------------------------------
    def _bind(self, ni: NodeInfo, slot_of, env, defs, step_defs, alias_of, last_use):
        node, res = ni.node, ni.result
        i = len(self.steps)
        ins = [None if v is None or v.name == "" else slot_of(v.name)
               for v in node.inputs[:_n_inputs(node)]]
        for s in ins:
            if s is not None:
                root = alias_of.get(s, s)
                last_use[root] = i
        outs, mine = [], []
        for k, info in enumerate(res.outputs):
            name = node.outputs[k].name if k < len(node.outputs) else f"{node.name}:{k}"
            s = slot_of(name)
            self.template[s] = None
            outs.append(s)
            if res.alias:
                src = ins[0]
                alias_of[s] = alias_of.get(src, src) if src is not None else s
            else:
                mine.append(s)
                defs.append((s, info))
                last_use.setdefault(s, i)
        step_defs.append(mine)
        self._links.append((ins, res.extra.get("reads_x"), res.extra.get("writes_y")))
        self.scratch_bytes += int(res.extra.get("scratch", 0))
        label = node.name or node.outputs[0].name
        macs = int(res.flops or 0)
        elems = sum(math.prod(o.shape) for o in res.outputs)
        const_bytes = sum(getattr(env[v.name].value, "nbytes", 0)
                          for v in node.inputs[:_n_inputs(node)]
                          if v is not None and v.name and env.get(v.name) is not None)
        serial = res.alias or (const_bytes < PARALLEL_CONST_BYTES and (
            macs < SERIAL_MACS if macs else elems < SERIAL_ELEMS))
        self.steps.append(Step(label, node.op_type,
                               _make_step(res.kernel, ins, outs, len(node.outputs), res.alias,
                                          self._none_slot),
                               serial))

    def _pad_handoffs(self, step_defs, alias_of) -> dict[int, int]:
        """Let a convolution write its output straight into the zero-bordered layout its only
        reader, another convolution, would copy it into (``kernels/conv.py``, ``_pad_copy``).
        Returns {slot: elements} of the values so laid out; the writer stores the border's
        zeros too, so their buffers are shared by liveness like any other."""
        readers: dict[int, list[tuple[int, int]]] = {}
        for i, (ins, _, _) in enumerate(self._links):
            for k, s in enumerate(ins):
                if s is not None:
                    readers.setdefault(s, []).append((i, k))
        viewed = set(alias_of.values())
        padded = {}
        for i, (_, _, producer) in enumerate(self._links):
            if producer is None or len(step_defs[i]) != 1:
                continue
            s = step_defs[i][0]
            if s in viewed or s in self.output_slots or len(readers.get(s, ())) != 1:
                continue
            j, k = readers[s][0]
            consumer = self._links[j][1]
            want = None if consumer is None or k != 0 else consumer.padded_input()
            if want is None or not producer.can_write_padded():
                continue
            producer.write_padded(want[1])
            consumer.read_padded()
            padded[s] = want[0]
        return padded

    def _schedule(self, threads: int) -> None:
        """The run list: each step's ``run``, with thread-count switches baked in where serial
        steps begin and end (so the run loop has no per-step decisions)."""
        self.calls: list = []
        self.labels: list = []  # (label, op_type) per call; None for a thread switch
        current = threads
        setter = _raw_thread_setter()
        switch = {n: (lambda env, n=n: setter(n)) for n in {1, threads}}
        for step in self.steps:
            want = 1 if step.serial else threads
            if want != current:
                self.calls.append(switch[want])
                self.labels.append(None)
                current = want
            self.calls.append(step.run)
            self.labels.append((step.label, step.op_type))
        if current != threads:
            self.calls.append(switch[threads])
            self.labels.append(None)

    def _plan_memory(self, step_defs, defs, last_use, alias_of, budget):
        """Greedy best-fit assignment of value slots to shared buffers by liveness."""
        info_of = dict(defs)
        by_end: dict[int, list[int]] = {}
        for s, _ in defs:
            by_end.setdefault(last_use.get(s, 0), []).append(s)
        sizes: list[int] = []  # capacity of each buffer
        free: list[int] = []
        self.assign: dict[int, tuple[int, TensorInfo]] = {}
        for i, mine in enumerate(step_defs):
            for s in mine:
                info = info_of[s]
                elems = self.padded.get(s, math.prod(info.shape))  # bordered: the reader's
                need = max(elems * info.dtype.itemsize, 1)  # no int64 wrap
                fits = [b for b in free if sizes[b] >= need]
                if fits:
                    b = min(fits, key=lambda b: sizes[b])
                elif free:
                    b = max(free, key=lambda b: sizes[b])
                    sizes[b] = need
                else:
                    b = len(sizes)
                    sizes.append(need)
                    free.append(b)
                free.remove(b)
                self.assign[s] = (b, info)
            for s in by_end.get(i, ()):
                if s in self.assign:
                    free.append(self.assign[s][0])
        self.buffer_sizes = sizes
        self.nbytes = sum(sizes)
        need = self.nbytes + self.scratch_bytes
        if budget is not None and need > budget:
            raise InputError(f"{self.source}: these input shapes need {need} bytes of "
                             f"activations, over the memory budget of {budget}")

    # -- running ------------------------------------------------------------------------------
    def _new_arena(self) -> list:
        bufs = []
        for size in self.buffer_sizes:
            try:
                raw = np.empty(size + ALIGN, np.uint8)
            except MemoryError:
                raise InputError(f"{self.source}: cannot allocate {self.nbytes} bytes of "
                                 "activations") from None
            off = (-raw.ctypes.data) % ALIGN
            bufs.append(raw[off:off + size])
        views = list(self.template)
        for s, (b, info) in self.assign.items():
            if s in self.padded:  # flat: the kernels on both sides know the layout
                n = self.padded[s] * info.dtype.itemsize
                views[s] = bufs[b][:n].view(info.dtype)
                continue
            n = math.prod(info.shape) * info.dtype.itemsize
            views[s] = bufs[b][:n].view(info.dtype).reshape(info.shape)
        return views

    def run(self, feeds: dict[str, np.ndarray], profile: list | None = None) -> list[np.ndarray]:
        """Execute with validated ``feeds``; returns fresh copies of the graph outputs.

        With ``profile`` (a list), appends (label, op_type, seconds) per step.
        """
        with self._lock:
            views = self._free.pop() if self._free else None
        if views is None:
            views = self._new_arena()
        try:
            env = list(views)
            for name, s in self.feed_slots.items():
                env[s] = feeds[name]
            i = -1
            try:
                if profile is None:
                    for i, call in enumerate(self.calls):
                        call(env)
                else:
                    for i, call in enumerate(self.calls):
                        t0 = time.perf_counter()
                        call(env)
                        if self.labels[i] is not None:
                            profile.append((*self.labels[i], time.perf_counter() - t0))
            except ConvrtError:
                raise
            except Exception as e:  # a validation gap: never let it out as a raw exception
                lab = self.labels[i] if i >= 0 else None
                where = f"node '{lab[0]}' ({lab[1]})" if lab else "plan"
                raise ShapeError(f"{self.source}: {where} failed at run time "
                                 f"({one_line(e)})") from e
            return [np.array(env[s], copy=True) for s in self.output_slots]
        finally:
            with self._lock:
                self._free.append(views)
