"""convrt's own ``parallel_for`` for numba's parallel regions: helper threads that stay awake
between the regions of a run.

Why: a run of a small network is ~100 parallel regions of 20-300 us each.  numba's TBB layer
builds a ``task_arena`` (and a scheduler observer) for every region, and its worker, asleep since
the last one, has to be woken and join the new arena: 3 us a region back to back, 8-15 us after
20-100 us of other work (the run loop between two layers), and the second core idles until the
worker arrives.  Here a region costs ~1 us: the helper threads spin for a short while after each
region (:data:`SPIN_CYCLES`, ~0.15 ms: 0.02 ms was 3-8 % slower, 0.8 and 4 ms no faster),
so the next region finds them running; then they sleep on a futex, so an idle session costs no
CPU.  Measured on the 2-core AVX2 machine, one process alternating numba's layer and this pool,
bitwise equal outputs: MobileNetV3-Large 0.91-0.95, EfficientNet-B0 0.95, MobileNetV2
0.94-0.97, YOLOv8n 0.95-0.99, ResNet-18 0.99, ResNet-50 0.98-0.995 (benchmarks/RESULTS.md,
nineteenth stop); beside a busy loop, within the noise of numba's layer.

How: numba's parfor lowering calls the C symbol ``numba_parallel_for`` (and reads the thread
index through ``get_thread_id``); :func:`install` points both symbols at the C-callable
wrappers of :func:`parallel_for` and :func:`get_thread_id` below, before any parallel kernel is
linked (``pjit`` calls it; kernels linked earlier keep numba's own layer, which is as correct).
A region's ``count`` chunks (numba's scheduler makes one per thread) are claimed from an atomic
counter by the caller and the helpers; what each chunk computes never depends on which thread
runs it, so results are bitwise the same as under numba's layer.

Not the pool, numba's own layer instead: a region that starts while the pool is running another
(a second Python thread, or a parallel kernel called inside a region), a caller that asked for
one thread, ``CONVRT_THREAD_POOL=0`` in the environment, a threading layer the user chose
(``NUMBA_THREADING_LAYER``, or a ``numba.config.THREADING_LAYER`` other than TBB), and
anything this module cannot set up (not Linux on x86-64, numba internals that differ:
``problem`` says why).

When a core is taken: a helper that finds itself on the caller's core stops spinning at once
(spinning there would keep the caller off its own core), and every wait of the caller on a
helper yields the core after a short spin.  A forked child starts its own helpers.

The state is one int64 array, named to LLVM as ``convrt_pool_state`` (``ll.add_symbol``), so
the compiled functions find it without a pointer argument and stay cacheable on disk.  Slots
on their own cache lines where two threads write them.
"""

from __future__ import annotations

import os
import platform
import sys
import threading

import llvmlite.binding as ll
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

ENV_VAR = "CONVRT_THREAD_POOL"
STATE_SYMBOL = "convrt_pool_state"
#: How long a helper spins for the next region before it sleeps, in cycle-counter ticks
#: (~0.1-0.2 ms): longer than the run loop's gap between two parallel layers.
SPIN_CYCLES = 400_000
#: How long the caller spins for a helper's last chunk before it yields the core to it.
WAIT_SPIN_CYCLES = 50_000

# state slots (int64)
GEN = 0          # region generation; its low 32 bits are the helpers' futex word
CALLER_CPU = 1   # the CPU the caller published the region from
CALLER = 2       # pthread_self() of the region's caller while it runs one
NEXT = 8         # (generation << 24) | next chunk to claim
DONE = 16        # chunks finished in this region
BUSY = 24        # 1 while a region runs in the pool
SLEEPERS = 32    # helpers asleep on the futex
FN, ARGS, DIMS, STEPS, DATA, ARG_LEN, ARRAYS, CHUNKS, TEAM = range(40, 49)
HELPERS = 49     # helper threads started
SPIN = 50
WAIT_SPIN = 51
ORIG_FOR = 52    # numba's own parallel_for and get_thread_id
ORIG_TID = 53
HELPED = 56      # chunks the helpers ran (tests read it)
TIDS = 64        # pthread_self() of helper i at TIDS + i
MAX_THREADS = 64
SCRATCH = TIDS + MAX_THREADS + 8  # per thread: the chunk's argument pointers, then its dims
MAX_ARRAYS = 256
MAX_DIMS = 64
MAX_CHUNKS = 1 << 24  # NEXT keeps the chunk index in its low 24 bits (numba makes one a thread)
PER_THREAD = MAX_ARRAYS + MAX_DIMS

_MACHINE = platform.machine().lower()
# x86-64 only: the spin budget reads the time-stamp counter (llvm.readcyclecounter), which
# other CPUs may not let user code read
_SYS_FUTEX = {"x86_64": 202, "amd64": 202}.get(_MACHINE)
_FUTEX_WAIT, _FUTEX_WAKE = 128, 129  # the _PRIVATE forms


