"""Images as inputs, activation statistics and feature-map pictures (issue #17).

CLI tests run ``python -m convrt.cli`` in a subprocess, so "one line, non-zero exit, no
traceback" is checked as a user sees it.  The pictures come from scikit-learn's sample image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import convrt
from convrt.errors import InputError

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
SMALL_VGG = str(ROOT / "sample_models" / "small_vgg.onnx")
DIGITS = str(ROOT / "sample_models" / "digits_vgg.onnx")
RELU = "/features/features.2/Relu_output_0"
POOL = "/features/features.13/MaxPool_output_0"


@pytest.fixture(scope="module")
def china(tmp_path_factory):
    """scikit-learn's china.jpg (427 x 640) saved as PNG and JPEG."""
    from sklearn.datasets import load_sample_image

    d = tmp_path_factory.mktemp("img")
    im = PIL.fromarray(load_sample_image("china.jpg"))
    im.save(d / "china.png")
    im.save(d / "china.jpg")
    return d


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convrt.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def node_outputs(path) -> list[str]:
    return [o for n in onnx.load(path).graph.node for o in n.output]


def assert_one_line_error(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# -- images ---------------------------------------------------------------------------------------
def test_image_feed_resizes_crops_and_normalizes(tmp_path):
    from convrt.images import IMAGENET_MEAN, IMAGENET_STD, image_feed

    # 40 x 80 (H x W): left quarter red, middle half green, right quarter blue.  Resized to
    # 32 x 64 and center-cropped to 32 x 32, only the green middle remains.
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :20, 0] = 255
    a[:, 20:60, 1] = 255
    a[:, 60:, 2] = 255
    PIL.fromarray(a).save(tmp_path / "x.png")
    x = image_feed(tmp_path / "x.png", ["N", 3, 32, 32])
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    want = (np.array([0, 1, 0]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[0, :, :, 4:28].mean(axis=(1, 2)), want, atol=1e-5)
    y = image_feed(tmp_path / "x.png", [1, 32, 32, 3], mean=(0, 0, 0), std=(1, 1, 1),
                   layout="NHWC")
    np.testing.assert_allclose(y[0, 16, 16], [0, 1, 0], atol=1e-6)
    g = image_feed(tmp_path / "x.png", ["N", 1, 8, 8], mean=(0,), std=(1,))
    # grayscale by Pillow's ITU-R 601-2 luma: green -> 0.587
    np.testing.assert_allclose(g[0, 0, 4, 4], round(0.587 * 255) / 255, atol=1e-6)


def test_image_feed_rejects_wrong_mean_length(china):
    from convrt.images import image_feed

    with pytest.raises(InputError, match="--mean has 2 value"):
        image_feed(china / "china.png", [1, 3, 32, 32], mean=(0.5, 0.5))


def test_run_accepts_an_image(china):
    r = cli("run", SMALL_VGG, "--input", f"input={china / 'china.jpg'}", "--repeat", "1")
    assert r.returncode == 0, r.stderr
    assert "input  input: [1, 3, 32, 32] float32" in r.stdout


# -- activation statistics ------------------------------------------------------------------------
@pytest.mark.parametrize("model,make_input", [
    (SMALL_VGG, lambda d: d / "china.png"),
    (DIGITS, lambda d: d / "china.jpg"),  # one channel: grayscale, 8 x 8
])
def test_inspect_activations_table_names_every_layer(model, make_input, china):
    r = cli("inspect", model, "--activations", make_input(china))
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()[2:]]
    assert names == node_outputs(model)
    head = r.stdout.splitlines()[0].split()
    assert head == ["value", "op", "shape", "mean", "std", "min", "max", "zero%", "nan", "inf",
                    "ms"]


