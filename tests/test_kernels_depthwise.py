"""Depthwise / narrow-group convolution (kernels/depthwise.py, reached through Conv2d)."""


import numpy as np
import pytest

from convrt.kernels.conv import Conv2d
from kernel_threads import check_concurrent_calls, outputs_at_thread_counts
from naive import activation_ref, conv2d_ref

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

# (N, C, H, W, M, kH, kW, strides, pads (t, l, b, r), dilations, group)
CASES = {
    "mnv2_s1": (1, 32, 14, 14, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 32),
    "mnv2_s2": (1, 24, 15, 14, 24, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 24),
    "7x7_map": (2, 40, 7, 7, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 40),
    "tiny_map": (1, 5, 1, 2, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 5),
    "nopad": (2, 6, 9, 11, 6, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 6),
    "asym_pad_s2": (1, 6, 10, 9, 6, 3, 3, (2, 2), (0, 1, 2, 0), (1, 1), 6),
    "s21": (1, 4, 9, 12, 4, 3, 3, (2, 1), (1, 2, 0, 1), (1, 1), 4),
    "s3": (1, 4, 13, 14, 4, 3, 3, (3, 3), (1, 1, 1, 1), (1, 1), 4),
    "5x5": (1, 8, 12, 13, 8, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 8),
    "5x5_s2": (2, 8, 12, 13, 8, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 8),
    "dil2": (1, 8, 12, 12, 8, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 8),
    "dil2_s2": (1, 8, 13, 12, 8, 3, 3, (2, 2), (1, 0, 2, 3), (2, 1), 8),
    "1x1": (1, 8, 5, 6, 8, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 8),
    "1x3": (1, 8, 5, 6, 8, 1, 3, (1, 1), (0, 1, 0, 1), (1, 1), 8),
    "multiplier2": (2, 8, 9, 9, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 8),
    "group4_cg2": (1, 8, 7, 7, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 4),
    "group2_cg3_m7": (1, 6, 8, 9, 14, 3, 3, (2, 1), (1, 1, 0, 1), (1, 1), 2),
    "cg9_1x1": (1, 18, 6, 5, 4, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 2),
    "out_1x1": (1, 4, 3, 3, 4, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 4),
    # channel-blocked kernel (3x3 depthwise, >= 16 channels, small output map)
    "cb_dil2_s2": (1, 20, 13, 12, 20, 3, 3, (2, 2), (1, 0, 2, 3), (2, 1), 20),
    "cb_s3": (2, 17, 13, 14, 17, 3, 3, (3, 3), (1, 1, 1, 1), (1, 1), 17),
    "cb_s21_asym": (1, 33, 9, 12, 33, 3, 3, (2, 1), (1, 2, 0, 1), (1, 1), 33),
}
CHANNEL_BLOCKED = ["mnv2_s2", "7x7_map", "cb_dil2_s2", "cb_s3", "cb_s21_asym"]
ACTS = [dict(activation="none"), dict(activation="relu"),
        dict(activation="leaky_relu", alpha=0.2),
        dict(activation="clip", clip_min=0.0, clip_max=6.0), dict(activation="sigmoid"),
        dict(activation="tanh")]
# the in-register activations of dw3x3 (activations.IN_REGISTERS): all of ACTS but tanh, and
# silu and the hard forms (their beta rides in clip_min)
DW3_ACTS = ACTS[:5] + [dict(activation="silu"),
                       dict(activation="hard_swish", alpha=1 / 6, clip_min=0.5),
                       dict(activation="hard_sigmoid", alpha=0.2, clip_min=0.5)]


