"""InferenceSession and SessionOptions, shaped like onnxruntime's so users can swap one import.

This is the layer above the runtime: it uses the compiler (load, optimize) and the runtime (plan,
threads, trace, feed checks).  It lives outside ``convrt/runtime`` so that the runtime only plans
and runs a finished Graph and never sees the compiler, onnx_io or passes.

A session loads and optimizes the model once, then plans it per distinct set of input shapes
(a dynamic batch gets one plan per batch size seen, cached).  ``run`` validates the feeds
against the graph's declared inputs, picks the plan, and executes it.
"""

from __future__ import annotations

import enum
import functools
import gc
import os
import threading
from dataclasses import dataclass, field

import numba
import numpy as np

from .compiler import load, optimize
from .errors import ConvrtError, InputError, UnsupportedOpError
from .fetch import FetchCache, ValueInfo, list_values
from .kernels._jit import cache_lookups
from .ir import Graph
from .onnx_io import DEFAULT_MEMORY_BUDGET
from .ops.registry import PackCache, TensorInfo
from .runtime import tiers
from .runtime.feeds import check_feeds
from .runtime.malloc import loading as malloc_loading
from .runtime.plan import ArenaPool, Plan, plan_key
from .runtime.precision import resolve_precision
from .runtime.threads import resolve_threads
from .runtime.trace import SessionProfiler
from .weights import ReleasedWeights, reloader

MAX_PLANS = 8
PROVIDER = "ConvrtCPUExecutionProvider"  # what get_providers() names (see there)
VALUE_KEY_ELEMENTS = 64  # an integer input this small may carry a shape, axes, pads...


class GraphOptimizationLevel(enum.IntEnum):
    """onnxruntime's names; convrt maps them to pass pipelines."""

    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_ALL = 99


LEVEL_NAMES = {GraphOptimizationLevel.ORT_DISABLE_ALL: "disable",
               GraphOptimizationLevel.ORT_ENABLE_BASIC: "basic",
               GraphOptimizationLevel.ORT_ENABLE_EXTENDED: "extended",
               GraphOptimizationLevel.ORT_ENABLE_ALL: "all"}


def level_name(level) -> str:
    if isinstance(level, str):
        if level not in LEVEL_NAMES.values():
            raise InputError(f"unknown optimization level {level!r}; valid: "
                             f"{', '.join(LEVEL_NAMES.values())}")
        return level
    try:
        return LEVEL_NAMES[GraphOptimizationLevel(int(level))]
    except ValueError:
        raise InputError(f"unknown graph_optimization_level {level!r}") from None


class ExecutionMode(enum.IntEnum):
    """onnxruntime's names, accepted for SessionOptions.execution_mode (see there)."""

    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


