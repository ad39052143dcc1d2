"""``convrt predict MODEL INPUT -o OUT.npy``: a model over a whole .npy file of inputs.

Engines: ``local`` (one session in this process, batches streamed from the memory-mapped input
into the memory-mapped output), ``dask`` (:func:`convrt.dask.predict`) and ``ray``
(:class:`convrt.ray.Predictor` in an actor pool).  dask and ray start a local cluster of
``--workers`` single-threaded processes unless ``--address`` names a running one.

Why everything is checked before a cluster starts: a cluster takes seconds to start, so a wrong
input file (shape, dtype, not a .npy) or an unwritable output must fail in a moment, as one line.
Results are written on the client as they arrive, so the output never has to fit in memory
twice and the remote engines give the same file as the local one.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from convrt.errors import ConvrtError, InputError

DEFAULT_BATCH = 64


def _progress(total: int, desc: str):
    """A tqdm bar on stderr (only on a terminal), or a stand-in without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        class _Null:
            def update(self, n): pass
            def close(self): pass
        return _Null()
    return tqdm(total=total, desc=desc, unit="img", disable=None, file=sys.stderr)


def _open_output(path: str, shape, dtype):
    try:
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))
    except OSError as e:
        raise InputError(f"-o {path}: cannot write ({e.strerror})") from None


def _load_input(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        msg = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        raise InputError(f"input {path}: cannot read as .npy ({msg})") from None


def run(args) -> int:
    """The ``convrt predict`` handler (cli.py parses the arguments)."""
    import convrt
    from convrt.dask import check_input, describe, row_shape

    engine = args.engine
    if engine == "local" and (args.workers is not None or args.address):
        raise InputError("--workers and --address are for --engine dask or ray")
    if args.workers is not None and args.address:
        raise InputError("--workers starts a local cluster; with --address the cluster is given")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise InputError(f"-o {args.output}: no directory {out_dir}")
    x = _load_input(args.input)
    threads = args.threads or (0 if engine == "local" else 1)
    sess = convrt.InferenceSession(args.model, convrt.SessionOptions(intra_op_num_threads=threads))
    in_name, in_shape, in_dtype, k, out_shape, out_dtype = describe(sess, args.output_name)
    check_input(x.shape, x.dtype, in_shape, in_dtype, in_name, what=f"input {args.input}")
    rest = row_shape(out_shape, f"output {out_shape!r}") if engine != "local" else None
    n, bs = x.shape[0], args.batch_size
    t0 = time.perf_counter()
    if engine == "local":
        _local(sess, x, in_name, k, bs, args.output)
    elif engine == "dask":
        del sess
        _dask(args, x, rest, out_dtype, threads, bs)
    else:
        del sess
        _ray(args, x, rest, out_dtype, threads, bs)
    dt = time.perf_counter() - t0
    print(f"wrote {args.output}: {n} inputs in {dt:.2f} s ({n / dt:.1f}/s, engine {engine})")
    return 0


def _local(sess, x, in_name, k, bs, path) -> None:
    from convrt.dask import run_batch

    out = None
    bar = _progress(len(x), "predict")
    try:
        for b, i in enumerate(range(0, len(x), bs)):
            rows = np.ascontiguousarray(x[i:i + bs])
            y = run_batch(sess, rows, in_name, k, f"batch {b} (rows {i}-{i + len(rows) - 1})")
            if out is None:
                out = _open_output(path, (len(x),) + y.shape[1:], y.dtype)
            out[i:i + len(rows)] = y
            bar.update(len(rows))
    finally:
        bar.close()
    if out is None:  # an empty input: an empty output of the declared shape
        y = sess.run(None, {in_name: np.ascontiguousarray(x[:0])})[k]
        out = _open_output(path, y.shape, y.dtype)
    out.flush()


def _dask(args, x, rest, dtype, threads, bs) -> None:
    import dask.array as da
    from distributed import Client, LocalCluster, as_completed

    import convrt.dask

    cluster = None
    if not args.address:
        cluster = LocalCluster(n_workers=args.workers or _default_workers(), threads_per_worker=1,
                               processes=True, dashboard_address=None, silence_logs=40)
    try:
        with Client(args.address or cluster) as client:
            # np.asarray: a plain ndarray view of the memory map, which dask slices per chunk
            xa = da.from_array(np.asarray(x), chunks=(bs,) + x.shape[1:])
            y = convrt.dask.predict(args.model, xa, output=args.output_name, threads=threads)
            starts = np.cumsum((0,) + y.chunks[0])
            blocks = list(y.to_delayed().ravel())
            out = _open_output(args.output, (len(x),) + rest, dtype)
            bar = _progress(len(x), "predict (dask)")
            futures = client.compute(blocks)
            where = {f.key: i for i, f in enumerate(futures)}
            try:
                for fut, res in as_completed(futures, with_results=True):
                    i = where[fut.key]
                    out[starts[i]:starts[i + 1]] = res
                    bar.update(len(res))
                    fut.release()
            finally:
                bar.close()
            out.flush()
    finally:
        if cluster is not None:
            cluster.close()


def _ray(args, x, rest, dtype, threads, bs) -> None:
    import pyarrow as pa
    import ray
    from ray.data.extensions import ArrowTensorArray

    import convrt.ray

    started = False
    if not ray.is_initialized():
        if args.address:
            ray.init(address=args.address, log_to_driver=False)
        else:
            ray.init(num_cpus=args.workers or _default_workers(), include_dashboard=False,
                     log_to_driver=False)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts images; Ray's would interleave with it
        workers = int(ray.cluster_resources().get("CPU", 1)) // threads or 1
        # one Arrow block per batch: the row numbers travel with the pixels, so results are
        # written where they belong whatever order they come back in, and errors name rows
        blocks = [pa.table({"row": np.arange(i, min(i + bs, len(x))),
                            "data": ArrowTensorArray.from_numpy(np.ascontiguousarray(x[i:i + bs]))})
                  for i in range(0, len(x), bs)]
        ds = ray.data.from_arrow(blocks).map_batches(
            convrt.ray.Predictor, batch_size=bs, batch_format="numpy", num_cpus=threads,
            fn_constructor_kwargs={"model": os.path.abspath(args.model), "threads": threads,
                                   "output": args.output_name, "index_column": "row"},
            compute=ray.data.ActorPoolStrategy(size=workers))
        out = _open_output(args.output, (len(x),) + rest, dtype)
        bar = _progress(len(x), "predict (ray)")
        try:
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                out[batch["row"]] = batch["output"]
                bar.update(len(batch["row"]))
        except ConvrtError:
            raise
        except Exception as e:
            err = convrt.ray.convrt_error(e)
            if err is None:
                raise
            raise err from None
        finally:
            bar.close()
        out.flush()
    finally:
        if started:
            ray.shutdown()


def _default_workers() -> int:
    from convrt.cli_support import usable_cpus

    return usable_cpus()
