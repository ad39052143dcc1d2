"""Batch inference on real local clusters (issue #18): dask.distributed with 2 worker processes x
1 thread, Ray with 2 CPUs and an actor pool of 2; `convrt predict` on every engine; pickling.

One cluster of each kind per module (start-up costs seconds); no mocks.
"""

from __future__ import annotations

import gc
import os
import pickle
import shutil

import numpy as np
import pytest

import convrt

MODEL = os.path.join(os.path.dirname(__file__), "..", "sample_models", "small_vgg.onnx")
N = 100


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((N, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def ref(x):
    sess = convrt.InferenceSession(MODEL)
    return sess.run(None, {"input": x})[0]


def close(y, ref):
    return np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


# -- pickling ----------------------------------------------------------------------------------
def test_session_pickle_round_trip(x, ref):
    opts = convrt.SessionOptions(intra_op_num_threads=1, disabled_optimizers=["fuse_conv_maxpool"])
    sess = convrt.InferenceSession(MODEL, opts)
    back = pickle.loads(pickle.dumps(sess))
    assert back.options == opts and back.options is not opts
    np.testing.assert_array_equal(back.run(None, {"input": x})[0],
                                  sess.run(None, {"input": x})[0])
    assert close(back.run(None, {"input": x})[0], ref)


# -- dask --------------------------------------------------------------------------------------
def test_dask_matches_local(client, x, ref):
    import dask.array as da

    import convrt.dask

    y = convrt.dask.predict(MODEL, da.from_array(x, chunks=(16, 3, 16, 32)), batch_size=32)
    assert y.shape == (N, 10) and y.dtype == np.float32 and y.chunks == ((32, 32, 32, 4), (10,))
    assert close(client.compute(y).result(), ref)
    with open(MODEL, "rb") as f:  # the model's bytes: one graph key, fetched once per worker
        y = convrt.dask.predict(f.read(), x, batch_size=25)
    assert close(y.compute(), ref)


def _probe(block, key, payload, threads):
    """In a worker: run a batch through the cached session, then report the threads numba
    used for it and the session's count."""
    import numba

    import convrt.dask

    sess = convrt.dask.cached_session(key, payload, threads)
    convrt.dask.run_batch(sess, block, "input", 0, "probe")
    return np.array([[numba.get_num_threads(), sess._threads, os.getpid()]])


@pytest.mark.parametrize("threads", [1, 2])
def test_dask_worker_uses_given_threads(client, x, threads):
    import dask.array as da

    import convrt.dask

    key, payload = convrt.dask.model_ref(MODEL)
    xa = da.from_array(x[:64], chunks=(8, 3, 32, 32))
    got = xa.map_blocks(_probe, key, payload, threads, chunks=(1, 3), drop_axis=[2, 3],
                        dtype=np.int64).compute()
    assert (got[:, 0] == threads).all() and (got[:, 1] == threads).all()
    assert len(set(got[:, 2])) == 2 and os.getpid() not in got[:, 2]  # both worker processes


def test_dask_bad_batch_names_its_rows(client, x):
    import dask
    import dask.array as da

    import convrt.dask

    good = da.from_array(x[:64], chunks=(32, 3, 32, 32))
    # declared float32, but the worker gets float64: only the worker can see it
    bad = da.from_delayed(dask.delayed(x[64:96].astype(np.float64)), (32, 3, 32, 32), np.float32)
    y = convrt.dask.predict(MODEL, da.concatenate([good, bad, good[:4]]))
    with pytest.raises(convrt.InputError, match=r"^batch 2 \(rows 64-95\): .*float64"):
        y.compute()


def test_dask_model_missing_on_worker(client, x, tmp_path):
    import convrt.dask

    path = tmp_path / "m.onnx"
    shutil.copy(MODEL, path)
    y = convrt.dask.predict(str(path), x[:8])  # loaded on the client to declare the output
    path.unlink()
    with pytest.raises(convrt.ModelLoadError, match="exists on the client but not on worker"):
        y.compute()


def test_dask_input_checked_before_scheduling(client):
    import convrt.dask

    with pytest.raises(convrt.InputError, match=r"dim 2 is 16, expected 32"):
        convrt.dask.predict(MODEL, np.zeros((4, 3, 16, 16), np.float32))
    with pytest.raises(convrt.InputError, match="dtype float64"):
        convrt.dask.predict(MODEL, np.zeros((4, 3, 32, 32)))


# -- ray ---------------------------------------------------------------------------------------
def _ray_rows(ray, x, rows=None):
    rows = range(len(x)) if rows is None else rows
    return ray.data.from_items([{"row": i, "data": x[i]} for i in rows])


def test_ray_matches_local_and_uses_assigned_cpus(ray_cluster, x, ref):
    import numba

    import convrt.ray

    class Probe(convrt.ray.Predictor):  # defined here: Ray ships it to the actors by value
        def __call__(self, batch):
            out = super().__call__(batch)
            out["threads"] = np.full(len(out["row"]), numba.get_num_threads())
            out["session_threads"] = np.full(len(out["row"]), self.threads)
            out["pid"] = np.full(len(out["row"]), os.getpid())
            return out

    ray = ray_cluster
    # both actors up before the first batch is handed out: on a loaded 2-core machine the
    # second one was still starting when the first had taken all seven batches.  Set before
    # the dataset is built: a dataset keeps a copy of the context it was made under.
    ctx = ray.data.DataContext.get_current()
    before, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 300
    try:
        ds = _ray_rows(ray, x).map_batches(
            Probe, fn_constructor_kwargs={"model": os.path.abspath(MODEL)}, batch_size=16,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1)
        rows = ds.take_all()
    finally:
        ctx.wait_for_min_actors_s = before
    y = np.empty_like(ref)
    for r in rows:
        y[r["row"]] = r["output"]
        assert "data" not in r  # the pixels are not sent back
    assert close(y, ref)
    assert {r["threads"] for r in rows} == {1} and {r["session_threads"] for r in rows} == {1}
    assert len({r["pid"] for r in rows}) == 2


def test_ray_bad_batch_names_its_rows(ray_cluster, x):
    import convrt.ray

    ray = ray_cluster
    xs = [xi.astype(np.float64) if 64 <= i < 80 else xi for i, xi in enumerate(x)]
    ds = ray.data.from_items([{"row": i, "data": xi} for i, xi in enumerate(xs)]).map_batches(
        convrt.ray.Predictor, batch_size=16, batch_format="numpy", num_cpus=1,
        fn_constructor_kwargs={"model": os.path.abspath(MODEL), "index_column": "row"},
        compute=ray.data.ActorPoolStrategy(size=2))
    with pytest.raises(Exception) as ei:
        ds.take_all()
    err = convrt.ray.convrt_error(ei.value)
    assert isinstance(err, convrt.InputError)
    assert str(err).startswith("batch (rows 64-79): ") and "float64" in str(err)
    # the failed run's two actors live until its executor is collected (the traceback holds
    # it), and hold both of the cluster's CPUs: the next test's actor waited ~17 s for them
    del ei, err, ds
    gc.collect()


def test_ray_model_missing_on_worker(ray_cluster, tmp_path):
    import convrt.ray

    ray = ray_cluster
    ds = ray.data.from_numpy(np.zeros((4, 3, 32, 32), np.float32)).map_batches(
        convrt.ray.Predictor, fn_constructor_kwargs={"model": str(tmp_path / "gone.onnx")},
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    with pytest.raises(Exception) as ei:
        ds.take_all()
    err = convrt.ray.convrt_error(ei.value)
    assert isinstance(err, convrt.ModelLoadError) and "not a file on this worker" in str(err)


# -- convrt predict ----------------------------------------------------------------------------
def test_cli_predict_same_npy_on_every_engine(client, ray_cluster, x, ref, tmp_path, capsys):
    from convrt.cli import main

    src = tmp_path / "x.npy"
    np.save(src, x)
    outs = {}
    for engine, extra in [("local", ["--threads", "2"] if convrt.cli_support.max_threads() >= 2
                           else []),
                          ("dask", ["--address", client.scheduler.address]),
                          ("ray", [])]:  # ray: the module's running instance is used
        out = tmp_path / f"y_{engine}.npy"
        assert main(["predict", MODEL, str(src), "-o", str(out), "--engine", engine,
                     "--batch-size", "24", *extra]) == 0
        outs[engine] = np.load(out)
    assert close(outs["local"], ref)
    np.testing.assert_array_equal(outs["dask"], outs["local"])
    np.testing.assert_array_equal(outs["ray"], outs["local"])
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["local", "dask", "ray"])
def test_cli_predict_bad_input_fails_first(engine, tmp_path, capsys):
    from convrt.cli import main

    src = tmp_path / "x.npy"
    np.save(src, np.zeros((10, 3, 16, 16), np.float32))
    out = tmp_path / "y.npy"
    assert main(["predict", MODEL, str(src), "-o", str(out), "--engine", engine]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "does not fit model input 'input'" in err and not out.exists()


def test_cli_predict_argument_errors(tmp_path, capsys):
    from convrt.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["predict", MODEL, "x.npy", "-o", "y.npy", "--batch-size", "0"])
    assert ei.value.code == 2
    assert main(["predict", MODEL, str(tmp_path / "none.npy"), "-o", "y.npy"]) == 1
    assert main(["predict", MODEL, "x.npy", "-o", "y.npy", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "cannot read as .npy" in err and "--workers and --address are for" in err