@dataclass(slots=True)
class SessionOptions:
    """Session settings (onnxruntime's names where they exist).

    Slotted, so a misspelt attribute raises AttributeError instead of being silently ignored,
    as onnxruntime's SessionOptions (a pybind object without ``__dict__``) does.

    Attributes:
        intra_op_num_threads: threads per kernel; 0 = ``CONVRT_NUM_THREADS`` if set, else the
            CPUs this process may use (see convrt/runtime/threads.py).  Checked when the
            session is created: a bad count is a one-line InputError.
        graph_optimization_level: a GraphOptimizationLevel or "disable"/"basic"/"extended"/"all".
        disabled_optimizers: pass names to skip.
        memory_budget: bytes of weights, and separately of activations, a model may need.
        memory_limit: bytes the session may hold in all (weights, packed weights and activation
            arenas); 0 = no limit.  Checked before allocating: at load (as the weights' budget)
            and whenever a plan is built or an arena grows, a one-line InputError naming the
            need and the limit.
        max_cached_plans: plans (one per set of input shapes) kept, least recently used
            dropped first.
        plan_cache_bytes: bound on the activation bytes the cached plans would need in all
            (0 = none); least recently used dropped first.  A dropped plan's packed weights
            stay (shared by the session's other plans); ``release_memory()`` frees everything.
        enable_cpu_mem_arena: True (default): activation arenas are kept between runs and
            shared by all plans (grown to the largest in use); False: each run allocates its
            arena and frees it when it ends (onnxruntime's meaning: less held, slower runs).
        enable_profiling: record every run's per-node times; ``end_profiling()`` writes them.
        profile_file_prefix: the profile is written to ``<prefix>_<timestamp>.json``.
        optimized_model_filepath: if set, the optimized model is written there as ONNX (fused
            nodes as model-local functions, so onnxruntime can load it).
        warm_up: True (default): the session runs the model once while it is created, on
            zeros (batch 1 where the first dimension is symbolic), so that numba has loaded
            the kernels and the weights are packed before the first real run, as onnxruntime
            does its preparation in the constructor.  Only for models whose inputs are all
            floating point with every dimension but the first fixed; the warm-up plan is not
            kept (a first run of another batch size plans anew, reusing the packed weights).
            False: the first run pays the loading (ResNet-18: ~0.3-0.5 s against ~20 ms).
        precision: "fp32" (default) or "bf16" (opt-in, convrt/runtime/precision.py): float32
            Conv and Gemm layers run with bf16 weights (converted once, at plan time) and
            activations rounded to bf16 where they enter the layer; sums, bias, residual and
            activation stay float32, inputs and outputs keep the model's dtype.  Layers without
            a bf16 kernel (depthwise, grouped, fewer than 8 input channels, 1x1 handled
            elsewhere, pools...) and float64 layers compute as in "fp32"; a float16 model
            computes in float32 (convrt/float16.py), so its convolutions do take bf16.  On a
            CPU without AVX512_BF16: one warning per process, then float32.  Anything else is
            an InputError listing the choices (at session creation).
        tiered_start: True (default; ``CONVRT_TIERED_START=0`` in the environment makes it
            False): where the warm-up finds kernels missing from numba's on-disk cache, the
            session answers with numpy kernels for Conv, Gemm, MatMul, the pools and Softmax
            while numba compiles its own in a background thread, then switches
            (convrt/runtime/tiers.py; ``first_tier`` and ``wait_compiled()`` on the session).
            False: the warm-up compiles before the session is returned (20-40 s for a CNN on
            an empty cache).  Needs ``warm_up``.

    Accepted for onnxruntime code, with no effect in convrt: ``inter_op_num_threads`` and
    ``execution_mode`` (a plan runs its nodes one after another; the parallelism is inside the
    kernels), ``enable_mem_pattern`` and ``enable_mem_reuse`` (a plan always lays its buffers out
    once and reuses them by liveness), onnxruntime's ``arena_extend_strategy`` (a provider
    option there; convrt's arenas always grow to exactly the largest plan), ``log_severity_level``,
    ``log_verbosity_level`` and ``logid`` (convrt logs nothing: it raises one-line errors),
    ``use_deterministic_compute``, and the entries of ``add_session_config_entry``.
    """

    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 0
    graph_optimization_level: object = GraphOptimizationLevel.ORT_ENABLE_ALL
    disabled_optimizers: list = field(default_factory=list)
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    memory_limit: int = 0
    max_cached_plans: int = MAX_PLANS
    plan_cache_bytes: int = 0
    log_severity_level: int = 2
    enable_profiling: bool = False
    profile_file_prefix: str = "convrt_profile"
    optimized_model_filepath: str = ""
    execution_mode: object = ExecutionMode.ORT_SEQUENTIAL
    enable_cpu_mem_arena: bool = True
    enable_mem_pattern: bool = True
    enable_mem_reuse: bool = True
    log_verbosity_level: int = 0
    logid: str = ""
    use_deterministic_compute: bool = False
    config_entries: dict = field(default_factory=dict)
    warm_up: bool = True
    precision: str = "fp32"
    tiered_start: bool = field(default_factory=lambda: os.environ.get(
        "CONVRT_TIERED_START", "1") != "0")

    def add_session_config_entry(self, key: str, value: str) -> None:
        self.config_entries[str(key)] = str(value)

    def get_session_config_entry(self, key: str) -> str:
        if key not in self.config_entries:
            raise InputError(f"SessionOptions: no config entry {key!r}")
        return self.config_entries[key]


@dataclass(slots=True)
class RunOptions:
    """Per-run settings, onnxruntime's names; slotted like SessionOptions.

    ``terminate`` is read when a run starts: a run started with it set is refused with an
    InputError, as onnxruntime refuses it (convrt cannot stop a run already inside its kernels).
    The logging fields and ``only_execute_path_to_fetches`` have no effect: convrt logs nothing,
    and a plan always runs the whole graph (the outputs not asked for are cheap beside the
    convolutions they share).  onnxruntime has no ``tag`` (its run tag is ``logid``).
    """

    log_severity_level: int = -1
    log_verbosity_level: int = 0
    logid: str = ""
    terminate: bool = False
    only_execute_path_to_fetches: bool = False
    config_entries: dict = field(default_factory=dict)

    def add_run_config_entry(self, key: str, value: str) -> None:
        self.config_entries[str(key)] = str(value)

    def get_run_config_entry(self, key: str) -> str:
        if key not in self.config_entries:
            raise InputError(f"RunOptions: no config entry {key!r}")
        return self.config_entries[key]


