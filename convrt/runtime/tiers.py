"""Tiered start: on an empty kernel cache a session answers with numpy kernels while numba
compiles its own in a background thread (issue #16).

Why: numba compiles a kernel on its first call.  With the on-disk cache empty (a fresh install,
a new machine or Docker image, every CI run), the convolutions, GEMMs and pools of a model took
20-40 s to compile on the 2-core reference machine before the first result; with the cache
warm, the same process takes about a second.  numpy needs no compile, so the first results
come from a plan whose heaviest ops run on numpy, and the compiled plan takes over when ready.

How (``InferenceSession``, with ``SessionOptions.warm_up`` and ``tiered_start`` on):

1. At creation the session plans the model and runs it once on zeros inside
   ``_jit.compile_fence``: every kernel (weight packing's too) loads from memory or from
   numba's cache, or the first one that would compile raises
   ``CompileNeeded`` before compiling anything (:func:`build_cached`).  A warm cache ends here,
   as before: the session is warm and compiled.
2. On a miss the session plans the model again as a first-tier plan (``Plan(first_tier=True)``:
   Conv, Gemm, MatMul, the pools and Softmax bind kernels/first_tier.py) and runs it once on
   zeros, so the few small numba kernels that plan still uses compile now, before the
   background thread holds numba's compiler lock.  Then a :class:`Background` thread plans the
   model with the compiled kernels and runs it on zeros, which compiles them into the cache.
3. Until that thread is done, runs use first-tier plans (one per input shape set); then the
   session drops them and plans as usual.  ``InferenceSession.wait_compiled()`` waits for it.

The two tiers agree to float32 rounding, not bitwise (issue #16 allows that); both are tested
against the same oracles.  Process exit waits for a compile in progress, with one line on
stderr, so the cache fills and the next process starts warm (a kernel is cached whole or not
at all: a killed compile would leave the next process to start it again).  ``os.fork`` waits
for it too: the child would inherit numba's compiler lock held by a thread it does not have.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

import numba
import numpy as np

from ..kernels._jit import CompileNeeded, compile_fence

_ACTIVE: set = set()  # Background compiles not finished yet
_ACTIVE_LOCK = threading.Lock()


def build_cached(build, feeds: dict):
    """``plan = build()`` and ``plan.run(feeds)`` with numba's compiler fenced off: the plan
    when every kernel it called (weight packing at build time included) was in memory or in
    the disk cache, None at the first that would compile (nothing was compiled)."""
    plan = None
    try:
        with compile_fence():
            plan = build()
            plan.run(feeds)
    except CompileNeeded:
        if plan is not None:
            plan.release()
        return None
    return plan


class FirstTier:
    """A session's first-tier plans (one per input-shape key) while its compiled plan builds
    in a :class:`Background` thread; ``active`` until that is done.

    ``make(infos)`` plans the model on the first tier; ``build()`` plans it compiled; ``feeds``
    (of shapes ``infos``, key ``key``) are the warm-up's zeros; ``finish(plan)`` gets the
    compiled plan once it ran (None if building or running it failed).  ``lock`` is the
    session's planning lock: the switch and the building of first-tier plans exclude each
    other, so no first-tier plan is made after the switch."""

    def __init__(self, source: str, lock, make, build, feeds: dict, infos: dict, key,
                 threads: int, finish):
        self._lock, self._make = lock, make
        first = make(infos)
        # its few numba kernels compile now, before the background holds numba's compiler lock
        first.run(feeds)
        self.plans = {key: first}
        self.active = True
        built = []

        def work():
            numba.set_num_threads(threads)
            built.append(build())
            with np.errstate(all="ignore"):
                built[0].run(feeds)

        def done(error):
            with self._lock:
                self.active = False
                plans, self.plans = self.plans, {}
            ok = built and error is None
            for p in list(plans.values()) + ([] if ok else built):
                p.release()
            finish(built[0] if ok else None)

        self.job = Background(source, work, done)

    def plan_for(self, key, infos: dict):
        """The first-tier plan for ``key`` (made on first use), or None once compiled (then
        without the lock: runs of built plans never wait for a plan being built)."""
        if not self.active:
            return None
        with self._lock:
            if not self.active:
                return None
            if key not in self.plans:
                self.plans[key] = self._make(infos)
            return self.plans[key]


class Background:
    """``work()`` on a daemon thread, then ``done(error)`` (error: what ``work`` raised, or
    None); ``wait`` blocks until both ran."""

    def __init__(self, name: str, work, done):
        self.error: BaseException | None = None
        self._ready = threading.Event()
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)
        self._thread = threading.Thread(target=self._main, args=(work, done), daemon=True,
                                        name=f"convrt-compile {name}")
        self._thread.start()

    def _main(self, work, done) -> None:
        try:
            work()
        except BaseException as e:  # noqa: BLE001  (handed to done; the session reports it)
            self.error = e
        finally:
            try:
                done(self.error)
            finally:
                self._ready.set()
                with _ACTIVE_LOCK:
                    _ACTIVE.discard(self)

    @property
    def done(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work and its ``done`` ran (True), or ``timeout`` seconds (False)."""
        if threading.current_thread() is self._thread:
            return self.done
        return self._ready.wait(timeout)


def wait_all() -> None:
    """Wait for every background compile of this process."""
    with _ACTIVE_LOCK:
        pending = list(_ACTIVE)
    for b in pending:
        b.wait()


def _pending() -> bool:
    with _ACTIVE_LOCK:
        return any(not b.done for b in _ACTIVE)


def _at_exit() -> None:
    if not _pending():
        return
    print("convrt: finishing the kernel compile for numba's on-disk cache before exiting "
          "(later processes then start warm; Ctrl-C skips it)", file=sys.stderr, flush=True)
    try:
        wait_all()
    except KeyboardInterrupt:
        pass


def _before_fork() -> None:
    if _pending():
        print("convrt: fork() waits for a kernel compile in progress (a child must not inherit "
              "numba's compiler lock held by a thread it does not have)", file=sys.stderr,
              flush=True)
        wait_all()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)