def _data(case, dtype, seed=0, bias=True):
    n, c, h, w, m, kh, kw, strides, pads, dil, group = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((m, c // group, kh, kw)) / np.sqrt(kh * kw * c // group)
    b = rng.standard_normal(m).astype(dtype) if bias else None
    return x, wt.astype(dtype), b


def _conv(case, wt, b, dtype, algo="auto", **act):
    n, c, h, w, m, kh, kw, strides, pads, dil, group = case
    return Conv2d(wt, b, (n, c, h, w), strides, pads, dil, group, dtype=dtype, algo=algo, **act)


def _ref(case, x, wt, b):
    return conv2d_ref(x, wt, b, case[7], case[8], case[9], case[10])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_depthwise_vs_naive(name, dtype):
    case = CASES[name]
    x, wt, b = _data(case, dtype, bias=name != "nopad")
    conv = _conv(case, wt, b, dtype)
    assert conv.algo == "depthwise"
    ref = _ref(case, x, wt, b)
    assert conv.out_shape == ref.shape
    out = np.full(conv.out_shape, np.nan, dtype=dtype)
    conv(x, out)
    np.testing.assert_allclose(out, ref, **TOL[dtype])
    out2 = np.full_like(out, np.nan)
    conv(x, out2)  # the scratch (zero border) is reused: the same answer, bit for bit
    np.testing.assert_array_equal(out, out2)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", range(len(ACTS)))
@pytest.mark.parametrize("name", ["mnv2_s1", "mnv2_s2", "5x5", "group4_cg2"])
def test_depthwise_epilogue(name, act, residual):
    case = CASES[name]
    x, wt, b = _data(case, np.float32, seed=act)
    ref = _ref(case, x, wt, b)
    res = None
    if residual:
        res = np.random.default_rng(7).standard_normal(ref.shape).astype(np.float32)
        ref = ref + res
    conv = _conv(case, wt, b, np.float32, **ACTS[act])
    out = np.empty(conv.out_shape, np.float32)
    conv(x, out, res)
    np.testing.assert_allclose(out, activation_ref(ref, **ACTS[act]), **TOL[np.float32])


@pytest.mark.parametrize("act", ["none", "relu", "clip", "leaky_relu"])
@pytest.mark.parametrize("name", ["mnv2_s1", "mnv2_s2", "5x5"])
def test_depthwise_nan_inf(name, act):
    case = CASES[name]
    x, wt, b = _data(case, np.float32, seed=5)
    x[0, 1, 2, 3] = np.nan
    x[-1, 0, -1, -2] = np.inf
    x[-1, -1, 0, 0] = -np.inf
    kw = dict(activation=act)
    if act == "clip":
        kw.update(clip_min=0.0, clip_max=6.0)
    ref = activation_ref(_ref(case, x, wt, b), **kw)
    conv = _conv(case, wt, b, np.float32, **kw)
    out = np.empty(conv.out_shape, np.float32)
    conv(x, out)
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(out[fin], ref[fin], **TOL[np.float32])


def test_depthwise_bitwise_same_across_thread_counts():
    case = (2, 48, 28, 28, 48, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 48)
    x, wt, b = _data(case, np.float32, seed=2)
    conv = _conv(case, wt, b, np.float32, activation="clip", clip_min=0.0, clip_max=6.0)
    outs = outputs_at_thread_counts(conv, x)
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


def test_depthwise_threads_share_one_conv():
    case = CASES["mnv2_s2"]
    _, wt, b = _data(case, np.float32)
    conv = _conv(case, wt, b, np.float32, activation="relu")
    xs = [_data(case, np.float32, seed=s)[0] for s in range(3)]
    refs = [activation_ref(_ref(case, x, wt, b), "relu") for x in xs]
    check_concurrent_calls(conv, xs, refs, 20, TOL[np.float32])


@pytest.mark.parametrize("name", CHANNEL_BLOCKED)
def test_channel_blocked_matches_planar(name, monkeypatch):
    """Small maps take the channel-blocked kernel; the planar one agrees (to rounding: the
    two contract multiply-adds differently), and each is bitwise stable run to run."""
    from convrt.kernels.conv import depthwise

    case = CASES[name]
    x, wt, b = _data(case, np.float32, seed=4)
    kw = dict(algo="depthwise", activation="clip", clip_min=0.0, clip_max=6.0)
    blocked = _conv(case, wt, b, np.float32, **kw)
    assert blocked._dw._kernel in (depthwise._cb_run_seq, depthwise._cb_run_par)
    monkeypatch.setattr(depthwise, "CB_MAX_PIXELS", 0)
    planar = _conv(case, wt, b, np.float32, **kw)
    assert planar._dw._kernel in (depthwise._run_seq, depthwise._run_par)
    outs = []
    for conv in (blocked, planar):
        out = np.empty(conv.out_shape, np.float32)
        conv(x, out)
        outs.append(out)
    ref = np.clip(_ref(case, x, wt, b), 0, 6)
    for conv, out in zip((blocked, planar), outs):
        np.testing.assert_allclose(out, ref, **TOL[np.float32])
        again = np.empty_like(out)
        conv(x, again)
        np.testing.assert_array_equal(out, again)


# ---- 3x3, padding 1, stride 1/2 depthwise rows (kernels/dw3x3.py) ----------------------------
DW3 = {  # (N, C, H, W, stride): rows shorter than, equal to and longer than one 16-lane vector
    "w1": (1, 3, 1, 1, 1), "h1_w2": (2, 5, 1, 2, 2), "w7": (2, 9, 7, 7, 1),
    "w7_s2": (1, 9, 7, 7, 2), "w16": (1, 4, 5, 16, 1), "w16_s2": (1, 4, 6, 16, 2),
    "w33": (1, 3, 6, 33, 1), "w33_s2": (2, 3, 9, 33, 2), "w35_s2_even_h": (1, 2, 10, 35, 2),
    "w64_s2": (1, 2, 4, 64, 2), "w17_h18": (1, 3, 18, 17, 1),
    # stride 2 on even widths: the row's last vector shifted back to end at the row's end
    "w56_s2": (1, 3, 8, 56, 2), "w34_s2": (2, 2, 7, 34, 2),
}


def _dw3(name, dtype, seed=0):
    n, c, h, w, s = DW3[name]
    case = (n, c, h, w, c, 3, 3, (s, s), (1, 1, 1, 1), (1, 1), c)
    x, wt, b = _data(case, dtype, seed=seed)
    return case, x, wt, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", range(len(DW3_ACTS)))  # all done in registers
@pytest.mark.parametrize("name", sorted(DW3))
def test_dw3x3_vs_naive(name, act, residual, dtype):
    from convrt.kernels.conv.dw3x3 import Depthwise3x3

    case, x, wt, b = _dw3(name, dtype, seed=act)
    x *= 4  # into sigmoid's saturating range
    conv = _conv(case, wt, b, dtype, **DW3_ACTS[act])
    assert isinstance(conv._dw, Depthwise3x3)
    ref = _ref(case, x, wt, b)
    res = None
    if residual:
        res = np.random.default_rng(7).standard_normal(ref.shape).astype(dtype)
        ref = ref + res
    out = np.full(conv.out_shape, np.nan, dtype)
    conv(x, out, res)
    np.testing.assert_allclose(out, activation_ref(ref, **DW3_ACTS[act]), **TOL[dtype])


def test_dw3x3_choice(monkeypatch):
    """3x3 / pad 1 / stride 1 or 2 / one channel per group / an in-register activation only;
    everything else (and algo="depthwise") keeps the general kernel.  (Small maps go to the
    channel-blocked kernel first; switched off here to see dw3x3's own rule.)"""
    from convrt.kernels.conv import dwcb
    from convrt.kernels.conv.dw3x3 import Depthwise3x3

    monkeypatch.setattr(dwcb, "MAX_PIXELS", 0)

    def fast(name, **kw):
        case = CASES[name]
        x, wt, b = _data(case, np.float32)
        return isinstance(_conv(case, wt, b, np.float32, **kw)._dw, Depthwise3x3)

    assert fast("mnv2_s1") and fast("mnv2_s2") and fast("7x7_map")
    assert fast("mnv2_s1", activation="clip", clip_min=0.0, clip_max=6.0)
    for name in ("nopad", "asym_pad_s2", "s21", "s3", "5x5", "dil2", "multiplier2",
                 "group4_cg2"):
        assert not fast(name), name
    assert fast("mnv2_s1", activation="silu") and fast("mnv2_s1", activation="sigmoid")
    assert not fast("mnv2_s1", activation="tanh")
    assert not fast("mnv2_s1", algo="depthwise")


@pytest.mark.parametrize("act", ["none", "relu", "clip", "leaky_relu", "sigmoid", "silu",
                                 "hard_swish"])
@pytest.mark.parametrize("name", ["w7", "w33_s2", "w17_h18"])
def test_dw3x3_nan_inf(name, act):
    case, x, wt, b = _dw3(name, np.float32, seed=5)
    x[0, 1, 2, 3 % x.shape[3]] = np.nan
    x[-1, 0, -1, -2] = np.inf
    x[-1, -1, 0, 0] = -np.inf
    kw = dict(activation=act)
    if act == "clip":
        kw.update(clip_min=0.0, clip_max=6.0)
    if act == "hard_swish":
        kw.update(alpha=1 / 6, clip_min=0.5)
    ref = activation_ref(_ref(case, x, wt, b), **kw)
    out = np.empty(_conv(case, wt, b, np.float32, **kw).out_shape, np.float32)
    _conv(case, wt, b, np.float32, **kw)(x, out)
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(out[fin], ref[fin], **TOL[np.float32])


def _plane_both_forms():
    """A caller of ``_dw3_plane`` for stride 1 and silu that picks the neighbour form at run time
    (``SHIFTS``: the library compiles only the host's form; this compiles both, once)."""
    from numba import njit

    from convrt.kernels.conv.dw3x3 import _dw3_plane

    @njit(cache=False)
    def plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm, shifts):
        if shifts:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm, 1, 1, 6)
        else:
            _dw3_plane(x, xo, h_n, w_n, oh_n, ow_n, out, oo, res, has_res, wb, wo, prm, 0, 1, 6)
    return plane


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("name", ["w1", "w7", "w16", "w33", "w17_h18"])
def test_dw3x3_both_neighbour_forms(name, residual):
    """Stride 1 takes a row's neighbours by lane shifts on AVX-512 and by three loads on AVX2
    (``dw3x3.SHIFTS``): both forms, whatever this CPU's, against the reference, plain and
    masked paths alike (rows shorter than, equal to and longer than a vector)."""
    case, x, wt, b = _dw3(name, np.float32, seed=3)
    x *= 4
    conv = _conv(case, wt, b, np.float32, activation="silu")
    dw = conv._dw
    n, c, h, w = x.shape
    ref = _ref(case, x, wt, b)
    res = np.random.default_rng(9).standard_normal(ref.shape).astype(np.float32)
    if residual:
        ref = ref + res
    ref = activation_ref(ref, activation="silu")
    plane = _plane_both_forms()
    for shifts in (0, 1):
        out = np.full(ref.shape, np.nan, np.float32)
        for u in range(n * c):
            plane(x.reshape(-1), u * h * w, h, w, h, w, out.reshape(-1), u * h * w,
                  res.reshape(-1), residual, dw._wb, (u % c) * 10, dw._prm, shifts)
        np.testing.assert_allclose(out, ref, **TOL[np.float32])


