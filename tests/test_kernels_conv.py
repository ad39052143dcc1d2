"""Conv2d against the naive numpy reference and onnx's ReferenceEvaluator."""


import math
import numba
import numpy as np
import pytest

from convrt.activations import IN_REGISTERS
from convrt.kernels.conv import Conv2d
from kernel_threads import check_concurrent_calls, outputs_at_thread_counts
from naive import activation_ref, conv2d_ref

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

# (N, C, H, W, M, kH, kW, strides, pads (t, l, b, r), dilations, group)
CASES = {
    "1x1": (1, 8, 7, 9, 16, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_s2": (3, 8, 9, 10, 24, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "1x1_pad": (1, 5, 6, 6, 8, 1, 1, (1, 1), (1, 0, 0, 1), (1, 1), 1),
    "1x1_wide": (2, 24, 12, 13, 150, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_s21": (1, 16, 15, 23, 37, 1, 1, (2, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_7x7": (1, 32, 7, 7, 40, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "3x3_c3_w40": (2, 3, 9, 40, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3_c3_s2": (1, 3, 20, 45, 32, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "7x7_c3_s2_asym": (1, 3, 21, 70, 24, 7, 7, (2, 2), (3, 2, 3, 4), (1, 1), 1),
    "3x3_c2_d2_s21": (1, 2, 12, 37, 13, 3, 3, (2, 1), (2, 0, 1, 2), (2, 2), 1),
    "1x1_pad_w20": (1, 5, 6, 20, 8, 1, 1, (1, 1), (1, 0, 0, 1), (1, 1), 1),
    "3x3": (1, 16, 16, 16, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3_nopad": (3, 6, 10, 19, 16, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "3x3_s2_asym": (1, 8, 11, 12, 70, 3, 3, (2, 2), (0, 1, 2, 1), (1, 1), 1),
    "3x3_s3": (1, 4, 14, 15, 16, 3, 3, (3, 3), (1, 1, 1, 1), (1, 1), 1),
    "3x3_s21": (1, 4, 9, 11, 8, 3, 3, (2, 1), (1, 2, 0, 1), (1, 1), 1),
    "3x3_d2": (1, 8, 12, 13, 24, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "3x3_d2_s2": (3, 4, 13, 12, 16, 3, 3, (2, 2), (1, 0, 2, 3), (2, 1), 1),
    "5x5": (1, 6, 12, 12, 16, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),
    "7x7_s2": (1, 3, 23, 22, 64, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),
    "11x11_s4": (1, 3, 35, 35, 16, 11, 11, (4, 4), (2, 2, 2, 2), (1, 1), 1),
    "2x2_s2": (3, 8, 8, 9, 24, 2, 2, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "4x4_asym": (1, 4, 9, 10, 16, 4, 4, (1, 1), (1, 2, 2, 1), (1, 1), 1),
    "1x3": (1, 4, 6, 9, 8, 1, 3, (1, 1), (0, 1, 0, 1), (1, 1), 1),
    "group2": (3, 8, 9, 9, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "group2_m8": (1, 8, 8, 8, 16, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2),
    "group2_m70": (1, 6, 8, 9, 70, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "group4_narrow": (1, 8, 7, 7, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 4),
    "depthwise": (3, 16, 10, 11, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 16),
    "depthwise_s2": (1, 24, 12, 12, 24, 3, 3, (2, 2), (0, 0, 1, 1), (1, 1), 24),
    "depthwise_x2": (1, 8, 9, 9, 16, 5, 5, (1, 1), (2, 2, 2, 2), (2, 2), 8),
    "m_small": (1, 8, 6, 6, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "out_1x1": (3, 16, 7, 7, 24, 7, 7, (1, 1), (0, 0, 0, 0), (1, 1), 1),
}


def _data(case, dtype, seed=0, bias=True):
    n, c, h, w, m, kh, kw, strides, pads, dil, group = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((m, c // group, kh, kw)) / np.sqrt(kh * kw * c // group))
    b = rng.standard_normal(m).astype(dtype) if bias else None
    return x, wt.astype(dtype), b


def _run(case, x, wt, b, dtype, residual=None, **act):
    n, c, h, w, m, kh, kw, strides, pads, dil, group = case
    conv = Conv2d(wt, b, x.shape, strides, pads, dil, group, dtype=dtype, **act)
    out = np.full(conv.out_shape, np.nan, dtype=dtype)
    conv(x, out, residual)
    return conv, out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_vs_naive(name, dtype):
    case = CASES[name]
    x, wt, b = _data(case, dtype, bias=name != "3x3_nopad")
    conv, out = _run(case, x, wt, b, dtype)
    ref = conv2d_ref(x, wt, b, case[7], case[8], case[9], case[10])
    assert conv.out_shape == ref.shape
    np.testing.assert_allclose(out, ref, **TOL[dtype])
    out2 = np.empty_like(out)
    conv(x, out2)  # a second call reuses the scratch: same answer
    np.testing.assert_array_equal(out, out2)


ACTS = [dict(activation="none"), dict(activation="relu"),
        dict(activation="leaky_relu", alpha=0.2), dict(activation="clip", clip_min=-0.5,
                                                       clip_max=0.7),
        dict(activation="clip", clip_min=0.0, clip_max=6.0), dict(activation="sigmoid"),
        dict(activation="tanh")]
HARD_ACTS = [dict(activation="silu"), dict(activation="hard_swish", alpha=1 / 6, clip_min=0.5),
             dict(activation="hard_sigmoid", alpha=0.2, clip_min=0.5)]  # beta in clip_min


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", range(len(ACTS)))
@pytest.mark.parametrize("name", ["3x3", "1x1", "depthwise", "3x3_s2_asym", "1x1_wide"])
def test_epilogue(name, act, residual, dtype):
    case = CASES[name]
    x, wt, b = _data(case, dtype, seed=act)
    ref = conv2d_ref(x, wt, b, case[7], case[8], case[9], case[10])
    res = None
    if residual:
        res = np.random.default_rng(7).standard_normal(ref.shape).astype(dtype)
        ref = ref + res
    _, out = _run(case, x, wt, b, dtype, residual=res, **ACTS[act])
    np.testing.assert_allclose(out, activation_ref(ref, **ACTS[act]), **TOL[dtype])


def _onnx_conv(x, wt, b, strides, pads, dil, group):
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    elem = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    inits = [numpy_helper.from_array(wt, "w")] + ([numpy_helper.from_array(b, "b")] if b is not
                                                  None else [])
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if b is not None else []), ["y"],
                            strides=list(strides), pads=[pads[0], pads[1], pads[2], pads[3]],
                            dilations=list(dil), group=group, kernel_shape=list(wt.shape[2:]))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, x.shape)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["3x3", "3x3_s2_asym", "3x3_d2_s2", "4x4_asym", "7x7_s2",
                                  "group2_m70", "depthwise_s2", "1x1_s2", "2x2_s2"])
def test_conv_vs_onnx_reference(name, dtype):
    case = CASES[name]
    x, wt, b = _data(case, dtype, seed=3)
    _, out = _run(case, x, wt, b, dtype)
    ref = _onnx_conv(x, wt, b, case[7], case[8], case[9], case[10])
    np.testing.assert_allclose(out, ref, **TOL[dtype])


@pytest.mark.parametrize("act", ["none", "relu", "clip", "leaky_relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("name", ["3x3", "3x3_s2_asym", "depthwise", "1x1", "1x1_wide"])
def test_nan_inf_propagate(name, act):
    case = CASES[name]
    x, wt, b = _data(case, np.float32, seed=5)
    x[0, 1, 2, 3] = np.nan
    x[-1, 0, -1, -2] = np.inf
    x[-1, -1, 0, 0] = -np.inf
    ref = activation_ref(conv2d_ref(x, wt, b, case[7], case[8], case[9], case[10]), act)
    _, out = _run(case, x, wt, b, np.float32, activation=act)
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(out[fin], ref[fin], **TOL[np.float32])


def test_threads_share_one_conv():
    case = CASES["3x3_s2_asym"]
    _, wt, b = _data(case, np.float32)
    conv = Conv2d(wt, b, case[:4], case[7], case[8], case[9], case[10], activation="relu")
    xs = [_data(case, np.float32, seed=s)[0] for s in range(4)]
    refs = [np.maximum(conv2d_ref(x, wt, b, case[7], case[8], case[9], case[10]), 0) for x in xs]
    check_concurrent_calls(conv, xs, refs, 20, TOL[np.float32])


# ---- Winograd F(2x2, 3x3) -----------------------------------------------------------------
WINO_CASES = {  # (N, C, H, W, M, pads)
    "even": (1, 16, 8, 8, 32, (1, 1, 1, 1)),
    "odd_hw": (2, 8, 7, 9, 40, (1, 1, 1, 1)),
    "asym_pad": (3, 8, 9, 6, 16, (0, 1, 2, 0)),
    "nopad": (1, 12, 5, 5, 70, (0, 0, 0, 0)),
    "big_pad": (1, 4, 6, 5, 16, (2, 3, 1, 2)),
    "m_small": (2, 8, 6, 7, 3, (1, 1, 1, 1)),
    "vgg_like": (1, 128, 14, 14, 64, (1, 1, 1, 1)),
}


def _wino_data(case, dtype, seed=0):
    n, c, h, w, m, pads = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((m, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
    return x, wt, rng.standard_normal(m).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(WINO_CASES))
def test_winograd_vs_naive(name, dtype):
    case = WINO_CASES[name]
    x, wt, b = _wino_data(case, dtype)
    conv = Conv2d(wt, b, x.shape, pads=case[5], dtype=dtype, algo="winograd")
    assert conv.algo == "winograd"
    out = np.full(conv.out_shape, np.nan, dtype=dtype)
    conv(x, out)
    ref = conv2d_ref(x, wt, b, (1, 1), case[5])
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, **TOL[dtype])
    out2 = np.full_like(out, np.nan)
    conv(x, out2)  # deterministic: bit for bit the same on a second call
    np.testing.assert_array_equal(out, out2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", range(len(ACTS)))
def test_winograd_epilogue(act, residual, dtype):
    case = WINO_CASES["odd_hw"]
    x, wt, b = _wino_data(case, dtype, seed=act)
    ref = conv2d_ref(x, wt, b, (1, 1), case[5])
    res = None
    if residual:
        res = np.random.default_rng(7).standard_normal(ref.shape).astype(dtype)
        ref = ref + res
    conv = Conv2d(wt, b, x.shape, pads=case[5], dtype=dtype, algo="winograd", **ACTS[act])
    out = np.full(conv.out_shape, np.nan, dtype=dtype)
    conv(x, out, res)
    np.testing.assert_allclose(out, activation_ref(ref, **ACTS[act]), **TOL[dtype])


@pytest.mark.parametrize("act", ["none", "relu", "clip", "sigmoid"])
def test_winograd_nan_inf(act):
    case = WINO_CASES["odd_hw"]
    x, wt, b = _wino_data(case, np.float32, seed=5)
    x[0, 1, 2, 3] = np.nan
    x[-1, 0, -1, -2] = np.inf
    ref = activation_ref(conv2d_ref(x, wt, b, (1, 1), case[5]), act)
    conv = Conv2d(wt, b, x.shape, pads=case[5], algo="winograd", activation=act)
    out = np.full(conv.out_shape, 0.5, np.float32)
    conv(x, out)
    # Winograd mixes a tile's 4x4 input patch into all its outputs: an Inf may become NaN (Inf -
    # Inf) and reach the other outputs of its 2x2 tile, but never a pixel the direct conv keeps
    # finite outside that tile's reach; every non-finite reference stays non-finite.
    assert not np.isfinite(out[~np.isfinite(ref)]).any()
    fin = np.isfinite(out)
    np.testing.assert_allclose(out[fin], ref[fin], **TOL[np.float32])


def test_winograd_batch_chunks(monkeypatch):
    """A batch too big for the transform buffer runs in chunks of images: same answer."""
    from convrt.kernels.conv import winograd

    monkeypatch.setattr(winograd, "V_BUDGET", 1)  # one image per chunk
    case = (5, 8, 6, 7, 16, (1, 1, 1, 1))
    x, wt, b = _wino_data(case, np.float32)
    conv = Conv2d(wt, b, x.shape, pads=case[5], algo="winograd", activation="relu")
    assert conv._wino.chunk == 1
    res = np.random.default_rng(1).standard_normal(conv.out_shape).astype(np.float32)
    out = np.empty(conv.out_shape, np.float32)
    conv(x, out, res)
    ref = np.maximum(conv2d_ref(x, wt, b, (1, 1), case[5]) + res, 0)
    np.testing.assert_allclose(out, ref, **TOL[np.float32])


def test_winograd_choice_is_by_shape():
    from convrt.kernels.conv.winograd import use_winograd

    assert use_winograd((1, 256, 56, 56), (256, 256, 3, 3), (1, 1), (1, 1), 1)
    assert use_winograd((1, 512, 14, 14), (512, 512, 3, 3), (1, 1), (1, 1), 1)
    assert not use_winograd((1, 64, 224, 224), (64, 64, 3, 3), (1, 1), (1, 1), 1)
    assert not use_winograd((1, 128, 112, 112), (128, 128, 3, 3), (1, 1), (1, 1), 1)
    assert not use_winograd((1, 256, 28, 28), (256, 256, 3, 3), (2, 2), (1, 1), 1)
    assert not use_winograd((1, 256, 28, 28), (256, 256, 3, 3), (1, 1), (2, 2), 1)
    assert not use_winograd((1, 256, 28, 28), (256, 128, 3, 3), (1, 1), (1, 1), 2)
    assert not use_winograd((1, 256, 28, 28), (256, 256, 1, 1), (1, 1), (1, 1), 1)
    # 7x7 computes 8x8 outputs (too much waste); 8x8 and 13x13 do not
    assert not use_winograd((1, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1), 1)
    assert use_winograd((1, 512, 8, 8), (512, 512, 3, 3), (1, 1), (1, 1), 1)
    assert use_winograd((1, 512, 14, 14), (512, 512, 3, 3), (1, 1), (1, 1), 1)
    # few channels x short tile rows: direct (ResNet-18's 28x28x128 and 14x14x256, and small
    # VGG's 16x16x128 whatever the batch)
    assert not use_winograd((64, 128, 16, 16), (128, 128, 3, 3), (1, 1), (1, 1), 1)
    assert not use_winograd((1, 128, 16, 16), (128, 128, 3, 3), (1, 1), (1, 1), 1)
    assert not use_winograd((1, 128, 28, 28), (128, 128, 3, 3), (1, 1), (1, 1), 1)
    assert not use_winograd((1, 256, 14, 14), (256, 256, 3, 3), (1, 1), (1, 1), 1)
    assert use_winograd((1, 512, 13, 13), (512, 512, 3, 3), (1, 1), (1, 1), 1)
    x, wt, b = _wino_data((1, 512, 8, 8, 32, (1, 1, 1, 1)), np.float32)
    assert Conv2d(wt, b, x.shape, pads=(1, 1, 1, 1)).algo == "winograd"
    x, wt, b = _wino_data((1, 128, 8, 8, 32, (1, 1, 1, 1)), np.float32)
    assert Conv2d(wt, b, x.shape, pads=(1, 1, 1, 1)).algo == "direct"


def test_winograd_threads_share_one_conv():
    case = WINO_CASES["odd_hw"]
    x0, wt, b = _wino_data(case, np.float32)
    conv = Conv2d(wt, b, x0.shape, pads=case[5], algo="winograd")
    xs = [_wino_data(case, np.float32, seed=s)[0] for s in range(4)]
    refs = [conv2d_ref(x, wt, b, (1, 1), case[5]) for x in xs]
    check_concurrent_calls(conv, xs, refs, 10, TOL[np.float32])


@pytest.mark.parametrize("algo", ["direct", "winograd"])
def test_bitwise_same_across_thread_counts(algo):
    case = WINO_CASES["vgg_like"]
    x, wt, b = _wino_data(case, np.float32, seed=2)
    conv = Conv2d(wt, b, x.shape, pads=case[5], algo=algo, activation="relu")
    outs = outputs_at_thread_counts(conv, x)
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


@pytest.mark.parametrize("budget", [None, 1])
def test_winograd_overlapping_last_run_has_no_race(monkeypatch, budget):
    """Regression: the last run of tiles is shifted back and overlaps the run before it; both
    tasks used to store the shared tiles (bias, then residual + activation in place), so under
    2 threads a pixel could get the residual twice.  Repeat to give the race a chance."""
    from convrt.kernels.conv import winograd

    if budget is not None:
        monkeypatch.setattr(winograd, "V_BUDGET", budget)
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8, 6, 7)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    conv = Conv2d(w, b, x.shape, pads=(1, 1, 1, 1), algo="winograd", activation="relu")
    res = rng.standard_normal(conv.out_shape).astype(np.float32)
    ref = np.maximum(conv2d_ref(x, w, b, (1, 1), (1, 1, 1, 1)) + res, 0)
    first = None
    for _ in range(100):
        out = np.empty(conv.out_shape, np.float32)
        conv(x, out, res)
        if first is None:
            first = out
            np.testing.assert_allclose(out, ref, **TOL[np.float32])
        np.testing.assert_array_equal(out, first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_microkernel_shape_transposed_store(monkeypatch, dtype):
    """Each (blocks, pixels) microkernel shape, forced, with the in-register transpose of its
    tile: partial last block, shifted-back last tile, residual and ReLU."""
    from convrt.kernels.conv import _microkernel as convmod

    rng = np.random.default_rng(11)
    for shape in convmod._shapes(np.dtype(dtype)):
        monkeypatch.setattr(convmod, "_choose_shape", lambda mg, ow, dt, s=shape: s)
        n, c, h, w, m = 2, 5, 4, max(shape[1] + 3, 9), 40
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        wt = rng.standard_normal((m, c, 3, 3)).astype(dtype)
        b = rng.standard_normal(m).astype(dtype)
        conv = Conv2d(wt, b, x.shape, pads=(1, 1, 1, 1), activation="relu", dtype=dtype,
                      algo="direct")
        assert conv._shape == shape
        res = rng.standard_normal(conv.out_shape).astype(dtype)
        out = np.empty(conv.out_shape, dtype)
        conv(x, out, res)
        ref = np.maximum(conv2d_ref(x, wt, b, (1, 1), (1, 1, 1, 1)) + res, 0)
        np.testing.assert_allclose(out, ref, **TOL[dtype], err_msg=str(shape))


TAPS_CASES = {  # (N, C, H, W, M, strides, pads, dilations, group, forced shape, taps mode)
    "w40_t14": (1, 7, 5, 40, 40, (1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 14), 1),
    "w32_t8": (2, 6, 4, 32, 64, (1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 8), 1),
    "w7_t7": (1, 9, 7, 7, 33, (1, 1), (1, 1, 1, 1), (1, 1), 1, (2, 7), 1),
    "s21_d21_asym": (1, 5, 13, 19, 40, (2, 1), (2, 0, 1, 2), (2, 1), 1, (2, 8), 1),
    "group2": (2, 6, 6, 11, 70, (1, 1), (1, 1, 1, 1), (1, 1), 2, (2, 8), 1),
    "cg1": (1, 2, 6, 9, 64, (1, 1), (0, 1, 0, 1), (1, 1), 2, (2, 8), 1),
    "nopad": (1, 3, 5, 9, 32, (1, 1), (0, 0, 0, 0), (1, 1), 1, (2, 7), 1),
    "s2_t14": (1, 5, 33, 34, 40, (2, 2), (1, 1, 1, 1), (1, 1), 1, (2, 14), 2),
    "s2_t7_asym": (2, 4, 15, 16, 64, (2, 2), (0, 1, 1, 0), (1, 1), 1, (2, 7), 2),
    "d12_t7": (1, 3, 8, 12, 32, (1, 1), (1, 2, 1, 2), (1, 2), 1, (2, 7), 2),
    "s3_t7_group2": (1, 6, 9, 23, 48, (1, 3), (1, 1, 1, 1), (1, 1), 2, (2, 7), 2),
}


@pytest.mark.parametrize("row_major", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(TAPS_CASES))
def test_unrolled_taps_match_generic_loop(monkeypatch, name, dtype, row_major):
    """The 3x3 loop with its taps unrolled (constant or loaded tap offsets, and prefetches)
    sums in the same order as the one-offset-per-step loop, so the two agree bit for bit, and
    both match the naive reference; with both work orders, strides and dilations along either
    axis, groups, one channel per group, and the residual + ReLU epilogue."""
    from convrt.kernels.conv import _microkernel as convmod

    n, c, h, w, m, strides, pads, dil, group, shape, mode = TAPS_CASES[name]
    fits = convmod._shapes(np.dtype(dtype))
    if shape not in fits:  # another CPU's table (AVX2), or float64: the host's unrolled shape
        unrolled = [case[:2] for case in convmod.TRANSPOSED_CASES if case[3] and case[:2] in fits]
        shape = unrolled[0] if unrolled else (1, 2)
    monkeypatch.setattr(convmod, "_choose_shape", lambda mg, ow, dt, allowed=None: shape)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((m, c // group, 3, 3)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    outs = []
    for taps in (mode, 0):
        conv = Conv2d(wt, b, x.shape, strides, pads, dil, group, activation="relu",
                      dtype=dtype, algo="direct")
        assert conv._taps == mode and conv._shape == shape
        conv._taps, conv._row_major = taps, row_major
        res = np.linspace(-1, 1, np.prod(conv.out_shape)).reshape(conv.out_shape).astype(dtype)
        out = np.full(conv.out_shape, np.nan, dtype)
        conv(x, out, res)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    ref = np.maximum(conv2d_ref(x, wt, b, strides, pads, dil, group) + res, 0)
    np.testing.assert_allclose(outs[0], ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shared_scratch_holds_no_stale_data(dtype):
    """Every Conv2d a thread calls shares one scratch buffer: each padded copy must rewrite
    its borders, plane gaps and spare plane.  Poisoned with NaN, and alternated between layers
    of different geometry (padding, stride phases, a gathered 1x1), the outputs still equal
    the naive reference."""
    from convrt.kernels.conv._layout import _shared_scratch

    names = ["3x3", "3x3_s2_asym", "3x3_d2_s2", "5x5", "1x1_s2", "1x1_s21", "7x7_s2",
             "3x3_c3_s2"]
    for name in names + names[::-1]:
        n, c, h, w, m, kh, kw, strides, pads, dil, group = CASES[name]
        x, wt, b = _data(CASES[name], dtype, seed=len(name))
        conv = Conv2d(wt, b, x.shape, strides, pads, dil, group, dtype=dtype)
        _shared_scratch(1 << 16, dtype)[:] = np.nan
        out = np.full(conv.out_shape, np.nan, dtype)
        conv(x, out)
        ref = conv2d_ref(x, wt, b, strides, pads, dil, group)
        np.testing.assert_allclose(out, ref, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("algo, shape, strides, group", [
    ("direct", (2, 16, 14, 14), (2, 2), 1),  # ResNet's downsample at 14x14 -> 7x7 (49 px)
    ("pixel", (2, 16, 14, 14), (2, 2), 1),
    ("direct", (1, 12, 9, 23), (3, 2), 1),
    ("pixel", (1, 12, 9, 23), (3, 2), 1),
    ("direct", (1, 16, 10, 10), (2, 2), 2),  # grouped: each group reads its gathered planes
])
def test_strided_1x1_gathers_its_pixels(algo, shape, strides, group):
    """A strided unpadded 1x1 layer, on either kernel, gathers the pixels it reads into one
    long row per plane (no phase-split copy of the whole input) and matches ONNX."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((32, shape[1] // group, 1, 1)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    conv = Conv2d(wt, b, shape, strides, (0, 0, 0, 0), group=group, algo=algo)
    assert conv._gather and not conv._copy and conv.algo == algo
    _shared_scratch_poison()
    out = np.full(conv.out_shape, np.nan, np.float32)
    conv(x, out)
    ref = _onnx_conv(x, wt, b, strides, (0, 0, 0, 0), (1, 1), group)
    np.testing.assert_allclose(out, ref, **TOL[np.float32])


def _shared_scratch_poison():
    from convrt.kernels.conv._layout import _shared_scratch
    _shared_scratch(1 << 16, np.float32)[:] = np.nan


@pytest.mark.parametrize("c, h, w, stride, pads", [
    (3, 7, 7, 1, (1, 1, 1, 1)),      # short rows: zero the plane, then copy the rows
    (2, 5, 40, 1, (2, 0, 1, 3)),     # long rows: borders and data row by row
    (4, 9, 11, 2, (1, 2, 0, 1)),     # stride phases
    (1, 3, 33, 3, (0, 1, 2, 0)),
])
def test_pad_copy_serial_and_parallel_agree(c, h, w, stride, pads):
    """The input copy runs on the calling thread when small (``PAD_SERIAL_ELEMS``), else as a
    parallel loop; both write every element of the scratch (borders, plane gaps, the spare
    plane) with the same values, whatever stale data it held."""
    from convrt.kernels.conv._layout import _pad_copy, _pad_copy_serial

    x = np.random.default_rng(c * h + w).standard_normal((2, c, h, w)).astype(np.float32)
    wt = np.ones((8, c, 3, 3), np.float32)
    conv = Conv2d(wt, None, x.shape, (stride, stride), pads, algo="direct")
    assert conv._copy
    outs = []
    for copy in (_pad_copy, _pad_copy_serial):
        xs = np.full(conv._xs_len, np.nan, np.float32)
        copy(x.reshape(-1), xs, 2, c, h, w, *conv._geom)
        outs.append(xs)
    np.testing.assert_array_equal(outs[0], outs[1])
    hp, q_n, sw, pt, pl, cstride = conv._geom
    planes = outs[0][:2 * c * cstride].reshape(2 * c, cstride)[:, :hp * sw * q_n]
    rows = planes.reshape(2, c, hp, sw, q_n).transpose(0, 1, 2, 4, 3).reshape(2, c, hp, -1)
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pads[2]), (pl, pads[3])))
    np.testing.assert_array_equal(rows[..., :padded.shape[3]], padded)
    assert not np.any(outs[0][2 * c * cstride:])  # the spare plane
    assert not np.any(np.isnan(outs[0]))


# ---- the pixel-vectorised kernel (kernels/pixel.py) ------------------------------------------
def test_pixel_choice_is_by_shape():
    """1x1 unpadded group-1 layers with MIN_PIX_1X1+ pixels (64 with AVX-512, 49 with AVX2) or
    whole vectors of 16, and short reductions with rows of 16+ pixels go to the pixel kernel;
    smaller maps, groups, long reductions and an explicit algo="direct" stay on the blocked
    kernel."""
    from convrt.kernels.conv import pixel

    def algo(name, **kw):
        case = CASES[name]
        x, wt, b = _data(case, np.float32)
        return Conv2d(wt, b, x.shape, case[7], case[8], case[9], case[10], **kw).algo

    assert algo("1x1_wide") == algo("1x1_s21") == "pixel"
    small = "pixel" if pixel.MIN_PIX_1X1 <= 49 else "direct"
    assert algo("1x1_7x7") == algo("1x1") == small  # 49, 63 pixels
    assert algo("3x3_c3_w40") == algo("3x3_c3_s2") == algo("1x1_pad_w20") == "pixel"
    assert algo("3x3") == algo("group2") == algo("3x3_nopad") == "direct"  # 144 taps, groups
    assert algo("1x1_pad") == "direct"  # rows of 7
    assert algo("1x1_wide", algo="direct") == "direct"


@pytest.mark.parametrize("pix_major", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_pixel_shape(monkeypatch, dtype, pix_major):
    """Each (channels, pixel vectors) pixel microkernel, forced, in both work orders, on 1x1
    layers (one long row; gathered when strided): partial last channel block, shifted-back
    last pixel tile, stride, residual and clip."""
    from convrt.kernels.conv import pixel

    monkeypatch.setattr(pixel, "PIX_MAJOR_BYTES", 0 if pix_major else 1 << 40)
    rng = np.random.default_rng(12)
    for shape in pixel._shapes(np.dtype(dtype)):
        monkeypatch.setattr(pixel, "choose_shape", lambda m, p, dt, s=shape: s)
        n, c, h, w, m = 2, 7, 2 * 8, 2 * (shape[1] * 8 + 3), 2 * shape[0] + 3
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        wt = rng.standard_normal((m, c, 1, 1)).astype(dtype)
        b = rng.standard_normal(m).astype(dtype)
        for strides in [(1, 1), (2, 2)]:
            conv = Conv2d(wt, b, x.shape, strides, activation="clip", clip_min=-0.5,
                          clip_max=1.5, dtype=dtype)
            assert conv.algo == "pixel" and conv._shape == shape
            assert conv._pgeo[8] == pix_major
            res = rng.standard_normal(conv.out_shape).astype(dtype)
            out = np.full(conv.out_shape, np.nan, dtype)
            conv(x, out, res)
            ref = np.clip(conv2d_ref(x, wt, b, strides, (0, 0, 0, 0)) + res, -0.5, 1.5)
            np.testing.assert_allclose(out, ref, **TOL[dtype], err_msg=f"{shape} {strides}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", range(8))  # activations.IN_REGISTERS: stored from registers
@pytest.mark.parametrize("residual", [False, True])
def test_pixel_direct_stores_equal_tile_stores(act, residual, dtype):
    """Channel blocks store the pixel microkernel's sums straight from its registers,
    with the residual and activation applied there; the result is bit-identical to going
    through the tile buffer and ``_store_tile`` (geo[11] = 0 forces that path), NaN included,
    a partial last block included (its real rows only: 27 = 4 x 6 + 3).  sigmoid / silu are the
    vector form of ``elementwise.sigmoid32`` (float64: libm's exp), the hard forms one fma and
    two clamps, as ``_epilogue.act_other``; +-inf and saturating inputs included."""
    rng = np.random.default_rng(act)
    x = rng.standard_normal((2, 3, 6, 40)).astype(dtype) * 8
    x[0, 1, 2, 3] = np.nan
    x[1, 2, 4, 5], x[1, 0, 1, 20] = np.inf, -np.inf
    wt = rng.standard_normal((27, 3, 3, 3)).astype(dtype)  # 27: a partial last block
    b = rng.standard_normal(27).astype(dtype)
    kw = dict((ACTS + HARD_ACTS)[[0, 1, 2, 4, 5, 7, 9, 8][act]])
    conv = Conv2d(wt, b, x.shape, pads=(1, 1, 1, 1), dtype=dtype, **kw)
    assert conv.algo == "pixel" and conv.act == IN_REGISTERS[act]
    res = rng.standard_normal(conv.out_shape).astype(dtype) if residual else None
    outs = []
    for allow in (1, 0):
        conv._pgeo[11] = allow
        out = np.full(conv.out_shape, -3.0, dtype)
        conv(x, out, res)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    ref = conv2d_ref(x, wt, b, (1, 1), (1, 1, 1, 1))
    ref = activation_ref(ref + (0 if res is None else res), **kw)
    np.testing.assert_array_equal(np.isnan(outs[0]), np.isnan(ref))
    fin = ~np.isnan(ref)
    np.testing.assert_allclose(outs[0][fin], ref[fin], **TOL[dtype])


def test_pixel_work_order_by_shape():
    """Pixel-major order (a tile's input in L1 while every channel block is computed) for big
    inputs and for reductions longer than the output channels (projections); block-major
    for expansions with small inputs."""
    def order(c, m, hw):
        wt = np.ones((m, c, 1, 1), np.float32)
        conv = Conv2d(wt, None, (1, c, hw, hw))
        assert conv.algo == "pixel"
        return int(conv._pgeo[8])

    assert order(144, 24, 56) == order(96, 24, 56) == 1  # MobileNetV2 projections
    assert order(16, 96, 112) == order(24, 144, 56) == 0  # expansions
    assert order(64, 96, 200) == 1  # a 10 MB input


@pytest.mark.parametrize("name", ["1x1_wide", "3x3_c3_s2"])
def test_pixel_bitwise_same_across_thread_counts(name):
    case = CASES[name]
    x, wt, b = _data(case, np.float32, seed=4)
    conv = Conv2d(wt, b, x.shape, case[7], case[8], case[9], case[10], activation="relu")
    assert conv.algo == "pixel"
    outs = outputs_at_thread_counts(conv, x)
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["3x3_c3_w40", "3x3_c3_s2", "7x7_c3_s2_asym",
                                  "3x3_c2_d2_s21", "1x1_pad_w20"])
def test_pixel_spatial_forced_vs_naive(monkeypatch, name, dtype):
    """The pixel kernel on kernels with taps (padding, stride, dilation), forced for the
    7x7 one whose 147 taps would otherwise go to the blocked kernel; residual and ReLU."""
    from convrt.kernels.conv import pixel as convmod

    monkeypatch.setattr(convmod, "PIXEL_MAX_TAPS", 1000)
    case = CASES[name]
    x, wt, b = _data(case, dtype, seed=6)
    conv, _ = _run(case, x, wt, b, dtype)
    assert conv.algo == "pixel"
    ref = conv2d_ref(x, wt, b, case[7], case[8], case[9], case[10])
    res = np.random.default_rng(8).standard_normal(ref.shape).astype(dtype)
    _, out = _run(case, x, wt, b, dtype, residual=res, activation="relu")
    np.testing.assert_allclose(out, np.maximum(ref + res, 0), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("g_bytes", [1, 40_000, 1 << 30])
@pytest.mark.parametrize("name", sorted(WINO_CASES))
def test_winograd_fused_groups(monkeypatch, name, g_bytes, dtype):
    """The fused path (one pass per group of whole tile rows): groups of one tile row, groups
    spanning images with a short last group, and one group for everything; residual + ReLU."""
    from convrt.kernels.conv import winograd

    monkeypatch.setattr(winograd, "FUSED_MIN_GROUPS", 1)
    monkeypatch.setattr(winograd, "FUSED_MAX_U_PER_TILE", 1 << 40)
    monkeypatch.setattr(winograd, "G_BYTES", g_bytes)
    n, c, h, w, m, pads = WINO_CASES[name]
    x, wt, b = _wino_data((n + 2, c, h, w, m, pads), dtype, seed=9)
    conv = Conv2d(wt, b, x.shape, pads=pads, algo="winograd", activation="relu", dtype=dtype)
    assert conv._wino.fused
    res = np.random.default_rng(10).standard_normal(conv.out_shape).astype(dtype)
    out = np.full(conv.out_shape, np.nan, dtype)
    conv(x, out, res)
    ref = np.maximum(conv2d_ref(x, wt, b, (1, 1), pads) + res, 0)
    np.testing.assert_allclose(out, ref, **TOL[dtype])
    again = np.empty_like(out)
    conv(x, again, res)
    np.testing.assert_array_equal(out, again)


def test_winograd_fused_bitwise_same_across_thread_counts(monkeypatch):
    from convrt.kernels.conv import winograd

    monkeypatch.setattr(winograd, "FUSED_MIN_GROUPS", 1)
    monkeypatch.setattr(winograd, "FUSED_MAX_U_PER_TILE", 1 << 40)
    monkeypatch.setattr(winograd, "G_BYTES", 100_000)
    x, wt, b = _wino_data((4, 48, 14, 13, 40, (1, 1, 1, 1)), np.float32, seed=2)
    conv = Conv2d(wt, b, x.shape, pads=(1, 1, 1, 1), algo="winograd", activation="relu")
    assert conv._wino.fused
    outs = outputs_at_thread_counts(conv, x)
    np.testing.assert_allclose(outs[0], np.maximum(conv2d_ref(x, wt, b, (1, 1), (1, 1, 1, 1)),
                                                   0), **TOL[np.float32])
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


# ---- convolution + 2x2/2 max pool in one pass (kernels/conv_pool.py) -------------------------
POOL_CASES = {  # name: (x shape, M, kernel, strides, pads, group, algo, activation, fused?)
    "vgg": ((2, 8, 12, 12), 32, 3, (1, 1), (1, 1, 1, 1), 1, "auto", "relu", True),
    "odd": ((1, 5, 9, 13), 20, 3, (1, 1), (1, 1, 1, 1), 1, "auto", "relu", True),
    "narrow": ((3, 4, 7, 3), 16, 3, (1, 1), (1, 1, 1, 1), 1, "direct", "none", True),
    "wide": ((1, 3, 6, 70), 40, 3, (1, 1), (1, 1, 1, 1), 1, "direct", "relu", True),
    "strided": ((1, 6, 17, 19), 24, 3, (2, 2), (1, 0, 1, 2), 1, "direct", "relu", True),
    "grouped": ((2, 16, 10, 10), 32, 3, (1, 1), (1, 1, 1, 1), 2, "auto", "relu", True),
    "5x5_2x2": ((1, 4, 8, 8), 16, 5, (1, 1), (2, 2, 2, 2), 1, "direct", "relu", True),
    # the general path: convolution into scratch, then kernels/pool.max_pool2d
    "winograd": ((1, 8, 10, 10), 32, 3, (1, 1), (1, 1, 1, 1), 1, "winograd", "relu", False),
    "pixel": ((1, 3, 20, 20), 24, 3, (1, 1), (1, 1, 1, 1), 1, "auto", "relu", False),
    "1x1_row": ((1, 16, 6, 6), 16, 1, (1, 1), (0, 0, 0, 0), 1, "direct", "relu", False),
    "depthwise": ((1, 8, 8, 8), 8, 3, (1, 1), (1, 1, 1, 1), 8, "auto", "relu", False),
    "tanh": ((1, 8, 8, 8), 16, 3, (1, 1), (1, 1, 1, 1), 1, "direct", "tanh", False),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(POOL_CASES))
def test_conv_maxpool_equals_conv_then_pool(name, dtype):
    """``ConvMaxPool`` (fused or general path) equals ``Conv2d`` followed by the MaxPool kernel
    bit for bit, NaN included, at 1 and all threads; the pooled output is every element of
    ``out`` (it starts poisoned)."""
    from convrt.kernels.conv.conv_pool import ConvMaxPool
    from convrt.kernels.pool import max_pool2d

    shape, m, k, strides, pads, group, algo, act, fused = POOL_CASES[name]
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[rng.choice(x.size, 2, replace=False)] = np.nan
    wt = rng.standard_normal((m, shape[1] // group, k, k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    f = ConvMaxPool(wt, b, shape, strides, pads, (1, 1), group, act, dtype=dtype, algo=algo)
    assert f.fused == fused
    conv = Conv2d(wt, b, shape, strides, pads, (1, 1), group, act, dtype=dtype, algo=algo)
    y = np.empty(conv.out_shape, dtype)
    conv(x, y)
    ref = np.full(f.out_shape, -1.0, dtype)
    max_pool2d(y, ref, 2, 2, 2, 2, 1, 1, 0, 0)
    assert f.out_shape == (shape[0], m, y.shape[2] // 2, y.shape[3] // 2)
    for out in outputs_at_thread_counts(f, x, dtype):
        np.testing.assert_array_equal(out, ref)
    assert np.isnan(ref).any() and not np.isnan(ref).all()


# other windows (the general path, one image at a time): (x shape, M, conv kernel, conv
# strides, conv pads, pool kernel, pool strides, pool pads, algo)
WINDOW_CASES = {
    "resnet_stem": ((3, 3, 30, 30), 16, 7, (2, 2), (3, 3, 3, 3), (3, 3), (2, 2), (1, 1, 1, 1),
                    "auto"),
    "asymmetric": ((2, 5, 11, 9), 20, 3, (1, 1), (1, 1, 1, 1), (3, 2), (2, 1), (0, 1, 2, 0),
                   "direct"),
    "overlap_s1": ((2, 4, 7, 7), 12, 3, (1, 1), (0, 0, 0, 0), (2, 2), (1, 1), (0, 0, 0, 0),
                   "winograd"),
}


@pytest.mark.parametrize("name", sorted(WINDOW_CASES))
def test_conv_maxpool_window_matches_onnx(name):
    """Windows other than 2x2/2 (ResNet's stem: 3x3/2, pads 1): ONNX's reference Conv ->
    Relu -> MaxPool; and bit for bit the unfused kernels on the whole batch, NaN included
    (the reference's MaxPool lets a NaN lose, convrt's pools keep it, as ``max_pool2d``)."""
    from onnx.reference import ReferenceEvaluator
    from onnx import TensorProto, helper, numpy_helper
    from convrt.kernels.conv.conv_pool import ConvMaxPool
    from convrt.kernels.pool import max_pool2d

    shape, m, k, cs, cp, pk, ps, pp, algo = WINDOW_CASES[name]
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((m, shape[1], k, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    onnx_pads = [pp[0], pp[1], pp[2], pp[3]]
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=list(cp), strides=list(cs)),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=list(pk), strides=list(ps),
                          pads=onnx_pads)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")])
    ref = ReferenceEvaluator(helper.make_model(g)).run(None, {"x": x})[0]
    f = ConvMaxPool(wt, b, shape, cs, cp, activation="relu", algo=algo,
                    pool=(*pk, *ps, *pp))
    assert not f.fused and f.out_shape == ref.shape
    assert f._per_image  # one image's scratch, not the batch's
    assert f.scratch_bytes() - f.conv.scratch_bytes() == math.prod(f.conv.out_shape) * 4
    assert f.conv.out_shape[0] == 1
    out = np.full(f.out_shape, -1.0, np.float32)
    f(x, out)
    np.testing.assert_allclose(out, ref, **TOL[np.float32])
    x.reshape(-1)[rng.choice(x.size, 2, replace=False)] = np.nan
    conv = Conv2d(wt, b, shape, cs, cp, activation="relu", algo=algo)
    y = np.empty(conv.out_shape, np.float32)
    conv(x, y)
    unfused = np.full(f.out_shape, -1.0, np.float32)
    max_pool2d(y, unfused, *pk, *ps, 1, 1, pp[0], pp[1])
    for out in outputs_at_thread_counts(f, x, np.float32):
        np.testing.assert_array_equal(out, unfused)
    assert np.isnan(unfused).any() and not np.isnan(unfused).all()


def test_conv_maxpool_matches_onnx():
    """The fused path against ONNX's reference Conv -> Relu -> MaxPool."""
    from onnx.reference import ReferenceEvaluator
    from onnx import TensorProto, helper, numpy_helper
    from convrt.kernels.conv.conv_pool import ConvMaxPool

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 11, 14)).astype(np.float32)
    wt = rng.standard_normal((20, 6, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")])
    ref = ReferenceEvaluator(helper.make_model(g)).run(None, {"x": x})[0]
    f = ConvMaxPool(wt, b, x.shape, pads=(1, 1, 1, 1), activation="relu")
    assert f.fused
    out = np.empty(f.out_shape, np.float32)
    f(x, out)
    np.testing.assert_allclose(out, ref, **TOL[np.float32])


@pytest.mark.parametrize("name", ["vgg", "winograd"])
def test_conv_maxpool_concurrent_calls(name):
    """Per-thread scratch (input copy, unpooled output): calls from several Python threads at
    once, interleaved with another geometry, each get their own result."""
    from convrt.kernels.conv.conv_pool import ConvMaxPool

    shape, m, k, strides, pads, group, algo, act, _ = POOL_CASES[name]
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    wt = rng.standard_normal((m, shape[1] // group, k, k)).astype(np.float32)
    f = ConvMaxPool(wt, None, shape, strides, pads, (1, 1), group, act, algo=algo)
    refs = []
    for x in xs:
        refs.append(np.empty(f.out_shape, np.float32))
        f(x, refs[-1])
    check_concurrent_calls(f, xs, refs, repeats=5, tol=dict(rtol=0, atol=0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", range(4))
def test_masked_tile_store_equals_scalar_store(act, dtype):
    """``_store_tile_m`` (vector, masked) writes exactly what ``_store_tile`` writes for every
    tile width, channel count and residual choice, NaN included, and nothing past ``nt``."""
    from convrt.kernels.conv._epilogue import _store_tile, _store_tile_m

    @numba.njit
    def store_m(tile, nt, tp, out, ob, ohw, jv, res, has_res, act, prm):  # intrinsics need jit
        _store_tile_m(tile, nt, out, ob, ohw, jv, res, has_res, act, prm)

    rng = np.random.default_rng(act)
    prm = np.array([0.3, -0.5, 0.7, 0.0, 1.0], dtype)
    ohw = 40
    for nt in (1, 7, 8, 14, 16):
        for jv in (1, 5, 32):
            tile = rng.standard_normal(32 * 16).astype(dtype)
            tile[3] = np.nan
            res = rng.standard_normal(32 * ohw + 8).astype(dtype)
            for has_res in (False, True):
                outs = []
                for store in (_store_tile, store_m):
                    out = np.full(32 * ohw + 8, -9.0, dtype)
                    store(tile.copy(), nt, 16, out, np.uint64(3), np.uint64(ohw), jv, res,
                          has_res, act, prm)
                    outs.append(out)
                np.testing.assert_array_equal(outs[1], outs[0], err_msg=f"{nt} {jv} {has_res}")


def _packed_reference(w, bias, nb, wd, group):
    """The blocked kernel's packed layout from its definition: block ``g*nbg + bl`` holds output
    channels ``g*mg + bl*wd + j`` as columns ``j`` of the (C/group*kH*kW, wd) reduction
    matrix, zeros past a group's last channel."""
    m = w.shape[0]
    mg, nbg = m // group, nb // group
    wp = np.zeros((nb, int(np.prod(w.shape[1:])), wd), np.float32)
    bp = np.zeros((nb, wd), np.float32)
    for blk in range(nb):
        g = blk // nbg
        c0 = g * mg + (blk - g * nbg) * wd
        jn = min(wd, g * mg + mg - c0)
        wp[blk, :, :jn] = np.ascontiguousarray(w[c0:c0 + jn]).reshape(jn, -1).T
        bp[blk, :jn] = bias[c0:c0 + jn]
    return wp, bp


_PACK_SHAPES = [(64, 64, 3, 32, 1), (70, 5, 3, 32, 1), (64, 3, 7, 32, 1), (96, 16, 3, 16, 2),
                (40, 40, 1, 32, 4), (33, 7, 5, 16, 1)]


@pytest.mark.parametrize("m,c,k,wd,group,layout", [
    shape + (layout,) for shape in _PACK_SHAPES
    for layout in ("contiguous", "dx_view", "strided")
    if layout != "dx_view" or shape[-1] == 1])  # dX's view exists for one group only
def test_pack_direct_matches_its_definition(m, c, k, wd, group, layout):
    """Every way weights reach the blocked kernel's packing: contiguous (inference, forward
    training), training's dX view (transposed, flipped: read from the forward weights) and any
    other strided view."""
    from convrt.kernels.conv.direct import pack_direct

    rng = np.random.default_rng(m * c + k)
    cg = c // group
    if layout == "contiguous":
        w = rng.standard_normal((m, cg, k, k)).astype(np.float32)
    elif layout == "dx_view":
        w = rng.standard_normal((cg, m, k, k)).astype(np.float32).transpose(1, 0, 2, 3)[
            :, :, ::-1, ::-1]
    else:
        w = rng.standard_normal((m, 2 * cg, k, k)).astype(np.float32)[:, ::2]
    bias = rng.standard_normal(m).astype(np.float32)
    nb = group * -(-(m // group) // wd)
    wp = np.full((nb, cg * k * k, wd), np.nan, np.float32)  # every cell must be written
    bp = np.full((nb, wd), np.nan, np.float32)
    pack_direct(w, bias, wp, bp, group)
    ref_wp, ref_bp = _packed_reference(w, bias, nb, wd, group)
    assert np.array_equal(wp, ref_wp) and np.array_equal(bp, ref_bp)
