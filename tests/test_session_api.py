"""The onnxruntime-shaped session API, checked against onnxruntime itself on the small VGG.

SessionOptions / RunOptions (onnxruntime's names, AttributeError for others), profiling to a
Chrome-trace file, optimized_model_filepath, get_modelmeta, get_overridable_initializers,
get_providers / get_provider_options.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import convrt

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "sample_models" / "small_vgg.onnx")
# SessionOptions fields that exist for onnxruntime code (convrt's own fields aside)
ORT_SESSION_FIELDS = ["intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level",
                      "log_severity_level", "enable_profiling", "profile_file_prefix",
                      "optimized_model_filepath", "execution_mode", "enable_cpu_mem_arena",
                      "enable_mem_pattern", "enable_mem_reuse", "log_verbosity_level", "logid",
                      "use_deterministic_compute"]
ORT_RUN_FIELDS = ["log_severity_level", "log_verbosity_level", "logid", "terminate",
                  "only_execute_path_to_fetches"]


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def sess():
    return convrt.InferenceSession(MODEL)


def _ort(model, **opts):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for k, v in opts.items():
        setattr(so, k, v)
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


# -- options --------------------------------------------------------------------------------
def test_session_options_have_onnxruntimes_names_and_no_others():
    so, oso = convrt.SessionOptions(), ort.SessionOptions()
    for name in ORT_SESSION_FIELDS:
        assert hasattr(oso, name), name  # the name is onnxruntime's
        setattr(so, name, getattr(so, name))  # and convrt accepts it
    for name in ("disabled_optimizers", "memory_budget"):  # convrt's own, kept
        assert hasattr(so, name)
    with pytest.raises(AttributeError):
        so.enable_profilling = True  # misspelt: onnxruntime raises AttributeError too
    with pytest.raises(AttributeError):
        oso.enable_profilling = True
    with pytest.raises(TypeError):
        convrt.SessionOptions(intra_op_threads=2)
    assert (so.enable_profiling, so.profile_file_prefix, so.optimized_model_filepath) == \
        (False, "convrt_profile", "")
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(convrt.InputError):
        so.get_session_config_entry("no.such.key")


def test_ignored_options_do_not_change_results(x, sess):
    so = convrt.SessionOptions(execution_mode=convrt.ExecutionMode.ORT_PARALLEL,
                               enable_cpu_mem_arena=False, enable_mem_pattern=False,
                               log_verbosity_level=3, logid="mine")
    (y,) = convrt.InferenceSession(MODEL, so).run(None, {"input": x})
    np.testing.assert_array_equal(y, sess.run(None, {"input": x})[0])


def test_run_options(x, sess):
    ro, oro = convrt.RunOptions(), ort.RunOptions()
    for name in ORT_RUN_FIELDS:
        assert hasattr(oro, name), name
        assert getattr(ro, name) == getattr(oro, name), name  # onnxruntime's defaults
    with pytest.raises(AttributeError):
        ro.tag = "x"  # not onnxruntime's either (its run tag is logid)
    with pytest.raises(AttributeError):
        oro.tag = "x"
    assert convrt.RunOptions is convrt.runtime.RunOptions
    ro.logid = "run-1"
    (y,) = sess.run(None, {"input": x}, ro)
    np.testing.assert_array_equal(y, sess.run(None, {"input": x})[0])
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    assert ro.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"


def test_run_options_terminate_refuses_the_run(x, sess):
    ro = convrt.RunOptions()
    ro.terminate = True
    with pytest.raises(convrt.InputError) as ei:
        sess.run(None, {"input": x}, ro)
    assert "terminate" in str(ei.value) and "\n" not in str(ei.value)
    oro = ort.RunOptions()
    oro.terminate = True
    with pytest.raises(Exception, match="terminate"):  # onnxruntime refuses it as well
        _ort(MODEL).run(None, {"input": x}, oro)
    with pytest.raises(convrt.InputError, match="RunOptions"):
        sess.run(None, {"input": x}, {"terminate": False})


# -- profiling ------------------------------------------------------------------------------
def test_profiling_writes_one_event_per_executed_node(x, tmp_path):
    so = convrt.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "vgg")
    s = convrt.InferenceSession(MODEL, so)
    steps = []
    y1 = s.run(None, {"input": x}, profile=steps)[0]  # the caller's list is filled too
    y2 = s.run(None, {"input": x})[0]
    np.testing.assert_array_equal(y1, y2)
    name = s.end_profiling()
    assert Path(name).parent == tmp_path and Path(name).name.startswith("vgg_")
    assert name.endswith(".json") and Path(name).is_file()
    events = json.loads(Path(name).read_text())
    assert isinstance(events, list)  # onnxruntime's profile files are event lists too
    nodes = [e for e in events if e.get("ph") == "X" and e["cat"] != "Session"]
    assert steps and len(nodes) == 2 * len(steps)
    assert [e["name"] for e in nodes] == [st[0] for st in steps] * 2
    assert [e["args"]["op_type"] for e in nodes] == [st[1] for st in steps] * 2
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in nodes)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    assert len(runs) == 2
    for run, part in zip(runs, (nodes[:len(steps)], nodes[len(steps):]), strict=True):
        # every node event lies inside its run's event (1 us of rounding)
        assert all(run["ts"] - 1 <= e["ts"] and e["ts"] + e["dur"] <= run["ts"] + run["dur"] + 1
                   for e in part)
    assert next(e["name"] for e in events if e.get("cat") == "Session") == \
        "session_initialization"
    # onnxruntime: profiling stops; a second call and runs after it write nothing
    s.run(None, {"input": x})
    assert s.end_profiling() == ""
    assert [p.name for p in tmp_path.iterdir()] == [Path(name).name]


def test_no_profiling_no_file(x, tmp_path):
    so = convrt.SessionOptions(profile_file_prefix=str(tmp_path / "p"))
    s = convrt.InferenceSession(MODEL, so)
    s.run(None, {"input": x})
    assert s.end_profiling() == ""
    assert list(tmp_path.iterdir()) == []
    assert _ort(MODEL).end_profiling() == ""


def test_profile_file_unwritable_is_one_line(tmp_path):
    so = convrt.SessionOptions(enable_profiling=True,
                               profile_file_prefix=str(tmp_path / "no" / "dir" / "p"))
    s = convrt.InferenceSession(MODEL, so)
    with pytest.raises(convrt.InputError) as ei:
        s.end_profiling()
    assert "\n" not in str(ei.value) and "profile" in str(ei.value)


# -- optimized_model_filepath ---------------------------------------------------------------
def test_optimized_model_file_runs_in_onnxruntime(x, tmp_path):
    path = tmp_path / "small_vgg.opt.onnx"
    so = convrt.SessionOptions()
    so.optimized_model_filepath = str(path)
    s = convrt.InferenceSession(MODEL, so)
    (want,) = s.run(None, {"input": x})
    written = onnx.load(str(path))
    onnx.checker.check_model(written)
    assert len(written.graph.node) == len(s.graph.nodes) < s.unoptimized_node_count
    (got,) = _ort(str(path)).run(None, {"input": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    (ref,) = _ort(MODEL).run(None, {"input": x})
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_optimized_model_file_unwritable_is_one_line(tmp_path):
    so = convrt.SessionOptions(optimized_model_filepath=str(tmp_path / "no" / "x.onnx"))
    with pytest.raises(convrt.InputError) as ei:
        convrt.InferenceSession(MODEL, so)
    assert "\n" not in str(ei.value) and "optimized_model_filepath" in str(ei.value)


# -- introspection --------------------------------------------------------------------------
META_FIELDS = ["producer_name", "graph_name", "domain", "description", "graph_description",
               "custom_metadata_map"]


def test_modelmeta_matches_onnxruntime(sess):
    meta, ometa = sess.get_modelmeta(), _ort(MODEL).get_modelmeta()
    for f in META_FIELDS:
        assert getattr(meta, f) == getattr(ometa, f), f
    assert meta.producer_name == "pytorch" and meta.graph_name == "main_graph"
    assert meta.version == 0  # not set in the file (onnxruntime reports 2**63 - 1)

    m = onnx.load(MODEL)
    m.doc_string, m.domain, m.model_version = "a small VGG", "org.example", 7
    m.graph.doc_string = "the main graph"
    onnx.helper.set_model_props(m, {"author": "tests", "license": "MIT"})
    meta, ometa = (convrt.InferenceSession(m.SerializeToString()).get_modelmeta(),
                   _ort(m).get_modelmeta())
    for f in META_FIELDS + ["version"]:
        assert getattr(meta, f) == getattr(ometa, f), f
    assert (meta.description, meta.domain, meta.version, meta.graph_description) == \
        ("a small VGG", "org.example", 7, "the main graph")
    assert meta.custom_metadata_map == {"author": "tests", "license": "MIT"}


def test_overridable_initializers(x, sess):
    assert sess.get_overridable_initializers() == []
    assert _ort(MODEL).get_overridable_initializers() == []

    m = onnx.load(MODEL)  # IR 7: an initializer listed as an input is a default, overridable
    bias = next(t for t in m.graph.initializer if t.name == "classifier.3.bias")
    m.graph.input.append(onnx.helper.make_tensor_value_info(bias.name, bias.data_type, [10]))
    s, o = convrt.InferenceSession(m.SerializeToString()), _ort(m)
    (arg,) = s.get_overridable_initializers()
    (oarg,) = o.get_overridable_initializers()
    assert (arg.name, arg.shape, arg.type) == (oarg.name, oarg.shape, oarg.type)
    assert [a.name for a in s.get_inputs()] == ["input"]
    b = np.arange(10, dtype=np.float32)
    (y,) = s.run(None, {"input": x, bias.name: b})
    (oy,) = o.run(None, {"input": x, bias.name: b})
    np.testing.assert_allclose(y, oy, rtol=1e-4, atol=1e-5)
    (y0,) = s.run(None, {"input": x})
    np.testing.assert_allclose(y - y0, np.broadcast_to(b - onnx.numpy_helper.to_array(bias),
                                                       y.shape), rtol=1e-4, atol=1e-4)


def test_providers(sess):
    assert sess.get_providers() == ["ConvrtCPUExecutionProvider"]
    assert sess.get_provider_options() == {"ConvrtCPUExecutionProvider": {}}
    # onnxruntime's shapes: a list of names, and a dict of name -> options dict
    o = _ort(MODEL)
    assert isinstance(o.get_providers(), list)
    assert set(o.get_provider_options()) == set(o.get_providers())
