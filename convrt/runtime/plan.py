"""Compile a Graph for concrete input shapes into a flat list of steps over buffer slots.

Planning does every decision once: shape inference with concrete dims, constant folding, kernel
binding (weights packed), and a memory plan that gives every intermediate value a slot in a few
shared byte buffers, reused as soon as the value's last reader has run (liveness).  Ops that only
relabel data (Reshape, Flatten, Identity...) produce views and extend their source's lifetime.
Where one convolution's output is read by the next convolution alone, the two agree on the
reader's zero-bordered input layout (``_pad_handoffs``): the writer stores into the border's
interior and the reader skips its input copy.

``Plan.run`` then walks ``self.steps`` and nothing else: no graph walk, no op-name branches.
An :class:`Arena` is one aligned block that holds a run's buffers at the plan's offsets; a
session's plans share one :class:`ArenaPool` (arenas grown to the largest plan in use and reused by
smaller ones), and concurrent runs each take their own arena, so one plan serves many threads.
"""

from __future__ import annotations

import itertools
import math
import operator
import threading
import time
from dataclasses import dataclass

import numba
import numpy as np

from ..errors import ConvrtError, InputError, ShapeError
from ..ir import Graph
from ..kernels._alloc import mapped_empty
from ..kernels.conv._schedule import serial as small_work
from ..ops.infer import NodeInfo, infer, one_line
from ..ops.registry import (PackCache, TensorInfo, binding_first_tier, binding_precision,
                            packing_into)

ALIGN = 64
# Steps with less work than this run on the calling thread alone: waking the pool for a few
# microseconds of work costs more than it saves, and far more when another process holds the
# other cores (a parallel region waits for its slowest thread's next time slice).
# (``kernels.conv._schedule.serial``: both the multiply-adds and the elements moved small,
# the outputs or the biggest input read; an op that reports no multiply-adds is judged by its
# elements)
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
    serial: bool = False  # run single-threaded (little work; see small_work)


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


class Arena:
    """One run's activation memory: an aligned block, and per plan the views into it."""

    __slots__ = ("raw", "buf", "nbytes", "views")

    def __init__(self, nbytes: int, source: str):
        try:
            raw = mapped_empty(nbytes + ALIGN, np.uint8)  # its own mapping (kernels/_alloc.py)
        except MemoryError:
            raise InputError(f"{source}: cannot allocate {nbytes} bytes of activations") \
                from None
        off = (-raw.ctypes.data) % ALIGN
        self.raw, self.buf, self.nbytes = raw, raw[off:off + nbytes], nbytes
        self.views: dict[int, list] = {}  # plan serial -> that plan's slot views

    def drop(self) -> None:
        """Free the block now: the views refer back to the arena (``_Views.arena``), a cycle
        that would otherwise wait for the garbage collector, hundreds of MB later."""
        self.views.clear()
        self.raw = self.buf = None