@dataclass(frozen=True)
class ModelMetadata:
    """What get_modelmeta() returns: onnxruntime's ModelMetadata fields, from the ONNX file.

    ``version`` is the file's model_version, 0 when it sets none (onnxruntime reports
    2**63 - 1 then); ``description`` is the model's doc_string.
    """

    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: dict


_TYPE_NAMES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float64): "tensor(double)",
               np.dtype(np.float16): "tensor(float16)", np.dtype(np.int64): "tensor(int64)",
               np.dtype(np.int32): "tensor(int32)", np.dtype(np.int8): "tensor(int8)",
               np.dtype(np.uint8): "tensor(uint8)", np.dtype(np.bool_): "tensor(bool)",
               np.dtype(np.int16): "tensor(int16)", np.dtype(np.uint16): "tensor(uint16)",
               np.dtype(np.uint32): "tensor(uint32)", np.dtype(np.uint64): "tensor(uint64)"}


@dataclass(frozen=True)
class NodeArg:
    """What get_inputs()/get_outputs() return: name, shape (str for symbolic dims), type."""

    name: str
    shape: list
    type: str


def _node_arg(v) -> NodeArg:
    shape = [] if v.shape is None else [d for d in v.shape]
    return NodeArg(v.name, shape, _TYPE_NAMES.get(v.dtype, f"tensor({v.dtype})"))


