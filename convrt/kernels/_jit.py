"""The one place numba options live.

Every kernel is compiled with ``cache=True`` (so a second process loads machine code from disk)
and without blanket ``fastmath=True``: NaN/Inf semantics are kept.  ``FAST`` is the narrow flag
set the convolution microkernels use (contraction into FMA, no signed-zero care); it leaves
``reassoc`` out on purpose, since that makes LLVM vectorize reductions the slow way;
``DOT_FAST`` adds it for the one kernel that wants it (``gemm.gemm_nt``).

numba turns SLP vectorization off by default; the conv microkernels need it, and numba's cache key
ignores it, so it is switched on here, before any kernel is compiled, for every process alike.

Threading layer: TBB, chosen here before numba starts its thread pool.  numba's default on Linux
without TBB is ``omp`` (GNU OpenMP), which (a) waits at every parallel region for each worker, so
when another process holds one core the whole network waits for the descheduled worker's next
time slice, and (b) kills a child process that is forked after a run ("fork() called from a
process already using GNU OpenMP, this is unsafe").  Measured on the 2-core AMD reference machine
(ResNet-18 b1, warm median, busy = a busy-loop process beside it, runtime at ``nice -n 10``):

    layer                          idle      busy, nice 10   fork after a run
    onnxruntime (reference)        17.7 ms    60.3 ms        runs
    omp                            18.4      422             child killed
    omp + OMP_WAIT_POLICY=PASSIVE  20.1       35.9           child killed
    tbb                            18.7       35.8           runs

TBB's work-stealing pool hands a stalled worker's chunks to the others, and it is fork- and
thread-safe.  The ``tbb`` wheel (a dependency) installs ``libtbb.so.12`` in ``<prefix>/lib``,
which the dynamic loader does not search, so numba would report TBB unavailable; loading the
library by path with ``RTLD_GLOBAL`` first makes numba's ``tbbpool`` extension link against it.
A user's own ``NUMBA_THREADING_LAYER`` (or a ``numba.config.THREADING_LAYER`` set before convrt
is imported, or a pool numba already started) is left alone.  Where TBB cannot be loaded, numba's
default is kept with ``OMP_WAIT_POLICY=PASSIVE`` (idle workers sleep instead of spinning, which
costs ~9 % idle but takes the 7x stall under contention away) and one warning says that forking
after a run is unsafe.
"""

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import site
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager

import numba
from numba.core import sigutils
from numba.core.caching import FunctionCache
from numba.core.compiler_lock import global_compiler_lock
from numba.core.dispatcher import Dispatcher

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process compile lock (each process compiles its own)
    fcntl = None

from ..errors import ConvrtError

numba.config.SLP_VECTORIZE = True  # before the first compile; see module docstring

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # convrt/
# Every file whose code or module-level constants numba compiles into a kernel: numba's cache
# checks only the stamp of the file that defines the called function, not of the helpers it
# inlines from other files (an edited epilogue kept running its old code) or the constants it
# froze (activation codes), and pip leaves the old cache files behind on an upgrade.
_COMPILED_SOURCES = ("kernels", os.path.join("train", "kernels"), "activations.py")
_NOT_COMPILED = (os.path.join("kernels", "first_tier.py"),)  # numpy only: not in the digest
STALE_SECONDS = 3600


