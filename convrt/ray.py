"""Batch inference on Ray Data: ``ds.map_batches(convrt.ray.Predictor, ...)`` (``pip install
convrt[ray]``).

    ds.map_batches(Predictor, fn_constructor_kwargs={"model": "model.onnx"},
                   batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)

Why a callable class: Ray builds it once per actor, so the model is loaded and planned once per
actor and every batch reuses the session.  Why ``threads=None`` reads Ray's assignment: Ray sets
``OMP_NUM_THREADS`` for an actor, but numba ignores it, so without an explicit count each actor's
kernels would start one thread per core of the machine and N actors would oversubscribe it N
times.  Ray itself is imported only inside the actor (``convrt.ray`` imports without it).
"""

from __future__ import annotations

import os

import numpy as np

from convrt.errors import ConvrtError, InputError

__all__ = ["Predictor", "assigned_cpus"]


def assigned_cpus() -> int:
    """The CPUs Ray gave this actor or task (rounded down, at least 1); outside Ray, or when Ray
    says nothing, the CPUs this process may run on."""
    try:
        import ray

        if ray.is_initialized():
            n = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if n:
                return max(1, int(n))
    except ImportError:
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Predictor:
    """Runs ``model`` over numpy batches (``batch_format="numpy"``: a dict of column arrays).

    Args:
        model: an .onnx path the actors can read, or the model's bytes.
        input_column: the column fed to the model's one input.
        output_column: the column the model's output is written to.
        threads: kernel threads of the session; None = the CPUs Ray assigned the actor
            (``num_cpus=`` of ``map_batches``).
        output: the model output's name or index (default: the first).
        index_column: a column of row numbers; when given, an error names the batch's rows.

    Returns (per batch): the batch's columns without ``input_column`` (the pixels are the bulk
    of the data and rarely wanted back; ids and labels pass through) plus ``output_column``.
    """

    def __init__(self, model, input_column: str = "data", output_column: str = "output",
                 threads: int | None = None, output=None, index_column: str | None = None):
        import convrt
        from convrt.dask import describe

        if isinstance(model, (str, os.PathLike)) and not os.path.isfile(model):
            raise convrt.ModelLoadError(f"model {os.fspath(model)!r} is not a file on this "
                                        f"worker (pid {os.getpid()}, cwd {os.getcwd()}): pass "
                                        "the model's bytes, or a path every worker can read")
        self.threads = assigned_cpus() if threads is None else threads
        self.input_column, self.output_column = input_column, output_column
        self.index_column = index_column
        self.session = convrt.InferenceSession(
            model, convrt.SessionOptions(intra_op_num_threads=self.threads))
        self.input_name, *_, self.output_index, _, _ = describe(self.session, output)

    def __call__(self, batch: dict) -> dict:
        from convrt.dask import run_batch

        if self.input_column not in batch:
            raise InputError(f"batch has no column {self.input_column!r} (columns: "
                             f"{', '.join(batch)})")
        x = batch[self.input_column]
        where = f"batch of {len(x)} rows"
        if self.index_column is not None and len(x):
            rows = np.asarray(batch[self.index_column])
            where = f"batch (rows {rows.min()}-{rows.max()})"
        if x.dtype == object:  # rows of different shapes: Ray hands over an array of arrays
            raise InputError(f"{where}: rows of column {self.input_column!r} differ in shape")
        y = run_batch(self.session, x, self.input_name, self.output_index, where)
        out = {k: v for k, v in batch.items() if k != self.input_column}
        out[self.output_column] = y
        return out


def _is_convrt_error(e: BaseException) -> ConvrtError | None:
    """The ConvrtError behind a Ray exception (Ray wraps a task's error, sometimes twice)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ConvrtError):
            return e
        e = getattr(e, "cause", None) or e.__cause__
    return None


def convrt_error(e: BaseException) -> ConvrtError | None:
    """The ConvrtError a Ray task raised, or None.  Ray Data reports a failed batch as a
    ``UserCodeException`` whose chain no longer holds the original exception, only its
    traceback text, so the last ``convrt.errors.<Type>: message`` line is read back from it."""
    import re

    import convrt.errors as errors

    found = _is_convrt_error(e)
    if found is not None:
        return found
    hits = re.findall(r"convrt\.errors\.(\w+): (.*)", str(e))
    if hits:
        name, msg = hits[-1]
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, ConvrtError):
            return cls(msg.strip())
    return None
