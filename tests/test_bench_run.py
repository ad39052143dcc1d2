"""benchmarks/run.py's bookkeeping, on made-up results (nothing is timed here): which columns and
ratios appear for the runtimes that ran, that "best f32" takes the better float32 peer per
metric (the lower time, the higher rate), that the empty-cache start-up row sets convrt's
empty-cache start against the peers' one start-up, and that only float32 runtimes are held to
the tolerance.  The real run is `python benchmarks/run.py` (minutes, so not a test)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

# loaded by path under its own name: benchmarks/ on sys.path would let its scripts (memory.py,
# scale.py...) shadow other modules for the rest of the test session
_spec = importlib.util.spec_from_file_location(
    "convrt_bench_run", Path(__file__).resolve().parents[1] / "benchmarks" / "run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def _results(runtimes, empty_cache=True):
    rt = {"convrt": dict(median_ms=10.0, images_per_s=100.0, cold_s=2.0),
          "ort": dict(median_ms=8.0, images_per_s=125.0, cold_s=0.5),
          "ov_f32": dict(median_ms=5.0, images_per_s=200.0, cold_s=1.0),
          "ov_default": dict(median_ms=2.5, images_per_s=400.0, cold_s=0.8, precision="bf16"),
          "convrt_bf16": dict(median_ms=3.0, images_per_s=333.0, cold_s=2.1)}
    model = {k: rt[k] for k in runtimes}
    if empty_cache:
        model["convrt_empty_cache"] = {"cold_s": 40.0}
    return {"date": "d", "machine": {}, "threads": 2, "repeat": 1, "rounds": 1,
            "peak_gflops": 1.0, "runtimes": list(runtimes), "models": {"m": model}}


def _row(results, label):
    return next(r for r in run.rows_of(results) if r[1] == label)


def test_all_ratio_columns_and_best_f32():
    res = _results(run.DEFAULT_RUNTIMES)
    _, _, _, vals, rats = _row(res, "latency median")
    assert vals == {"convrt": 10.0, "ort": 8.0, "ov_f32": 5.0, "ov_default": 2.5}
    assert rats == pytest.approx({"/ort": 1.25, "/OV f32": 2.0, "/best32": 2.0, "/OV def": 4.0})
    _, _, _, _, rats = _row(res, "throughput")  # higher is better: best = the larger rate
    assert rats["/best32"] == pytest.approx(100 / 200)
    _, _, _, vals, rats = _row(res, "start-up (empty cache)")
    assert vals["convrt"] == 40.0 and vals["ort"] == 0.5
    assert rats["/best32"] == pytest.approx(40 / 0.5)
    text = run.render_text(res)
    assert "/best32" in text and "OV def" in text and "bf16 here" in text
    assert "convrt/best f32" in run.render_markdown(res)


def test_columns_follow_the_runtimes_that_ran():
    res = _results(("convrt", "ort"), empty_cache=False)
    ran, ratios = run.columns(res)
    assert ran == ["convrt", "ort"] and [h for h, _, _ in ratios] == ["/ort"]
    assert not any(r[1] == "start-up (empty cache)" for r in run.rows_of(res))
    res["skipped"] = {"ov_f32": "not importable: x", "ov_default": "not importable: x"}
    assert "skipped: ov_f32, ov_default (not importable: x)" in run.render_text(res)


def test_check_holds_float32_runtimes_only():
    ref = np.array([1.0, -2.0], np.float32)
    assert run.check(ref + 1e-5, ref, held=True)["ok"] is True
    assert run.check(ref + 1e-3, ref, held=True)["ok"] is False
    loose = run.check(ref + 1e-2, ref, held=False)
    assert loose["ok"] is None and loose["max_abs_err"] == pytest.approx(1e-2, rel=1e-3)
    assert run.check(ref[:1], ref, held=True)["max_abs_err"] == float("inf")
    assert run.CHECKED == {"convrt": True, "ov_f32": True, "ov_default": False,
                           "convrt_bf16": False}


def test_bf16_runtime_is_divided_by_openvino_default():
    """convrt_bf16 (opt-in) gets its own column and the ratio convrt bf16 / OV default, issue
    #20's bf16 bar; the float32 ratios still divide float32 convrt."""
    res = _results(run.RUNTIMES)
    _, _, _, vals, rats = _row(res, "latency median")
    assert vals["convrt_bf16"] == 3.0
    assert rats["bf/OVdef"] == pytest.approx(3.0 / 2.5) and rats["/OV def"] == pytest.approx(4.0)
    res["models"]["m"]["convrt"]["round_medians_ms"] = [10.0, 11.0]
    res["models"]["m"]["convrt_bf16"]["round_medians_ms"] = [3.0, 3.3]
    res["models"]["m"]["ov_default"]["round_medians_ms"] = [2.5, 3.0]
    spreads = run.round_ratios(res["models"]["m"])
    assert spreads["bf16/ov_default"] == pytest.approx([1.2, 1.1])
    assert "convrt bf16/OpenVINO default" in run.render_markdown(res)
    assert "cv bf16" in run.render_text(res)
    assert "bf16" not in str(run.columns(_results(run.DEFAULT_RUNTIMES))[1])