def _source_digest() -> str:
    """A digest of the compiled sources and the numba options, naming the cache directory."""
    h = hashlib.sha256(f"{numba.__version__} SLP={numba.config.SLP_VECTORIZE}".encode())
    for rel in _COMPILED_SOURCES:
        top = os.path.join(_PKG, rel)
        paths = [top] if top.endswith(".py") else sorted(
            os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs if f.endswith(".py"))
        for path in paths:
            if os.path.relpath(path, _PKG) in _NOT_COMPILED:
                continue
            h.update(os.path.relpath(path, _PKG).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def _writable(path: str) -> bool:
    """Whether numba can keep its cache in ``path`` (created if missing)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.path.isdir(path) and os.access(path, os.W_OK)


def _cache_dir() -> str:
    """``<root>/<digest>``: a change to any compiled source (or an upgrade) starts a fresh cache
    instead of reusing stale machine code.  The root is the user's ``NUMBA_CACHE_DIR``, else
    ``convrt/__pycache__/numba`` (older digests there, unused for an hour, are deleted: no
    other tree uses them),
    else, for a read-only install, ``~/.cache/convrt/numba`` (numba's cache files are pickles,
    so the directory must be the user's own), else a new temporary directory.

    Each choice is checked for writing: numba itself, given a directory it cannot write,
    silently falls back to ``__pycache__`` beside each kernel file, a cache that is not keyed by
    the digest (the stale-helper problem above).  A user's ``NUMBA_CACHE_DIR`` that cannot be
    written gets one warning, then the next choice."""
    digest = _source_digest()
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        if _writable(os.path.join(user, digest)):
            return os.path.join(user, digest)
        warnings.warn(f"convrt: NUMBA_CACHE_DIR={user!r} is not a writable directory; caching "
                      "kernels in convrt's default place instead", RuntimeWarning, stacklevel=2)
    if os.access(_PKG, os.W_OK):
        root = os.path.join(_PKG, "__pycache__", "numba")
        if os.path.isdir(root):  # older digests: not while a process may still write them
            for old in os.listdir(root):
                path = os.path.join(root, old)
                try:
                    stale = old != digest and time.time() - os.path.getmtime(path) > STALE_SECONDS
                except OSError:  # another process deleted it first
                    continue
                if stale:
                    shutil.rmtree(path, ignore_errors=True)
        if _writable(os.path.join(root, digest)):
            return os.path.join(root, digest)
    home = os.path.join(os.path.expanduser("~"), ".cache", "convrt", "numba", digest)
    if _writable(home):
        return home
    return tempfile.mkdtemp(prefix=f"convrt-numba-{digest}-")


numba.config.CACHE_DIR = _cache_dir()

FAST = {"contract", "nsz"}  # a set: numba rejects frozensets
# gemm.py's dot products need ``reassoc`` on their reductions so LLVM can split them over vector
# lanes (without it each sum is a serial chain); NaN/Inf semantics are unaffected.  Only there:
# in the conv microkernels' loops it makes LLVM vectorise the wrong way (PERFORMANCE.md).
DOT_FAST = {"contract", "reassoc", "nsz"}

TBB_SONAME = "libtbb.so.12"
TBB_MIN_INTERFACE = 12060  # numba's own check: TBB 2021 update 6 or later

#: Why TBB was not loaded (None when it was, or when the user chose the layer).
tbb_problem: str | None = None


def _tbb_candidates() -> list[str]:
    """Where ``libtbb.so.12`` may be: the wheel's ``<prefix>/lib`` (venv, then base, then the
    user site), then whatever the loader itself finds."""
    dirs = [os.path.join(p, "lib") for p in (sys.prefix, sys.base_prefix)]
    user_base = getattr(site, "USER_BASE", None)
    if user_base:
        dirs.append(os.path.join(user_base, "lib"))
    found = [os.path.join(d, TBB_SONAME) for d in dict.fromkeys(dirs)
             if os.path.exists(os.path.join(d, TBB_SONAME))]
    by_loader = ctypes.util.find_library("tbb")
    if by_loader:
        found.append(by_loader)
    return found


def _load_tbb() -> str | None:
    """Load TBB globally and check numba can use it; None on success, else the reason."""
    if not sys.platform.startswith("linux"):
        return "only the Linux wheel layout is handled"
    candidates = _tbb_candidates()
    if not candidates:
        return f"{TBB_SONAME} not found (pip install 'tbb>=2021.6')"
    reason = ""
    for path in candidates:
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            version = lib.TBB_runtime_interface_version
            version.restype = ctypes.c_int
            if version() < TBB_MIN_INTERFACE:
                reason = f"{path}: TBB interface {version()} < {TBB_MIN_INTERFACE}"
                continue
            from numba.np.ufunc import tbbpool  # noqa: F401  (links against the library)
            return None
        except (OSError, AttributeError, ImportError) as e:
            reason = f"{path}: {e}"
    return reason


def _choose_threading_layer() -> None:
    """TBB unless the user chose a layer or numba's pool already runs (see module docstring)."""
    global tbb_problem
    from numba.np.ufunc import parallel

    if ("NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER != "default"
            or parallel._is_initialized):
        return
    tbb_problem = _load_tbb()
    if tbb_problem is None:
        numba.config.THREADING_LAYER = "tbb"
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when libgomp starts, not before
    warnings.warn(f"convrt: numba's TBB threading layer is unavailable ({tbb_problem}); using "
                  "its default (GNU OpenMP on Linux), where fork() after a run kills the child "
                  "and a busy core stalls every parallel kernel", RuntimeWarning, stacklevel=2)


_choose_threading_layer()


def _kernel_name(py_func) -> str:
    """``module.qualname`` of a kernel's Python function: how errors and lock files name it."""
    return f"{py_func.__module__}.{py_func.__qualname__}"


class CompileNeeded(ConvrtError):
    """Raised inside :func:`compile_fence` where a kernel is not in the on-disk cache: the
    caller asked to learn that instead of paying the compile (runtime/tiers.py).  A
    ConvrtError so that ``Plan.run`` passes it through as it is."""


_FENCE = threading.local()
_lookups = 0  # disk-cache lookups so far (each one a load or a compile): see cache_lookups


def cache_lookups() -> int:
    """How many times a convrt kernel was looked up in the on-disk cache in this process (once
    per kernel and signature: then loaded, or compiled).  A change tells the session that numba
    loaded or compiled something, and left its garbage behind (api._warm_up)."""
    return _lookups


@contextmanager
def compile_fence():
    """Within this block (this thread only), a convrt kernel that would compile raises
    :class:`CompileNeeded` instead: loading from memory or from the disk cache goes on.

    Why: a session learns whether its plan's kernels are all cached by running it once, at no
    compile cost when they are not (numba asks the cache before compiling, ``load_overload``)."""
    old = getattr(_FENCE, "on", False)
    _FENCE.on = True
    try:
        yield
    finally:
        _FENCE.on = old


class _SafeCache(FunctionCache):
    """numba's on-disk cache, made safe against bad files: a truncated, garbled or foreign
    cache file (a crash mid-write on a filesystem without atomic rename, a copied directory,
    another tool's files) makes numba's loader raise (UnpicklingError, EOFError...) out of the
    kernel call; here it is a cache miss, and the kernel is compiled.  An entry whose stored
    signature is not the one asked for (two processes that compiled different signatures of
    one kernel at once can both write index entry 1, the index of one and the code of the
    other surviving) is a miss too, instead of machine code for the wrong argument types.
    A save that fails (an unreadable index) removes that index and tries once more, else
    leaves the kernel uncached: the run goes on either way."""

    def load_overload(self, sig, target_context):
        global _lookups
        _lookups += 1
        cres = self._load(sig, target_context)
        if cres is None and getattr(_FENCE, "on", False):
            raise CompileNeeded(_kernel_name(self._py_func))
        return cres

    def _load(self, sig, target_context):
        try:
            cres = super().load_overload(sig, target_context)
        except Exception:  # noqa: BLE001  (any unreadable file: compile instead)
            return None
        want = sig.args if hasattr(sig, "args") else tuple(sig)
        if cres is not None and tuple(cres.signature.args) != tuple(want):
            return None
        return cres

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
            return
        except Exception:  # noqa: BLE001
            pass
        try:
            os.unlink(self._cache_file._index_path)
            super().save_overload(sig, data)
        except Exception:  # noqa: BLE001  (left uncached; the compiled kernel still runs)
            pass


#: How long a process waits for another one compiling the same kernel before compiling it too
#: (a compile takes seconds; a process stopped while holding the lock must not stop others).
LOCK_WAIT_SECONDS = 300.0
_held_locks: set[int] = set()  # this process's lock file descriptors, held or being taken


def _close_inherited_locks() -> None:
    """In a forked child: close the lock files inherited from the parent.  A flock belongs to
    the open file, which fork shares: the child's copy would keep the parent's lock held after
    the parent released it, and the child itself would wait on it."""
    for fd in list(_held_locks):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def lock_path(disp, args) -> str:
    """The lock file of kernel ``disp`` for argument types ``args``, beside its cache index."""
    key = f"{_kernel_name(disp.py_func)}{args}"
    return os.path.join(disp._cache.cache_path, hashlib.sha1(key.encode()).hexdigest()[:20]
                        + ".lock")


@contextmanager
def _compile_lock(disp, args):
    """Hold an exclusive lock on this kernel and signature across processes that share the
    cache, for the lookup, the compile and the save.

    Why: processes that start together on an empty cache (the test suite's two workers, the
    workers of a Dask or Ray pool, ``convrt warmup --jobs``) each compiled every kernel, though
    numba would have loaded the first one's result from disk.  With the lock the second
    process waits for the first one's compile, then loads it (numba looks in the cache before
    compiling).  The lock is ``flock`` on a file beside the kernel's cache index: released when
    the file is closed, or when the process dies.  Taken inside numba's compiler lock so that
    within a process the file locks nest along the call graph (caller, then callee), and two
    processes cannot wait on each other.  Within :func:`compile_fence` a kernel another
    process is compiling is a miss at once (a session starting then answers on the first tier
    instead of waiting).  Anything unusual (no ``fcntl``, a lock file that cannot be made, a
    wait over ``LOCK_WAIT_SECONDS``) means compiling without it."""
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(lock_path(disp, args),
                         os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            _held_locks.add(fd)
        except (OSError, AttributeError):  # no cache path, or one that cannot be written
            fd = None
    try:
        if fd is not None:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if getattr(_FENCE, "on", False):  # another process is compiling it: a miss
                        raise CompileNeeded(_kernel_name(disp.py_func)) from None
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                except OSError:  # a filesystem without flock
                    break
        yield
    finally:
        if fd is not None and fd in _held_locks:  # not closed by a fork's child handler
            _held_locks.discard(fd)
            os.close(fd)


def _locked_compile(disp):
    """``disp.compile`` under :func:`_compile_lock`, unless the signature is already in
    memory (numba calls ``compile`` each time it types a call to a kernel)."""
    compile_ = disp.compile

    def compile(sig):
        args, _ = sigutils.normalize_signature(sig)
        if tuple(args) in disp.overloads:
            return compile_(sig)
        with global_compiler_lock, _compile_lock(disp, tuple(args)):
            return compile_(sig)

    return compile


def _safe(obj):
    """Give a dispatcher (or the dispatchers a decorator factory makes) the safe cache, and
    the cross-process compile lock."""
    if isinstance(obj, Dispatcher):
        if type(obj._cache) is FunctionCache:
            obj._cache.__class__ = _SafeCache
            obj.compile = _locked_compile(obj)
        return obj
    return lambda fn: _safe(obj(fn))


def njit(*args, **kwargs):
    """``numba.njit`` with convrt's defaults (``cache=True``, the safe cache)."""
    kwargs.setdefault("cache", True)
    return _safe(numba.njit(*args, **kwargs))


def _install_pool() -> None:
    """kernels/_pool.py, installed once, compiled if it must be even inside
    :func:`compile_fence` (a kernel declared under the fence is linked later, and must find
    the pool in place).  Imported here, not at the top: its functions are cached in
    ``CACHE_DIR``, which this module sets when it is imported."""
    from . import _pool

    if _pool._installed or _pool.problem is not None:
        return
    old = getattr(_FENCE, "on", False)
    _FENCE.on = False
    try:
        _pool.install(_safe)
    finally:
        _FENCE.on = old


def pjit(*args, **kwargs):
    """A parallel kernel (``prange`` inside); same defaults as :func:`njit`.  The first one
    installs convrt's thread pool (kernels/_pool.py) before any parallel kernel is linked."""
    _install_pool()
    kwargs.setdefault("cache", True)
    kwargs.setdefault("parallel", True)
    return _safe(numba.njit(*args, **kwargs))