@pytest.mark.parametrize("stride", [1, 2])
def test_dw3x3_parallel_bitwise_same_across_thread_counts(stride, monkeypatch):
    from convrt.kernels.conv import dw3x3, dwcb

    monkeypatch.setattr(dwcb, "MAX_PIXELS", 0)  # stride 2's 30x19 map would go there

    case = (4, 128, 60, 37, 128, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1), 128)
    x, wt, b = _data(case, np.float32, seed=2)
    conv = _conv(case, wt, b, np.float32, activation="relu")
    assert conv._dw._kernel is dw3x3._run_par
    ref = activation_ref(_ref(case, x, wt, b), "relu")
    outs = outputs_at_thread_counts(conv, x)
    np.testing.assert_allclose(outs[0], ref, **TOL[np.float32])
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


# ---- depthwise, 16 channels a vector, small maps (kernels/conv/dwcb.py) ----------------------
DWCB = {  # (N, C, H, W, M, kH, kW, strides, pads (t, l, b, r), dilations, group)
    "k5_7x7": (1, 48, 7, 7, 48, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 48),
    "k5_s2_14": (2, 40, 14, 14, 40, 5, 5, (2, 2), (1, 2, 2, 1), (1, 1), 40),
    "k3_14_c17": (1, 17, 14, 14, 17, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 17),
    "k7_14": (1, 32, 14, 14, 32, 7, 7, (1, 1), (3, 3, 3, 3), (1, 1), 32),
    "k3_dil2_s21": (1, 33, 13, 12, 33, 3, 3, (2, 1), (1, 0, 2, 3), (2, 2), 33),
    "k3_nopad_5x9": (2, 16, 5, 9, 16, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 16),
    "k1x3": (1, 20, 6, 30, 20, 1, 3, (1, 1), (0, 1, 0, 1), (1, 1), 20),
    "out_1x1": (1, 16, 5, 5, 16, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 16),
}