def njit(fn):
    """``numba.njit`` with ``cache=True``; :func:`install` gives these dispatchers convrt's safe
    cache and compile lock (``_jit._safe``, passed in: ``_jit`` imports this module)."""
    return numba.njit(cache=True, nogil=True)(fn)


_SIZE = SCRATCH + (MAX_THREADS + 1) * PER_THREAD
_raw = np.zeros(_SIZE + 8, dtype=np.int64)
_state = _raw[(-_raw.ctypes.data % 64) // 8:][:_SIZE]  # slot 0 on a cache line's start
ll.add_symbol(STATE_SYMBOL, _state.ctypes.data)
_i64 = ir.IntType(64)

#: Why the pool is not in use (None when it is, or before :func:`install` ran).
problem: str | None = None
_installed = False
_threads: list[threading.Thread] = []


def _slot(builder, index):
    mod = builder.module
    gv = mod.globals.get(STATE_SYMBOL)
    if gv is None:
        gv = ir.GlobalVariable(mod, _i64, STATE_SYMBOL)
        gv.linkage = "external"
    return builder.gep(gv, [index])


def _libc(builder, name, ret, args, var_arg=False):
    fnty = ir.FunctionType(ret, args, var_arg=var_arg)
    return cgutils.get_or_insert_function(builder.module, fnty, name)


@intrinsic
def _load(typingctx, index):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot(builder, args[0]), "seq_cst", 8)
    return types.int64(types.int64), codegen


@intrinsic
def _store(typingctx, index, value):
    def codegen(context, builder, sig, args):
        builder.store_atomic(args[1], _slot(builder, args[0]), "seq_cst", 8)
        return context.get_dummy_value()
    return types.none(types.int64, types.int64), codegen