class InferenceSession:
    """Load, optimize and run an ONNX model.

    Args:
        path_or_bytes: a file path, the model's bytes, or an onnx.ModelProto.
        sess_options: a SessionOptions.
        providers: accepted for onnxruntime compatibility; convrt runs on the CPU.
    """

    def __init__(self, path_or_bytes, sess_options: SessionOptions | None = None,
                 providers=None, base_dir=None, **_):
        self.options = sess_options or SessionOptions()
        # first: a bad thread count is reported before minutes of loading and compiling
        self._threads = resolve_threads(self.options.intra_op_num_threads)
        self._precision = resolve_precision(self.options.precision)
        # onnxruntime's profile starts at session creation: initialization is its first event
        self._profiler = (SessionProfiler(self.options.profile_file_prefix, "<model>")
                          if self.options.enable_profiling else None)
        limit = int(self.options.memory_limit or 0)
        budget = self.options.memory_budget
        level = level_name(self.options.graph_optimization_level)
        disabled = tuple(self.options.disabled_optimizers)
        with malloc_loading():  # its freed temporaries must not stay as heap holes
            self.graph: Graph = load(path_or_bytes, base_dir,
                                     min(budget, limit) if limit else budget)
            self.unoptimized_node_count = len(self.graph.nodes)
            # the unoptimized graph, loaded again on the first fetch of a value the passes
            # fuse away, and to derive a released weight again (convrt/weights.py)
            reload = reloader(path_or_bytes, base_dir, min(budget, limit) if limit else budget,
                              self.graph)
            self._fetch = FetchCache(reload, level, disabled, self.options.memory_budget,
                                     self._threads)
            self.pass_report = optimize(self.graph, level, disabled)
        # the weights that live on only packed are released after each plan is built
        self._weights = ReleasedWeights(self.graph, reload, level, disabled)
        self._inputs = {v.name: v for v in self.graph.runtime_inputs()}
        self._overridable = {v.name: v for v in self.graph.inputs if v.const is not None}
        self._outputs = [v.name for v in self.graph.outputs]
        self._plans: dict[tuple, Plan] = {}  # least recently used first
        # what every plan shares: packed weights and activation arenas (see plan_for)
        self._packs = PackCache()
        weights = sum(v.const.nbytes for v in self.graph.values.values() if v.const is not None)
        packs = self._packs  # not self: a lambda holding the session would make it a cycle,
        self._pool = ArenaPool(bool(self.options.enable_cpu_mem_arena), limit,  # freed by gc only
                               lambda: weights + packs.nbytes)
        self._by_value: frozenset = frozenset()  # inputs whose values key the plans
        self._lock = threading.Lock()
        self._lru = threading.Lock()  # guards the order of _plans (quick: taken on every run)
        self._tier: tiers.FirstTier | None = None  # numba compiling (runtime/tiers.py)
        if self.options.optimized_model_filepath:
            self._write_optimized(self.options.optimized_model_filepath)
        if self.options.warm_up:
            self._warm_up()
        if self._profiler is not None:
            self._profiler.model = self.graph.source
            self._profiler.add_session_event("session_initialization", 0.0, self._profiler.now())

    def _warm_up(self) -> None:
        """Run once on zeros so that the first real run is a warm one (``SessionOptions.warm_up``).

        Why at load: numba loads a kernel's machine code from its cache on the kernel's first
        call, after initializing its compiler's registries (~0.3-0.5 s for ResNet-18, 15-35x a
        warm run); a server creates its session before traffic comes.  Skipped where zeros of
        a guessed shape could mislead: inputs that are not floating point (they may carry
        shapes, see ``_plan_by_value``) or with a symbolic dimension other than the batch.  A
        model that cannot be planned this way (a ConvrtError) is left for the first run to
        report, with the user's own inputs.
        """
        feeds = {}
        for name, v in self._inputs.items():
            if v.shape is None or v.dtype is None or v.dtype.kind != "f" or not all(
                    isinstance(d, int) for d in v.shape[1:]):
                return
            feeds[name] = np.zeros([d if isinstance(d, int) else 1 for d in v.shape], v.dtype)
        lookups = cache_lookups()
        try:
            arrays, infos = self._check_feeds(feeds)
            build = functools.partial(self._new_plan, infos)
            with np.errstate(all="ignore"):
                if not self.options.tiered_start:
                    plan = build()
                    plan.run(arrays)
                elif (plan := tiers.build_cached(build, arrays)) is None:  # numba must compile:
                    self._tier = tiers.FirstTier(  # numpy kernels meanwhile (runtime/tiers.py)
                        self.graph.source, self._lock, self._first_tier_plan, build, arrays, infos,
                        plan_key(infos), self._threads, self._warmed)
                    return
            self._warmed(plan)
        except ConvrtError:
            pass
        # numba's loader leaves ~100k objects behind; the interpreter's next full collection of
        # them (40-70 ms) otherwise lands in the first run (ResNet-18: 78 ms instead of 14).
        # Only then: a full collection of a big process costs more than it saves.  Not where the
        # caller turned the collector off (the CLI does while it loads, then freezes what
        # loading made): no automatic collection can land in the first run then.
        if cache_lookups() != lookups and gc.isenabled():
            gc.collect()

    def _new_plan(self, infos: dict, first_tier: bool = False) -> Plan:
        # a compiled plan releases each weight once its kernel packed it (convrt/weights.py):
        # the originals and the packed copies of a whole model are never resident together
        return Plan(self.graph, infos, self.options.memory_budget, self._threads, self._packs,
                    self._pool, self._precision, first_tier,
                    None if first_tier else self._weights.release)

    def _first_tier_plan(self, infos: dict) -> Plan:
        """A first-tier plan (runtime/tiers.py): its numpy kernels read the weights unpacked,
        so the released ones come back, all in one reload at most (``restored``); the plan
        holds them while it lives."""
        with self._weights.restored():
            return self._new_plan(infos, first_tier=True)

    def _warmed(self, plan: Plan | None) -> None:
        """The warm-up's plan ran (None: a background compile failed, and the next run plans
        again and reports the error): its unpacked weights can go."""
        if plan is not None:
            plan.release()
            self._weights.release(plan.packed_consts)

    @property
    def first_tier(self) -> bool:
        """True while runs use numpy kernels because numba is still compiling the session's
        own in the background (``SessionOptions.tiered_start``); False once they are in use."""
        tier = self._tier
        return tier is not None and tier.active

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Block until the session runs on its compiled kernels (a background compile, if any,
        finished); False if ``timeout`` seconds passed first.  Time runs after this."""
        tier = self._tier
        return True if tier is None else tier.job.wait(timeout)

    def __reduce__(self):
        """Pickle as the optimized model's ONNX bytes and the options; unpickling re-loads.

        Why the optimized graph and not the original model: the session keeps no copy of its
        source (that would be a second copy of every weight in every session, for the rare
        pickle), the bytes stand alone on another machine (external data is inlined), and
        re-loading them is cheap: fused nodes come back as convrt-domain functions that run
        natively, so the passes find nothing left to do.  Plans, buffers and kernels are not
        pickled; the receiver plans on its first run (numba's on-disk cache has the kernels).
        ``optimized_model_filepath`` is cleared so that every unpickling does not rewrite it.
        """
        import dataclasses

        from .onnx_io import from_graph  # not the root package: api -> convrt would be a cycle

        opts = dataclasses.replace(self.options, optimized_model_filepath="")
        with self._weights.restored():  # the released weights, for this one copy
            data = from_graph(self.graph).SerializeToString()
        return type(self), (data, opts)

    def _write_optimized(self, path) -> None:
        from .onnx_io import save

        try:
            with self._weights.restored():
                save(self.graph, path)
        except OSError as e:
            raise InputError(f"optimized_model_filepath {str(path)!r}: cannot write "
                             f"({e.strerror})") from None

    # -- onnxruntime's introspection ----------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._inputs.values()]

    def get_outputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self.graph.outputs]

    def get_overridable_initializers(self) -> list[NodeArg]:
        """Initializers also listed as graph inputs: a feed of that name replaces the weight."""
        return [_node_arg(v) for v in self._overridable.values()]

    def get_providers(self) -> list[str]:
        """convrt's one provider.  Named for convrt rather than "CPUExecutionProvider", which is
        onnxruntime's own kernels: code that prints or logs the provider should not claim
        onnxruntime ran the model.  ``providers=`` given to the constructor is ignored."""
        return [PROVIDER]

    def get_provider_options(self) -> dict[str, dict]:
        return {PROVIDER: {}}

    def get_modelmeta(self) -> ModelMetadata:
        g = self.graph
        return ModelMetadata(producer_name=g.producer_name, graph_name=g.name,
                             domain=g.domain, description=g.doc_string,
                             graph_description=g.graph_doc_string, version=g.model_version,
                             custom_metadata_map=dict(g.metadata_props))

    # -- profiling (SessionOptions.enable_profiling) ------------------------------------------
    def end_profiling(self) -> str:
        """Write the profile of every run so far as ``<profile_file_prefix>_<timestamp>.json``
        (a JSON list of Chrome trace events, the shape of onnxruntime's files) and stop
        profiling; returns the file name, or "" when profiling is off (as onnxruntime does)."""
        prof, self._profiler = self._profiler, None
        return "" if prof is None else prof.write()

    def _execute(self, plan: Plan, arrays: dict, run_options, profile) -> list[np.ndarray]:
        """``plan.run`` honouring ``run_options`` and the session's profiler."""
        if run_options is not None:
            if not isinstance(run_options, RunOptions):
                raise InputError(f"run_options must be a convrt.RunOptions, got "
                                 f"{type(run_options).__name__}")
            if run_options.terminate:
                raise InputError(f"{self.graph.source}: run refused: run_options.terminate "
                                 "is set")
        prof = self._profiler
        if prof is None:
            return plan.run(arrays, profile)
        steps: list = []
        start = prof.now()
        results = plan.run(arrays, steps)
        prof.record_run(steps, start, prof.now() - start)
        if profile is not None:
            profile.extend(steps)
        return results

    # -- running ------------------------------------------------------------------------------
    def _check_feeds(self, feeds) -> tuple[dict, dict]:
        arrays = check_feeds(feeds, {**self._overridable, **self._inputs}, self._inputs,
                             self.graph.source)
        by_value = self._by_value
        infos = {n: TensorInfo(tuple(int(d) for d in a.shape), a.dtype,
                               a if n in by_value else None)
                 for n, a in arrays.items()}
        return arrays, infos

    def plan_for(self, infos: dict[str, TensorInfo]) -> Plan:
        """The plan for these input shapes, and for the values of the inputs given one (built
        once, cached: at most ``max_cached_plans``, and ``plan_cache_bytes`` of activations,
        the least recently used dropped first).  All plans share the session's packed weights
        and activation arenas, so a plan holds only what depends on its shapes."""
        key = plan_key(infos)
        tier = self._tier
        plan = None if tier is None else tier.plan_for(key, infos)  # while numba compiles
        if plan is not None:
            return plan
        plan = self._touch(key)
        if plan is None:
            with self._lock:  # one build at a time; runs of built plans go on meanwhile
                plan = self._touch(key)
                if plan is None:
                    plan = self._new_plan(infos)
                    self._weights.release(plan.packed_consts)
                    with self._lru:
                        self._plans[key] = plan
                        self._evict()
        return plan

    def _touch(self, key):
        """The cached plan for ``key``, made the most recently used; None when not cached."""
        with self._lru:
            plan = self._plans.pop(key, None)
            if plan is not None:
                self._plans[key] = plan
        return plan

    def _evict(self) -> None:
        """Drop least recently used plans past the count or byte bound (never the newest);
        when the largest plan goes, the arenas shrink to the largest one left."""
        opts, plans = self.options, self._plans
        cap, nbytes = max(1, int(opts.max_cached_plans)), int(opts.plan_cache_bytes or 0)
        held = sum(p.arena_bytes + p.scratch_bytes for p in plans.values())
        dropped = False
        while len(plans) > 1 and (len(plans) > cap or (nbytes and held > nbytes)):
            old = plans.pop(next(iter(plans)))
            held -= old.arena_bytes + old.scratch_bytes
            old.release()
            dropped = True
        if dropped and max(p.arena_bytes for p in plans.values()) < self._pool.high:
            self._pool.clear()

    def release_memory(self) -> None:
        """Drop every cached plan, the activation arenas and the packed weights (the session
        plans again on its next run).  For a long-lived session after a burst of large
        batches; runs in progress finish and free their own arena."""
        with self._lock, self._lru:
            for p in self._plans.values():
                p.release()
            self._plans.clear()
            self._pool.clear()
            self._packs.clear()

    def _plan_by_value(self, arrays: dict, infos: dict, error: UnsupportedOpError) -> Plan:
        """Plan again with the values of small feeds as constants.

        A graph input may carry what a static plan needs to know (a Reshape's shape, Slice's
        starts, Pad's pads, Squeeze's axes, Resize's scales...).  onnxruntime runs such graphs;
        convrt plans per value instead: when a plan cannot be built without them, the small
        feeds (at most VALUE_KEY_ELEMENTS elements) join the plan key from then on, so each
        distinct value gets its own cached plan.  Integer and bool feeds are tried first; float
        feeds only when those do not suffice (a float input is run-time data wherever a kernel
        can read it at run time, as Clip's bounds are).  Raises ``error`` when there are no such
        feeds, and the last planning error when their values do not help.
        """
        small = [n for n, a in arrays.items()
                 if n not in self._by_value and a.size <= VALUE_KEY_ELEMENTS]
        extra: set = set()
        for kinds in ("iub", "f"):
            tier = {n for n in small if arrays[n].dtype.kind in kinds}
            if not tier:
                continue
            extra |= tier
            keyed = {n: TensorInfo(i.shape, i.dtype, arrays[n]) if n in extra else i
                     for n, i in infos.items()}
            try:
                plan = self.plan_for(keyed)
            except UnsupportedOpError as e:
                error = e
                continue
            with self._lock:
                self._by_value = self._by_value | extra
            return plan
        raise error

    def run(self, output_names, input_feed, run_options=None, profile=None) -> list[np.ndarray]:
        """Compute ``output_names`` (None = all outputs) from ``input_feed``.

        A name may be any value of the original model (``get_values()`` lists them), not only
        a graph output: such a fetch set is compiled once from the unoptimized graph
        (``_run_fetch``, convrt/fetch.py); the names of graph outputs alone take the usual plan.
        """
        arrays, infos = self._check_feeds(input_feed)
        names = self._outputs if output_names is None else list(output_names)
        for n in names:
            if n not in self._outputs:
                return self._run_fetch(names, arrays, infos, run_options, profile)
        try:
            plan = self.plan_for(infos)
        except UnsupportedOpError as e:
            plan = self._plan_by_value(arrays, infos, e)
        numba.set_num_threads(self._threads)
        results = self._execute(plan, arrays, run_options, profile)
        by_name = dict(zip(self._outputs, results))
        return [by_name[n] for n in names]

    # -- intermediate values (convrt/fetch.py) ------------------------------------------------
    def get_values(self) -> list[ValueInfo]:
        """Every value ``run`` can fetch: the graph inputs and each node's output in the
        original (unoptimized) model, with the producing op, inferred shape and dtype."""
        return list_values(self._fetch.graph)

    @property
    def original_graph(self) -> Graph:
        """The unoptimized graph (loaded again on first use, ``weights.reloader``); do not
        mutate."""
        return self._fetch.graph

    def _run_fetch(self, names, arrays, infos, run_options, profile) -> list[np.ndarray]:
        """Run the plan of the graph outputs plus the intermediate values in ``names``."""
        self._fetch.check(names)
        extra = tuple(dict.fromkeys(n for n in names if n not in self._outputs))
        plan = self._fetch.plan(extra, infos)
        numba.set_num_threads(self._threads)
        results = self._execute(plan, arrays, run_options, profile)
        by_name = dict(zip(self._outputs + list(extra), results))
        return [by_name[n] for n in names]
