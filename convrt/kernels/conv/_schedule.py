"""Work scheduling shared by every convolution algorithm: dynamic, guided, two-ended claims.

Parallel loops claim their work items dynamically from an atomic counter (``_claim_end``,
``work_split``) rather than splitting them statically: on a shared 2-vCPU machine a thread that
another process delays no longer leaves its fixed share undone while the other thread waits
(the region's closing barrier still waits for it to be scheduled once).  Claims are guided:
whole grains first, smaller ones as the loop runs out.  With two threads, one claims from the
front of the loop and the other from the back, so each keeps to its own part of the data until
they meet.  Every item computes the same outputs in the same order whichever thread runs it, so
results are bit-identical for any thread count.

Algorithms import what they use from here; nothing here knows about any algorithm.
"""

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from .._jit import njit

TWO_ENDS = True


@intrinsic
def _fetch_add(typingctx, ctr, val):
    """Atomically ``old = ctr[0]; ctr[0] += val; return old`` on an int64 array."""
    if not (isinstance(ctr, types.Array) and ctr.dtype == types.int64):
        return None
    sig = types.int64(ctr, val)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        v = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", a.data, v, "monotonic")

    return sig, codegen


@njit
def _claim_end(ctr, total, grain, side, done):
    """The next claim ``[u0, u1)`` of a loop of ``total`` items (empty: none left) for worker
    ``side`` (``_side``): 0 takes its items from the front, 1 from the back, -1 the shared
    counter's next ones; ``done`` = the items this worker took so far.

    Guided: an eighth of what is left, at most ``grain``, at least 1.  Early claims are whole
    grains; the last ones shrink, so the two threads finish together instead of one waiting
    out the other's last grain (up to a millisecond on VGG-16's big layers).  The counter sums
    every claim, so the two ends never overlap (both workers' ``done`` add up to at most
    ``total``); its plain read may be stale, which only changes a claim's size.

    Two ends rather than one shared front: each worker walks its own images, channel blocks
    (weights) and rows, and the two meet once, instead of interleaving neighbouring rows whose
    output cache lines and weights both cores would then hold (in-process A/B, 2026-11-27:
    ResNet-18 0.94-0.95, MobileNetV2 0.96, VGG-16 and the small VGG within the noise)."""
    g = min(grain, max(1, (total - ctr[0]) // 8))
    k = _fetch_add(ctr, g)
    if k >= total:
        return 0, 0
    g = min(g, total - k)
    if side < 0:
        return k, k + g
    if side == 0:
        return done, done + g
    return total - done - g, total - done


@njit
def _item(u, na, nb, a_fastest):
    """Work item ``u`` of a loop over images x a (``na`` values) x b (``nb`` values), as
    ``(a, b, image)``; a varies fastest if ``a_fastest``, else b does."""
    if a_fastest:
        a = u % na
        r = u // na
        return a, r % nb, r // nb
    b = u % nb
    r = u // nb
    return r % na, b, r // na


def _thread_getter():
    """numba's raw per-thread getter (0.15 us a call) instead of ``numba.get_num_threads`` (1-2
    us: it checks that the pool is launched every time); the public one if internals differ."""
    try:
        from numba.np.ufunc import parallel as par
        par._launch_threads()
        raw = par._get_num_threads
        if callable(raw) and raw() == numba.get_num_threads():
            return raw
    except Exception:  # pragma: no cover - depends on numba's internals
        pass
    return numba.get_num_threads


_num_threads = None


def work_split(total):
    """``(threads, grain)`` for a loop of ``total`` work items claimed dynamically: the current
    numba thread count, and about 8 claims per thread.  Which thread runs an item never changes
    what the item computes, so results stay bit-identical whatever the split.  The grain is
    negative when ``TWO_ENDS`` is off (workers pass ``abs(grain)`` to ``_claim_end``)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _thread_getter()
    nthr = _num_threads()
    if nthr < 1:  # pragma: no cover - the raw getter before numba set this thread's count
        nthr = numba.get_num_threads()
    grain = max(1, total // (8 * nthr))
    return nthr, grain if TWO_ENDS else -grain


@njit
def _side(t, nthr, grain):
    """Which end worker ``t`` claims from (``_claim_end``): two workers take one end each;
    more workers, or a negative grain (``TWO_ENDS`` off), share the front.  Always int64: a
    prange index is uint64 in the parallel body, int64 when numba first types it, and one
    type keeps the workers it is passed to from compiling twice (uint64 with -1 would even
    unify to float64)."""
    if nthr == 2 and grain > 0:
        return np.int64(t)
    return np.int64(-1)


# Below this many multiply-adds and output elements a layer runs on the calling thread
# (``serial``; runtime/plan.py makes the same call for whole steps).  SERIAL_ELEMS was 1 << 17
# until the AVX2 machine of 2026-12-08 measured the depthwise layers it kept serial: alone, one
# thread / two, 480x14x14 3x3 with SiLU 0.246 / 0.143 ms, without an activation 0.128 / 0.076,
# 1152x7x7 5x5 SiLU 0.236 / 0.140, 240x14x14 HardSwish 0.071 / 0.050; with 1 << 15 the whole
# models ran 0.95-0.98x (EfficientNet-B0, MobileNetV3-Large, MobileNetV2), YOLOv8n 0.98x, same
# process, bitwise equal.  Then convrt's own thread pool (kernels/_pool.py) made a region cost
# ~1 us instead of TBB's 5-15, and the thresholds dropped from 1 << 21 multiply-adds and 1 << 15
# elements to 1 << 17 and 1 << 11: MobileNetV3-Large 0.96-0.97 (serial steps 18 -> 14), YOLOv8n
# 0.98 (26 -> 5), EfficientNet-B0 and ResNet-18 unchanged, same process, bitwise equal; beside a
# busy loop at nice 10, 0.98-1.0.
SERIAL_MACS = 1 << 17
SERIAL_ELEMS = 1 << 11


def serial(macs, elems):
    """Whether ``macs`` multiply-adds over ``elems`` elements (the most a step reads or writes:
    its outputs, or its input where that is bigger) are too little work to wake the thread pool
    for.  Both must be small: a depthwise layer does 9-25 multiply-adds per output and is bound
    by its loads and stores, so its time follows the elements it moves (MobileNetV3's 3x3 layer
    on 72x56x56, 2.0 M multiply-adds, took 0.24 ms on one thread; a stride-2 one reads four
    inputs an output: MobileNetV2's 144x56x56 -> 28x28, 113 k outputs, took 0.14 ms alone
    against 0.06 on two threads, and a global average pool reads a whole map a value)."""
    return macs < SERIAL_MACS and elems < SERIAL_ELEMS