def _dwcb(name, dtype, seed=0, **act):
    from convrt.kernels.conv.dwcb import DepthwiseBlocked

    case = DWCB[name]
    x, wt, b = _data(case, dtype, seed=seed)
    conv = _conv(case, wt, b, dtype, **act)
    assert isinstance(conv._dw, DepthwiseBlocked), type(conv._dw)
    return case, x, wt, b, conv


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", range(len(DW3_ACTS)))
@pytest.mark.parametrize("name", sorted(DWCB))
def test_depthwise_blocked_vs_naive(name, act, residual, dtype):
    """Every in-register activation, with and without a residual, in both float types; the
    second call reuses the scratch (zero border) and gives the same bits."""
    case, x, wt, b, conv = _dwcb(name, dtype, seed=act, **DW3_ACTS[act])
    ref = _ref(case, x, wt, b)
    res = None
    if residual:
        res = np.random.default_rng(7).standard_normal(ref.shape).astype(dtype)
        ref = ref + res
    out = np.full(conv.out_shape, np.nan, dtype)
    conv(x, out, res)
    np.testing.assert_allclose(out, activation_ref(ref, **DW3_ACTS[act]), **TOL[dtype])
    again = np.full_like(out, np.nan)
    conv(x, again, res)
    np.testing.assert_array_equal(out, again)


