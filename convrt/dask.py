"""Batch inference over a dask array: ``convrt.dask.predict(model, x)`` (``pip install
convrt[dask]``).

Why it is shaped this way:

* **One session per worker process, not per task.**  A task carries the model's *path* (a short
  string) or a key of the dask graph that holds its *bytes* (sent to each worker once, like any
  other dependency), never a pickled session.  The worker builds the session on its first chunk
  and keeps it in a module-level cache keyed by the model's identity and the options, so later
  chunks, and later ``compute()`` calls with the same model, reuse its plans and kernels.
* **Threads per task are explicit** (``threads=1`` by default): a dask worker runs as many tasks
  at once as it has threads, and numba ignores ``OMP_NUM_THREADS``, so each session is told how
  many kernel threads it may use.  Workers x threads per worker x ``threads`` should not exceed
  the cores.
* **Everything is declared up front**: the model is loaded on the client (a bad model, or an
  input whose shape or dtype does not fit it, fails at ``predict()``), and the result's chunks,
  dtype and ``meta`` come from the model's output shape, so nothing runs until ``compute()``.

``import dask`` below is the real dask: Python 3 imports are absolute, so this module's own name
does not shadow it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

import numpy as np

from convrt.errors import ConvrtError, InputError, ModelLoadError

__all__ = ["predict"]

CACHE_SIZE = 4  # sessions a worker keeps (models x option sets): a long-lived worker may see many
_SESSIONS: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def _import_dask():
    try:
        import dask.array as da
    except ImportError as e:
        raise ConvrtError(f"convrt.dask needs dask: pip install 'convrt[dask]' ({e})") from None
    return da


def model_ref(model) -> tuple[str, object]:
    """``(key, payload)`` for a model path or bytes: the payload is what a task carries (the
    absolute path, or the bytes), the key names the model in the worker's session cache.

    A path is made absolute on the client (a worker's working directory may differ) and keyed
    with its size and modification time, so an edited file is not served from a stale cache."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        return "bytes:" + hashlib.sha256(data).hexdigest(), data
    if isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(model))
        try:
            st = os.stat(path)
        except OSError as e:
            raise ModelLoadError(f"{os.fspath(model)}: cannot read the model ({e.strerror})") \
                from None
        return f"path:{path}:{st.st_size}:{st.st_mtime_ns}", path
    raise InputError(f"model must be a path or the model's bytes, got {type(model).__name__}")


def cached_session(key: str, payload, threads: int):
    """The worker's session for model ``key`` with ``threads`` kernel threads (built once)."""
    import socket

    import convrt

    ck = (key, threads)
    with _LOCK:  # a worker with several threads must not build the same session twice
        sess = _SESSIONS.get(ck)
        if sess is not None:
            _SESSIONS.move_to_end(ck)
            return sess
        if isinstance(payload, str) and not os.path.isfile(payload):
            raise ModelLoadError(f"model {payload!r} exists on the client but not on worker "
                                 f"{socket.gethostname()} (pid {os.getpid()}): pass the model's "
                                 "bytes, or a path every worker can read")
        opts = convrt.SessionOptions(intra_op_num_threads=threads)
        sess = convrt.InferenceSession(payload, opts)
        _SESSIONS[ck] = sess
        while len(_SESSIONS) > CACHE_SIZE:
            _SESSIONS.popitem(last=False)
        return sess


def run_batch(sess, x, input_name: str, output_index: int, where: str) -> np.ndarray:
    """One batch through ``sess``; a convrt error names the batch's position (``where``)."""
    try:
        return sess.run(None, {input_name: np.asarray(x)})[output_index]
    except ConvrtError as e:
        raise type(e)(f"{where}: {e}") from None


def _where(block_id, location) -> str:
    start, stop = location
    return f"batch {block_id} (rows {start}-{stop - 1})"


def _predict_block(x, payload, key, threads, input_name, output_index, block_info=None):
    info = block_info[0]
    sess = cached_session(key, payload, threads)
    return run_batch(sess, x, input_name, output_index,
                     _where(info["chunk-location"][0], info["array-location"][0]))