class ArenaPool:
    """A session's activation arenas, shared by all its plans.

    Why one pool per session and not a set of buffers per plan: a session that sees batch sizes
    1..8 would otherwise hold the buffers of every batch size at once.  Every arena is grown to
    the largest plan that ran (``high``), so any free arena serves any plan; a run takes a free
    arena big enough, else grows one (freeing the old block first), else makes one: concurrent
    runs hold one each.  ``keep=False`` (``SessionOptions.enable_cpu_mem_arena = False``) frees
    an arena when its run ends.  ``limit`` (bytes, 0 = none) is checked before allocating, with
    ``fixed()`` the bytes held besides the arenas (weights, packed weights).
    """

    def __init__(self, keep: bool = True, limit: int = 0, fixed=lambda: 0):
        self.keep, self.limit, self.fixed = keep, limit, fixed
        self._free: list[Arena] = []
        self._lock = threading.Lock()
        self._dead: set[int] = set()  # serials of dropped plans: their views are purged
        self.high = 0  # the size arenas are grown to
        self.allocated = 0  # bytes of all arenas, free and taken
        self.grown = 0  # arenas allocated (a new one, or a bigger one), for tests

    def check(self, need: int, source: str, what: str) -> None:
        """Raise the one-line error when ``need`` more bytes would pass ``limit``."""
        if self.limit and self.fixed() + need > self.limit:
            raise InputError(f"{source}: {what} need {self.fixed() + need} bytes, over the "
                             f"session's memory_limit of {self.limit}")

    def take(self, need: int, source: str) -> Arena:
        with self._lock:
            fits = [a for a in self._free if a.nbytes >= need]
            if fits:
                a = min(fits, key=lambda a: a.nbytes)
                self._free.remove(a)
                return a
            old = self._free.pop() if self._free else None
            size = max(need, self.high)
            held = self.allocated - (old.nbytes if old else 0)
            self.check(held + size, source, "weights and activations")
            self.high = size
            self.allocated = held + size
            self.grown += 1
        if old is not None:  # the smaller block goes before the bigger one is allocated
            old.drop()
        del old
        try:
            return Arena(size, source)
        except InputError:
            with self._lock:
                self.allocated -= size
            raise

    def give(self, a: Arena) -> None:
        with self._lock:
            for s in self._dead.intersection(a.views):
                del a.views[s]
            if self.keep and a.nbytes >= self.high:
                self._free.append(a)
                return
            self.allocated -= a.nbytes  # smaller than the pool grew to since, or not kept
        a.drop()

    def forget(self, serial: int) -> None:
        """A plan was dropped: its views in the arenas go (now, or when an arena comes back)."""
        with self._lock:
            self._dead.add(serial)
            for a in self._free:
                a.views.pop(serial, None)

    def clear(self) -> None:
        """Free the arenas not in use (runs in progress free theirs when they end)."""
        with self._lock:
            self.allocated -= sum(a.nbytes for a in self._free)
            gone, self._free = self._free, []
            self.high = 0
        for a in gone:
            a.drop()


class _Views(list):
    """A plan's slot views into one arena (remembers the arena, for ``Plan._free``)."""

    __slots__ = ("arena",)


class _FreeViews:
    """``Plan._free``: the views this plan has in its pool's free arenas, as a list-like (the
    tests hold arenas back or poison their buffers through it)."""

    def __init__(self, plan):
        self.plan, self.pool = plan, plan._pool

    def _views(self, arenas):
        return [self.plan._views_of(a) for a in arenas]

    def __len__(self):
        return len(self.pool._free)

    def __iter__(self):
        return iter(self._views(list(self.pool._free)))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._views(self.pool._free[i])
        return self.plan._views_of(self.pool._free[i])

    def __delitem__(self, i):
        del self.pool._free[i]

    def extend(self, views) -> None:
        self.pool._free.extend(v.arena for v in views)


_SERIALS = itertools.count()


def plan_key(infos: dict[str, TensorInfo]) -> tuple:
    """What a plan depends on: each feed's shape, and its value where the plan was built for
    one (the session's and the fetch sets' plan caches key on this)."""
    return tuple(sorted((n, i.shape, None if i.value is None else i.value.tobytes())
                        for n, i in infos.items()))