def test_depthwise_blocked_choice():
    """>= 16 channels, one per group, a zero-bordered input of at most 32x32 pixels and an
    in-register activation; larger maps, tanh, fewer channels or channel multipliers keep the planar
    kernels."""
    from convrt.kernels.conv.dwcb import DepthwiseBlocked

    def blocked(case, **kw):
        x, wt, b = _data(case, np.float32)
        return isinstance(_conv(case, wt, b, np.float32, **kw)._dw, DepthwiseBlocked)

    assert all(blocked(c) for c in DWCB.values())
    assert blocked(DWCB["k5_7x7"], activation="hard_swish", alpha=1 / 6, clip_min=0.5)
    assert not blocked(DWCB["k5_7x7"], activation="tanh")
    assert not blocked((1, 16, 31, 30, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 16))
    assert not blocked((1, 16, 56, 56, 16, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 16))
    assert not blocked((1, 15, 7, 7, 15, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 15))
    assert not blocked(CASES["multiplier2"]) and not blocked(CASES["group4_cg2"])


@pytest.mark.parametrize("act", ["none", "relu", "clip", "silu", "hard_swish"])
@pytest.mark.parametrize("name", ["k5_7x7", "k5_s2_14"])
def test_depthwise_blocked_nan_inf(name, act):
    kw = dict(activation=act)
    if act == "clip":
        kw.update(clip_min=0.0, clip_max=6.0)
    if act == "hard_swish":
        kw.update(alpha=1 / 6, clip_min=0.5)
    case, x, wt, b, conv = _dwcb(name, np.float32, seed=5, **kw)
    x[0, 1, 2, 3] = np.nan
    x[-1, 0, -1, -2] = np.inf
    x[-1, -1, 0, 0] = -np.inf
    ref = activation_ref(_ref(case, x, wt, b), **kw)
    out = np.empty(conv.out_shape, np.float32)
    conv(x, out)
    assert np.isnan(ref).any()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(out[fin], ref[fin], **TOL[np.float32])


def test_depthwise_blocked_threads():
    """Bitwise the same at every thread count (a task is always one image x 16 channels), and
    one bound layer called from several threads at once stays correct."""
    case = (2, 96, 14, 14, 96, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 96)
    DWCB["threads"] = case
    try:
        _, x, wt, b, conv = _dwcb("threads", np.float32, seed=2, activation="relu")
    finally:
        del DWCB["threads"]
    outs = outputs_at_thread_counts(conv, x)
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)
    xs = [_data(case, np.float32, seed=s)[0] for s in range(3)]
    refs = [activation_ref(_ref(case, xi, wt, b), "relu") for xi in xs]
    check_concurrent_calls(conv, xs, refs, 20, TOL[np.float32])