@intrinsic
def _add(typingctx, index, value):
    """Atomic fetch-and-add; returns the old value."""
    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _slot(builder, args[0]), args[1], "seq_cst")
    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _cas(typingctx, index, old, new):
    def codegen(context, builder, sig, args):
        res = builder.cmpxchg(_slot(builder, args[0]), args[1], args[2], "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)
    return types.boolean(types.int64, types.int64, types.int64), codegen


@intrinsic
def _address(typingctx, index):
    def codegen(context, builder, sig, args):
        return builder.ptrtoint(_slot(builder, args[0]), _i64)
    return types.int64(types.int64), codegen


@intrinsic
def _peek(typingctx, address, index):
    """The int64 at ``address + 8 * index`` (numba's argument arrays)."""
    def codegen(context, builder, sig, args):
        p = builder.inttoptr(args[0], _i64.as_pointer())
        return builder.load(builder.gep(p, [args[1]]))
    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _pause(typingctx):
    def codegen(context, builder, sig, args):
        if _MACHINE in ("x86_64", "amd64"):
            builder.call(_libc(builder, "llvm.x86.sse2.pause", ir.VoidType(), []), [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def _cycles(typingctx):
    def codegen(context, builder, sig, args):
        return builder.call(_libc(builder, "llvm.readcyclecounter", _i64, []), [])
    return types.int64(), codegen


@intrinsic
def _futex(typingctx, address, op, value):
    """``syscall(SYS_futex, address, op, value, NULL, NULL, 0)``."""
    def codegen(context, builder, sig, args):
        fn = _libc(builder, "syscall", _i64, [_i64], var_arg=True)
        zero = ir.Constant(_i64, 0)
        return builder.call(fn, [ir.Constant(_i64, _SYS_FUTEX or 0), *args, zero, zero, zero])
    return types.int64(types.int64, types.int64, types.int64), codegen


@intrinsic
def _thread_self(typingctx):
    def codegen(context, builder, sig, args):
        return builder.call(_libc(builder, "pthread_self", _i64, []), [])
    return types.int64(), codegen


@intrinsic
def _cpu(typingctx):
    def codegen(context, builder, sig, args):
        return builder.sext(builder.call(_libc(builder, "sched_getcpu", ir.IntType(32), []), []),
                            _i64)
    return types.int64(), codegen


@intrinsic
def _yield(typingctx):
    def codegen(context, builder, sig, args):
        builder.call(_libc(builder, "sched_yield", ir.IntType(32), []), [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def _call_chunk(typingctx, fn, args, dims, steps, data):
    """numba's gufunc body: ``fn(char **args, intp *dims, intp *steps, void *data)``."""
    def codegen(context, builder, sig, a):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p.as_pointer(), _i64.as_pointer(),
                                               _i64.as_pointer(), i8p])
        builder.call(builder.inttoptr(a[0], fnty.as_pointer()),
                     [builder.inttoptr(a[1], i8p.as_pointer()),
                      builder.inttoptr(a[2], _i64.as_pointer()),
                      builder.inttoptr(a[3], _i64.as_pointer()), builder.inttoptr(a[4], i8p)])
        return context.get_dummy_value()
    return types.none(*[types.int64] * 5), codegen


@intrinsic
def _call_for(typingctx, fn, a, b, c, d, e, f, g, h):
    """numba's own ``parallel_for`` (eight word-sized arguments)."""
    def codegen(context, builder, sig, x):
        fnty = ir.FunctionType(ir.VoidType(), [_i64] * 8)
        builder.call(builder.inttoptr(x[0], fnty.as_pointer()), list(x[1:]))
        return context.get_dummy_value()
    return types.none(*[types.int64] * 9), codegen


@intrinsic
def _call_tid(typingctx, fn):
    def codegen(context, builder, sig, x):
        fnty = ir.FunctionType(ir.IntType(32), [])
        res = builder.call(builder.inttoptr(x[0], fnty.as_pointer()), [])
        return builder.sext(res, _i64)
    return types.int64(types.int64), codegen


@njit
def _run_chunk(me, chunk, fn, args, dims, steps, data, arg_len, arrays):
    """Chunk ``chunk`` of the region on thread ``me``: numba's gufunc body on one step of the
    outer dimension, its array pointers advanced by ``chunk`` steps (what TBB's layer does for
    a sub-range)."""
    base = SCRATCH + me * PER_THREAD
    for j in range(arrays):
        _store(base + j, _peek(args, j) + _peek(steps, j) * chunk)
    _store(base + MAX_ARRAYS, 1)
    for j in range(1, arg_len):
        _store(base + MAX_ARRAYS + j, _peek(dims, j))
    _call_chunk(fn, _address(base), _address(base + MAX_ARRAYS), steps, data)


@njit
def _work(me, gen):
    """Run chunks of region ``gen`` until none is left; False when this thread is not one of
    the region's team (the first ``TEAM`` threads: numba sizes per-thread arrays by it)."""
    if me >= _load(TEAM):
        return False
    fn, args, dims, steps = _load(FN), _load(ARGS), _load(DIMS), _load(STEPS)
    data, arg_len, arrays, chunks = _load(DATA), _load(ARG_LEN), _load(ARRAYS), _load(CHUNKS)
    while True:
        v = _load(NEXT)
        # a claim is only good for this region: a late helper must not run a newer region's
        # chunk with this one's arguments (the generation is part of the counter)
        if (v >> 24) != gen or (v & 0xFFFFFF) >= chunks:
            return True
        if _cas(NEXT, v, v + 1):
            _run_chunk(me, v & 0xFFFFFF, fn, args, dims, steps, data, arg_len, arrays)
            if me > 0:
                _add(HELPED, 1)
            _add(DONE, 1)


@njit
def _helper(me):
    """Helper thread ``me`` (1, 2, ...): runs its share of each region, spins for the next
    one, sleeps on the futex when none comes.  Never returns (a daemon thread)."""
    _store(TIDS + me, _thread_self())
    seen = _load(GEN)
    budget = _load(SPIN)
    while True:
        start = _cycles()
        gen = _load(GEN)
        while gen == seen:
            if _cycles() - start < budget and _cpu() != _load(CALLER_CPU):
                _pause()
            else:
                _add(SLEEPERS, 1)
                if _load(GEN) == seen:
                    _futex(_address(GEN), _FUTEX_WAIT, seen & 0xFFFFFFFF)
                _add(SLEEPERS, -1)
                start = _cycles()
            gen = _load(GEN)
        seen = gen
        # a helper outside the region's team goes back to sleep at once
        budget = _load(SPIN) if _work(me, gen) else 0


@njit
def parallel_for(fn, args, dims, steps, data, inner_ndim, arrays, threads):
    """numba's ``numba_parallel_for``: run the region's ``dims[0]`` chunks on the caller and
    the helpers, or hand it to numba's own layer (see the module docstring)."""
    chunks = _peek(dims, 0)
    arg_len = inner_ndim + 1
    helpers = _load(HELPERS)
    if chunks <= 1 or threads <= 1:
        _call_chunk(fn, args, dims, steps, data)
        return
    if (helpers == 0 or arrays > MAX_ARRAYS or arg_len > MAX_DIMS or chunks >= MAX_CHUNKS
            or not _cas(BUSY, 0, 1)):
        _call_for(_load(ORIG_FOR), fn, args, dims, steps, data, inner_ndim, arrays, threads)
        return
    _store(CALLER, _thread_self())
    _store(FN, fn)
    _store(ARGS, args)
    _store(DIMS, dims)
    _store(STEPS, steps)
    _store(DATA, data)
    _store(ARG_LEN, arg_len)
    _store(ARRAYS, arrays)
    _store(CHUNKS, chunks)
    _store(TEAM, min(threads, helpers + 1, chunks))
    gen = _load(GEN) + 1
    _store(DONE, 0)
    _store(NEXT, gen << 24)
    _store(CALLER_CPU, _cpu())
    _store(GEN, gen)
    if _load(SLEEPERS) > 0:
        _futex(_address(GEN), _FUTEX_WAKE, 0x7FFFFFFF)
    _work(np.int64(0), gen)  # not a literal 0: one compiled _work serves every thread
    start = _cycles()
    while _load(DONE) < chunks:  # a helper's last chunk
        if _cycles() - start < _load(WAIT_SPIN):
            _pause()
        else:
            _yield()
    _store(CALLER, 0)
    _store(BUSY, 0)


@njit
def get_thread_id():
    """numba's ``get_thread_id`` (the index of per-thread reduction slots): a helper's number
    in a pool region, 0 for the region's caller, numba's own answer elsewhere."""
    me = _thread_self()
    if _load(BUSY) == 1 and _load(CALLER) == me:
        return 0
    for i in range(1, _load(HELPERS) + 1):
        if _load(TIDS + i) == me:
            return i
    return max(_call_tid(_load(ORIG_TID)), 0)


def _wrapper_address(disp, sig) -> int:
    """The C-callable entry of an njit function compiled (or loaded) for ``sig``."""
    disp.compile(sig)
    cres = disp.overloads[tuple(sig)]
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_cfunc_wrapper_name)


_JITTED = (_run_chunk, _work, _helper, parallel_for, get_thread_id)


def _compile() -> tuple[int, int]:
    """Compile (or load) the pool: the C entries of ``parallel_for`` and ``get_thread_id``."""
    i64 = types.int64
    _helper.compile((i64,))
    return _wrapper_address(parallel_for, (i64,) * 8), _wrapper_address(get_thread_id, ())


def _start_helpers(count: int) -> None:
    _state[HELPERS] = 0
    _threads.clear()
    for i in range(1, count + 1):
        t = threading.Thread(target=_helper, args=(i,), daemon=True, name=f"convrt-pool-{i}")
        t.start()
        _threads.append(t)
    _state[HELPERS] = count


def _after_fork_in_child() -> None:
    """The helpers are not in the child: reset the state and start new ones."""
    if not _installed:
        return
    for slot in (BUSY, SLEEPERS, CALLER, DONE, HELPED):
        _state[slot] = 0
    _state[TIDS:TIDS + MAX_THREADS] = 0
    _start_helpers(len(_threads))


def _usable_cpus() -> int:
    """This process's CPUs (runtime/threads.py also applies a cgroup quota to the sessions'
    counts; a helper beyond a region's team goes straight back to sleep)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _why_not() -> str | None:
    if os.environ.get(ENV_VAR, "1").strip() == "0":
        return f"{ENV_VAR}=0"
    if not sys.platform.startswith("linux") or _SYS_FUTEX is None:
        return f"not Linux on x86-64 ({sys.platform}, {_MACHINE})"
    if "NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER not in (
            "default", "tbb"):  # convrt's own choice is "tbb" (_jit), numba's is "default"
        return f"the threading layer {numba.config.THREADING_LAYER!r} was chosen: it is kept"
    return None


def install(safe) -> bool:
    """Point numba's ``numba_parallel_for`` and ``get_thread_id`` at the pool (once per
    process); False, with :data:`problem` saying why, where numba's own layer stays.  ``safe``
    gives a dispatcher convrt's safe cache and cross-process compile lock (``_jit._safe``)."""
    global _installed, problem
    if _installed or problem is not None:
        return _installed
    problem = _why_not()
    if problem is not None:
        return False
    try:
        from numba.np.ufunc import parallel

        parallel._launch_threads()
        layer = {"tbb": "tbbpool", "omp": "omppool", "workqueue": "workqueue"}[
            parallel._threading_layer]
        lib = __import__(f"numba.np.ufunc.{layer}", fromlist=[layer])
        _state[ORIG_FOR] = lib.parallel_for
        _state[ORIG_TID] = lib.get_thread_id
        _state[SPIN] = SPIN_CYCLES
        _state[WAIT_SPIN] = WAIT_SPIN_CYCLES
        for disp in _JITTED:
            safe(disp)
        pf, tid = _compile()
        helpers = min(_usable_cpus(), numba.config.NUMBA_NUM_THREADS, MAX_THREADS) - 1
    except Exception as e:  # noqa: BLE001  (numba internals that differ: keep numba's layer)
        problem = f"{type(e).__name__}: {e}"
        return False
    ll.add_symbol("numba_parallel_for", pf)
    ll.add_symbol("get_thread_id", tid)
    _start_helpers(helpers)
    _installed = True
    return True


os.register_at_fork(after_in_child=_after_fork_in_child)
