"""A session's weights that live on only in packed form: released, and restored on demand.

Why: a convolution kernel packs its weights into its own layout once per session (the pack
cache, ops/registry.py) and never reads the original again.  Keeping the original resident as
well held every packed layer's weights twice (VGG-16: 59 MB, ResNet-18: 44 MB).  While a plan
is built, each weight that one node alone reads is released as soon as that node's kernel has
packed it (``ops/infer.py``), so the originals and the packed copies of a whole model are never
resident together (ResNet-18's load peaked 43 MiB over its steady state when they were released
only after the whole plan); after the plan, the session releases the rest of the constants that
only such kernels read (``Plan.packed_consts``).  ``Value.release`` drops the array, and
planning another batch size sees a stand-in (convrt/ir/released.py) and finds the packed copies
in the cache.  A first-tier plan (runtime/tiers.py) reads the weights unpacked: it is built
inside ``restored()``.

Reading ``Value.const`` of a released weight restores it, bit for bit, so every reader keeps
working (another packing, ``optimized_model_filepath``, pickling, ``convrt optimize``):

* an initializer whose array is still the one read from the model file is read again from its
  recorded span (``onnx_io/origin.py``: pread, no mmap, the file's stamp checked first);
* anything else (a weight the passes derived, BatchNormalization folded into it; a model given
  as bytes or a ModelProto) is restored by loading the source again and running the same
  passes, which are deterministic, and taking the value of the same name.

A model file changed or deleted since the session loaded it cannot give its weights back: that
is a one-line ModelLoadError at the read that needs them, never a wrong weight or a SIGBUS.
Runs and new plans never need them.  ``restored()`` brings all released weights back at once
(one reload at most) for writers that read every weight.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from .compiler import load, optimize
from .errors import InputError, ModelLoadError
from .ir import Graph, Value, copy_graph


class ReleasedWeights:
    """Releases ``graph``'s packed-only constants and restores them (see the module doc).

    Args:
        graph: the session's optimized graph.
        reload: loads the unoptimized source model again (``reloader``).
        level, disabled: the passes the session ran, to derive the same weights again.
    """

    def __init__(self, graph: Graph, reload, level: str, disabled: tuple):
        self.graph, self._reload, self._level, self._disabled = graph, reload, level, disabled
        self._lock = threading.RLock()
        self._derived: Graph | None = None  # a reloaded, optimized graph, inside ``restored``
        self._from_file: set[str] = set()  # released names the file has verbatim
        self.released_bytes = 0

    def release(self, names) -> int:
        """Release the constants called ``names`` that the session's graph does not expose
        (graph inputs are overridable, outputs are returned); returns the bytes released."""
        g, origin, done = self.graph, self.graph.origin, 0
        with self._lock:
            for name in names:
                v = g.initializers.get(name)
                if v is None or v._const is None or v in g.inputs or v in g.outputs:
                    continue
                if origin is not None and origin.holds(name, v._const):
                    self._from_file.add(name)
                done += v._const.nbytes
                v.release(self._restore)
            self.released_bytes += done
        return done

    def _restore(self, v: Value) -> np.ndarray:
        """The released data of ``v`` (``Value.const`` calls this)."""
        with self._lock:
            if v.name in self._from_file:
                arr = self.graph.origin.read(v.name, v.shape, v.dtype)
            else:
                arr = self._derive(v)
            self.released_bytes -= arr.nbytes
            return arr

    def _derive(self, v: Value) -> np.ndarray:
        g = self._derived
        if g is None:
            g = self._optimized_source()
        w = g.values.get(v.name)
        arr = None if w is None else w.const
        if arr is None or tuple(arr.shape) != tuple(v.shape) or arr.dtype != v.dtype:
            raise ModelLoadError(f"{self.graph.source}: cannot restore the released weight "
                                 f"'{v.name}': the reloaded model differs")
        return arr

    def _optimized_source(self) -> Graph:
        """The source model optimized as the session's was (a copy: ``reload`` may return the
        same unoptimized graph every time, which fetches share)."""
        g = copy_graph(self._reload())
        optimize(g, self._level, self._disabled)
        return g

    @contextlib.contextmanager
    def restored(self):
        """Every released weight resident within (one reload at most), released again after."""
        with self._lock:
            names = [n for n, v in self.graph.initializers.items() if v.released]
            derive = any(n not in self._from_file for n in names)
            if derive:
                self._derived = self._optimized_source()
            try:
                for n in names:
                    self.graph.initializers[n].const  # noqa: B018  (restores it)
            finally:
                self._derived = None
        try:
            yield
        finally:
            self.release(names)


def reloader(src, base_dir, budget, graph: Graph):
    """The unoptimized graph again, when called (for fetches and released weights).

    A path is loaded again, checked first to be the file the session loaded (same size and
    modification time): a changed file would give values of another model.  For bytes and a
    ModelProto, a structural copy of the loaded ``graph`` is kept instead (``copy_graph``: its
    weight arrays are the loaded ones, shared with the optimized graph wherever the passes kept
    them).  Why not hold the caller's object: a session would then hold a bytes model twice,
    the bytes beside the arrays read from them, for as long as it lives (VGG-16: 528 MB more).
    """
    if not isinstance(src, (str, os.PathLike)):
        original = copy_graph(graph)
        return lambda: original

    def stamp():
        try:
            st = os.stat(src)
            return st.st_size, st.st_mtime_ns
        except OSError:
            return None

    loaded = stamp()

    def again() -> Graph:
        if stamp() != loaded:
            raise InputError(f"{os.fspath(src)}: the model file changed or went away since the "
                             "session was created; create a new session to fetch intermediate "
                             "values")
        return load(src, base_dir, budget)
    return again