def test_inspect_activations_json_matches_onnxruntime(tmp_path):
    """The statistics are of the right tensors: onnxruntime's Relu output gives the same."""
    ort = pytest.importorskip("onnxruntime")
    x = np.load(ROOT / "sample_models" / "small_vgg.npz")["x"]
    np.save(tmp_path / "x.npy", x)
    r = cli("inspect", SMALL_VGG, "--activations", tmp_path / "x.npy", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert list(rows) == node_outputs(SMALL_VGG)
    m = onnx.load(SMALL_VGG)
    m.graph.output.append(onnx.helper.make_tensor_value_info(RELU, onnx.TensorProto.FLOAT, None))
    (relu,) = ort.InferenceSession(m.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run([RELU], {"input": x})
    row = rows[RELU]
    assert row["shape"] == [1, 32, 32, 32] and row["op"] == "Relu"
    assert row["zero_pct"] == pytest.approx(100 * np.mean(relu == 0), abs=0.2)
    assert row["mean"] == pytest.approx(float(relu.mean()), rel=1e-4)
    assert row["max"] == pytest.approx(float(relu.max()), rel=1e-4)
    assert row["nan"] == 0 and row["inf"] == 0 and row["ms"] > 0


# -- pictures -------------------------------------------------------------------------------------
def test_featuremaps_png_small_vgg(china, tmp_path):
    out = tmp_path / "maps.png"
    r = cli("featuremaps", SMALL_VGG, "--input", china / "china.jpg", "--layer", RELU,
            "--layer", POOL, "--filters", "-o", out)
    assert r.returncode == 0, r.stderr
    with PIL.open(out) as im:
        im.verify()
    with PIL.open(out) as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 200


def test_featuremaps_png_digits(china, tmp_path):
    out = tmp_path / "digits.png"
    layer = next(v.name for v in convrt.InferenceSession(DIGITS).get_values() if v.op == "Relu")
    r = cli("featuremaps", DIGITS, "--input", china / "china.png", "--layer", layer, "-o", out)
    assert r.returncode == 0, r.stderr
    with PIL.open(out) as im:
        assert im.format == "PNG" and im.width > 0 and im.height > 0


def test_viz_api_draws_every_channel():
    from matplotlib.figure import Figure

    from convrt import viz

    sess = convrt.InferenceSession(SMALL_VGG)
    x = np.load(ROOT / "sample_models" / "small_vgg.npz")["x"]
    fig = viz.feature_maps(sess, {"input": x}, [RELU, POOL])
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [len(ax.texts) for ax in fig.axes] == [0, 32, 64]  # a number on every channel
    grid, cols = viz.mosaic(sess.run([RELU], {"input": x})[0][0])
    assert cols == 6 and np.nanmin(grid) == 0 and np.nanmax(grid) == 1


# -- bad input: one line, non-zero exit, no traceback ---------------------------------------------
def test_unknown_layer_lists_close_matches(china, tmp_path):
    r = cli("featuremaps", SMALL_VGG, "--input", china / "china.png", "--layer",
            "/features/features.2/Relu_output", "-o", tmp_path / "m.png")
    assert_one_line_error(r, "unknown value", "close matches: " + RELU)


def test_layer_that_is_not_4d(china, tmp_path):
    r = cli("featuremaps", SMALL_VGG, "--input", china / "china.png", "--layer", "logits",
            "-o", tmp_path / "m.png")
    assert_one_line_error(r, "'logits' (Gemm output) is 2-D", "4-D")


def test_undecodable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    for args in (["run", SMALL_VGG, "--input", f"input={bad}"],
                 ["inspect", SMALL_VGG, "--activations", bad],
                 ["featuremaps", SMALL_VGG, "--input", bad, "--layer", RELU, "-o",
                  tmp_path / "m.png"]):
        assert_one_line_error(cli(*args), "cannot decode image")


def test_mean_of_wrong_length(china):
    r = cli("inspect", SMALL_VGG, "--activations", china / "china.png", "--mean", "0.5,0.5")
    assert_one_line_error(r, "--mean has 2 value(s); the model's input has 3 channel(s)")