class Plan:
    """An executable form of ``graph`` for one set of input shapes.

    ``packs`` (a session's PackCache) shares packed weights with the session's other plans,
    ``pool`` (its ArenaPool) the activation memory; without them the plan has its own.
    ``precision`` "bf16" binds bf16 kernels for the float32 Conv and Gemm layers they fit
    (the session checks the CPU first and passes "fp32" where it cannot).  ``first_tier``
    binds numpy kernels where ops have them (runtime/tiers.py): nothing to compile, not fast.
    ``release(names)`` (the session's ``ReleasedWeights.release``) frees each weight as soon as
    the one kernel reading it has packed it (``ops/infer.py``), not after the whole plan.
    """

    def __init__(self, graph: Graph, feeds: dict[str, TensorInfo], budget: int | None = None,
                 threads: int = 1, packs: PackCache | None = None,
                 pool: ArenaPool | None = None, precision: str = "fp32",
                 first_tier: bool = False, release=None):
        self.source = graph.source
        self.first_tier = first_tier
        self._serial = next(_SERIALS)
        self._pool = ArenaPool() if pool is None else pool
        with packing_into(packs), binding_precision(precision), binding_first_tier(first_tier):
            env, infos = infer(graph, feeds, binding=True, release=release)
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
        # slots read as a packed kernel's weights (``OpResult.extra["packed"]``), and otherwise
        self._packed_reads: set[int] = set()
        self._plain_reads: set[int] = set()
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
        self.packed_consts = self._drop_packed(slot)
        end = len(self.steps)
        for s in self.output_slots:
            last_use[alias_of.get(s, s)] = end
        self.padded = self._pad_handoffs(step_defs, alias_of) if PAD_HANDOFFS else {}
        self._plan_memory(step_defs, defs, last_use, alias_of, budget)
        self._schedule(threads)

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
        packed = res.extra.get("packed", ())
        for k, s in enumerate(ins):
            if s is not None:
                (self._packed_reads if k in packed else self._plain_reads).add(s)
        self._links.append((ins, res.extra.get("reads_x"), res.extra.get("writes_y")))
        self.scratch_bytes += int(res.extra.get("scratch", 0))
        label = node.name or node.outputs[0].name
        macs = int(res.flops or 0)
        reads = [env[v.name] for v in node.inputs[:_n_inputs(node)]
                 if v is not None and v.name and env.get(v.name) is not None]
        const_bytes = sum(getattr(t.value, "nbytes", 0) for t in reads)
        # the elements a step moves: its outputs, or an input it reads that is bigger (a
        # global pool, a stride-2 depthwise layer); constants are weights, counted in macs
        elems = max([sum(math.prod(o.shape) for o in res.outputs)] + [
            math.prod(t.shape) for t in reads if t.value is None and t.shape is not None])
        serial = res.alias or (const_bytes < PARALLEL_CONST_BYTES
                               and small_work(macs, elems))
        self.steps.append(Step(label, node.op_type,
                               _make_step(res.kernel, ins, outs, len(node.outputs), res.alias,
                                          self._none_slot),
                               serial))

    def _drop_packed(self, slot: dict[str, int]) -> frozenset:
        """Constants that only kernels holding a packed copy read: their template slots are
        emptied (those kernels ignore the argument), so the plan keeps no reference to the
        unpacked array.  Returns their names, which the session may release (weights.py)."""
        names = []
        outputs = set(self.output_slots)
        for name, s in slot.items():
            if (s in self._packed_reads and s not in self._plain_reads and s not in outputs
                    and s not in self.feed_slots.values() and self.template[s] is not None):
                self.template[s] = None
                names.append(name)
        del self._packed_reads, self._plain_reads
        return frozenset(names)

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
        # the buffers' offsets in one arena, each aligned for the kernels' vector loads
        self.offsets, end = [], 0
        for size in sizes:
            self.offsets.append(end)
            end += -(-size // ALIGN) * ALIGN
        self.arena_bytes = end
        need = self.nbytes + self.scratch_bytes
        if budget is not None and need > budget:
            raise InputError(f"{self.source}: these input shapes need {need} bytes of "
                             f"activations, over the memory budget of {budget}")
        # the session's limit, before any arena is allocated (the pool checks again when it
        # grows, with what is held by then)
        pool = self._pool
        pool.check(max(pool.allocated, self.arena_bytes) + self.scratch_bytes, self.source,
                   "weights and these input shapes' activations")

    # -- running ------------------------------------------------------------------------------
    @property
    def _free(self) -> _FreeViews:
        return _FreeViews(self)

    @property
    def _lock(self) -> threading.Lock:  # the pool's: it guards the free arenas
        return self._pool._lock

    def _views_of(self, arena: Arena) -> list:
        """This plan's slot views into ``arena`` (made on its first run there, then kept)."""
        views = arena.views.get(self._serial)
        if views is not None:
            return views
        views = _Views(self.template)
        views.arena = arena
        for s, (b, info) in self.assign.items():
            buf = arena.buf[self.offsets[b]:self.offsets[b] + self.buffer_sizes[b]]
            if s in self.padded:  # flat: the kernels on both sides know the layout
                n = self.padded[s] * info.dtype.itemsize
                views[s] = buf[:n].view(info.dtype)
                continue
            n = math.prod(info.shape) * info.dtype.itemsize
            views[s] = buf[:n].view(info.dtype).reshape(info.shape)
        arena.views[self._serial] = views
        return views

    def release(self) -> None:
        """The session dropped this plan: its views in the pool's arenas go."""
        self._pool.forget(self._serial)

    def run(self, feeds: dict[str, np.ndarray], profile: list | None = None) -> list[np.ndarray]:
        """Execute with validated ``feeds``; returns fresh copies of the graph outputs.

        With ``profile`` (a list), appends (label, op_type, seconds) per step.
        """
        arena = self._pool.take(self.arena_bytes, self.source)
        try:
            env = list(self._views_of(arena))
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
            self._pool.give(arena)