def describe(sess, output=None):
    """What a batch run needs to know about a session's model: ``(input_name, input_shape,
    input_dtype, output_index, output_shape, output_dtype)``.  Shapes are the declared ones (a
    str or None for a symbolic dim)."""
    ins = sess.get_inputs()
    if len(ins) != 1:
        raise InputError(f"batch inference needs a model with one input, this one has "
                         f"{len(ins)}: {', '.join(a.name for a in ins)}")
    outs = sess.get_outputs()
    names = [a.name for a in outs]
    if output is None:
        k = 0
    elif isinstance(output, int) and not isinstance(output, bool) and 0 <= output < len(outs):
        k = output
    elif output in names:
        k = names.index(output)
    else:
        raise InputError(f"output {output!r}: the model's outputs are {', '.join(names)}")
    dtype = lambda name: np.dtype(sess.graph.values[name].dtype)  # noqa: E731
    return (ins[0].name, list(ins[0].shape), dtype(ins[0].name), k, list(outs[k].shape),
            dtype(names[k]))


def check_input(shape, dtype, in_shape, in_dtype, name: str, what: str = "x") -> None:
    """A one-line InputError unless an input of ``shape``/``dtype`` fits the model's input."""
    if len(shape) != len(in_shape):
        raise InputError(f"{what}: shape {tuple(shape)} has {len(shape)} dims, model input "
                         f"{name!r} has {len(in_shape)}: {_fmt(in_shape)}")
    for i, (d, m) in enumerate(zip(shape, in_shape)):
        if i and isinstance(m, int) and d != m:
            raise InputError(f"{what}: shape {tuple(shape)} does not fit model input {name!r} "
                             f"{_fmt(in_shape)} (dim {i} is {d}, expected {m})")
    if np.dtype(dtype) != in_dtype:
        raise InputError(f"{what}: dtype {np.dtype(dtype)} does not fit model input {name!r} "
                         f"({in_dtype})")


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def row_shape(out_shape, name: str = "output") -> tuple[int, ...]:
    """An output's shape past the batch axis, which must be declared (known before running)."""
    rest = out_shape[1:]
    if not out_shape or not all(isinstance(d, int) for d in rest):
        raise InputError(f"{name}: declared shape {_fmt(out_shape)} has unknown non-batch "
                         "dims, so the result's chunks cannot be declared before running")
    return tuple(rest)


def predict(model, x, *, output=None, threads: int = 1, batch_size: int | None = None):
    """Run ``model`` over the dask array ``x`` (first axis = batch), lazily.

    Args:
        model: an .onnx path every worker can read (made absolute here), or the model's bytes
            (put in the task graph once; each worker fetches them once).
        x: a dask array (a numpy array is wrapped) of the model input's shape and dtype.
        output: the output's name or index (default: the first).
        threads: kernel threads of each worker's session (see module docstring).
        batch_size: rows per task (the batch axis is rechunked to it); default: x's chunks.

    Returns:
        A dask array of the output, chunked like ``x``'s batch axis; ``compute()`` runs it.  A
        convrt error in a task is raised on the client with the batch's position in front.
    """
    da = _import_dask()
    import dask

    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    import convrt

    key, payload = model_ref(model)
    # loaded on the client too: a bad model or input fails here, and the output is declared
    sess = convrt.InferenceSession(payload, convrt.SessionOptions(intra_op_num_threads=1))
    in_name, in_shape, in_dtype, k, out_shape, out_dtype = describe(sess, output)
    if not isinstance(x, da.Array):
        x = da.asarray(x)
    check_input(x.shape, x.dtype, in_shape, in_dtype, in_name)
    rest = row_shape(out_shape)
    x = x.rechunk({0: batch_size or x.chunks[0], **{i: -1 for i in range(1, x.ndim)}})
    if isinstance(payload, bytes):  # one graph key holds the bytes: each worker fetches it once
        payload = dask.delayed(payload, pure=True, name="convrt-model-" + key[6:])
    out_chunks = (x.chunks[0],) + tuple((d,) for d in rest)
    return da.map_blocks(
        _predict_block, x, payload, key, threads, in_name, k,
        chunks=out_chunks, drop_axis=list(range(1, x.ndim)),
        new_axis=list(range(1, 1 + len(rest))) or None, dtype=out_dtype,
        meta=np.empty((0,) * (1 + len(rest)), out_dtype), token="convrt-predict")
