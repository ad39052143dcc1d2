"""The small-map convolution (convrt/kernels/conv/small_maps.py): its pixels run across the
batch's images.  Against the naive numpy reference (``naive.conv2d_ref``), bitwise against the
direct kernel whose sums it reorders only between tiles, with NaN/Inf, residual and every
activation, under both thread counts and from several Python threads at once."""

import numpy as np
import pytest

from convrt.kernels.conv import Conv2d
from convrt.kernels.conv import small_maps
from kernel_threads import check_concurrent_calls, outputs_at_thread_counts
from naive import activation_ref, conv2d_ref

TOL = dict(rtol=1e-4, atol=1e-5)
# the algorithm exists on CPUs with AVX2 (1x5 tiles) or AVX-512 (2x14); on others no layer
# takes it (test_refused_on_a_cpu_without_its_tile)
needs_it = pytest.mark.skipif(not small_maps.supported(),
                              reason="this CPU has neither AVX2 nor AVX-512: no small_maps")
# AVX2 also gives it batch-1 rows of up to 7 pixels and deep 1x1 layers up to 14
needs_avx2_rules = pytest.mark.skipif(small_maps.MAX_ROW < 7,
                                      reason="the AVX2 rules (this CPU has AVX-512)")

# (N, C, H, W, M, kH, kW, strides, pads (t, l, b, r), dilations): ResNet's last stages (2x2
# and 4x4 maps, the stride-2 entries and 1x1 downsample), M not a multiple of the 32-channel
# block, pixels not a multiple of the 14-pixel panel (an image split between panels),
# asymmetric pads, dilation, a 1-pixel map, a 7x7 window over a 4x4 map
CASES = {
    "resnet_2x2": (8, 64, 2, 2, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "resnet_s2": (8, 32, 4, 4, 64, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    "downsample": (8, 32, 4, 4, 64, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1)),
    "m40_k20": (5, 24, 2, 2, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "4x4_k27_asym": (3, 16, 5, 4, 70, 3, 2, (1, 1), (0, 1, 1, 0), (1, 1)),
    "dilated": (4, 8, 6, 6, 33, 3, 3, (1, 1), (1, 1, 1, 1), (2, 2)),
    "1px": (16, 12, 3, 3, 20, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1)),
    "7x7_on_4x4": (3, 4, 4, 4, 16, 7, 7, (1, 1), (3, 3, 3, 3), (1, 1)),
}
ACTS = [dict(activation="none"), dict(activation="relu"),
        dict(activation="clip", clip_min=-0.5, clip_max=0.5),
        dict(activation="leaky_relu", alpha=0.1), dict(activation="sigmoid")]


def _data(case, seed=0):
    n, c, h, w, m, kh, kw = case[:7]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c, kh, kw)) / np.sqrt(c * kh * kw)).astype(np.float32)
    return x, wt, rng.standard_normal(m).astype(np.float32)


def _conv(case, wt, b, algo="auto", **act):
    return Conv2d(wt, b, case[:4], case[7], case[8], case[9], 1, algo=algo, **act)


# (as CASES) layers that take it on AVX2: ResNet-50's last stage (3x3 and deep 1x1 on 7x7, its
# stride-2 downsample to 14x14) at batch 1, and a deep 1x1 batch of 3 (``fill_rows`` deals its
# 147 pixels into panels across the images, the last one ended by zeros)
CASES_AVX2 = {
    "3x3_7x7_b1": (1, 24, 7, 7, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "deep_1x1_7x7": (1, 512, 7, 7, 520, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "deep_1x1_7x7_b3": (3, 320, 7, 7, 330, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "deep_1x1_s2_14": (1, 512, 28, 28, 512, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1)),
}


@needs_it
@pytest.mark.parametrize("act", range(len(ACTS)))
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_and_the_direct_kernel_bitwise(name, act):
    _check_against_reference_and_direct(CASES[name], act)


@needs_avx2_rules
@pytest.mark.parametrize("act", [0, 1, 4])
@pytest.mark.parametrize("name", sorted(CASES_AVX2))
def test_avx2_batch1_layers_match_reference_and_direct_bitwise(name, act):
    _check_against_reference_and_direct(CASES_AVX2[name], act)


@needs_avx2_rules
def test_avx2_rules():
    """On AVX2: 7x7 rows at batch 1; 1x1 layers on 7x7 maps when both channel counts are
    320+, strided to 14-pixel rows when 512+; EfficientNet's 192->1152 on 7x7 goes to the
    pixel kernel, and so does a unit-stride deep 1x1 layer on 14x14 (ResNet-50's layer3)."""
    for case in CASES_AVX2.values():
        assert _conv(case, *_data(case)[1:]).algo == "small_maps"
    shallow = (1, 192, 7, 7, 1152, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1))
    assert _conv(shallow, *_data(shallow)[1:]).algo == "pixel"
    layer3 = (1, 256, 14, 14, 1024, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1))
    assert _conv(layer3, *_data(layer3)[1:]).algo == "pixel"
    wide = (1, 24, 8, 8, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1))
    assert _conv(wide, *_data(wide)[1:]).algo != "small_maps"


def _check_against_reference_and_direct(case, act):
    x, wt, b = _data(case)
    x[0, 0, 0, 0] = np.nan  # NaN and Inf reach exactly the outputs that read them
    x[-1, -1, -1, -1] = np.inf
    conv = _conv(case, wt, b, **ACTS[act])
    assert conv.algo == "small_maps"
    out = np.full(conv.out_shape, 7.0, np.float32)  # every output must be written
    res = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    conv(x, out, res)
    ref = activation_ref(conv2d_ref(x, wt, b, case[7], case[8], case[9], 1) + res,
                         **ACTS[act])
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    fin = np.isfinite(ref)
    assert fin.any()  # the images between the first and the last
    np.testing.assert_allclose(out[fin], ref[fin], **TOL)
    direct = _conv(case, wt, b, algo="direct", **ACTS[act])
    want = np.empty_like(out)
    direct(x, want, res)
    np.testing.assert_array_equal(out, want)  # NaN positions too


@needs_it
def test_which_layers_take_it():
    """Rows of at most MAX_ROW pixels with a panel's worth of batch pixels; not a batch of one
    2x2 map (4 pixels), not wider rows, not groups, not float64."""
    case = CASES["resnet_2x2"]
    _, wt, b = _data(case)
    assert _conv(case, wt, b).algo == "small_maps"
    assert Conv2d(wt, b, (1,) + case[1:4], pads=(1, 1, 1, 1)).algo != "small_maps"
    assert Conv2d(wt, b, (8, 64, 8, 8), pads=(1, 1, 1, 1)).algo != "small_maps"
    assert small_maps.MAX_ROW < 8
    wt2 = wt[:, :32]
    assert Conv2d(wt2, b, case[:4], pads=(1, 1, 1, 1), group=2).algo != "small_maps"
    assert Conv2d(wt.astype(np.float64), b, case[:4], pads=(1, 1, 1, 1),
                  dtype=np.float64).algo != "small_maps"


def test_refused_on_a_cpu_without_its_tile():
    """A CPU with neither AVX2 nor AVX-512 (16 registers of 128 bits) has no register tile for
    it: ``supported`` is False and no layer is accepted there."""
    from convrt.kernels.conv._base import ConvLayer
    from convrt.kernels.conv._microkernel import Cpu

    sse = Cpu(128, 16, False)
    assert not small_maps.supported(sse)
    for case in CASES.values():
        n, c, h, w, m, kh, kw = case[:7]
        layer = ConvLayer.build((m, c, kh, kw), (n, c, h, w), case[7], case[8], case[9], 1,
                                "none", 0.01, -np.inf, np.inf, np.float32)
        assert not small_maps.SmallMaps.accepts(layer, sse)


def test_forcing_it_on_a_layer_it_does_not_take_is_refused():
    """``algo="small_maps"`` on a layer outside its conditions: a ValueError, not a kernel
    run on shapes it assumes away."""
    case = CASES["resnet_2x2"]
    _, wt, b = _data(case)
    for shape, kw in (((8, 64, 8, 8), {}), ((1, 64, 2, 2), {}),
                      (case[:4], dict(dtype=np.float64))):
        with pytest.raises(ValueError, match="small_maps"):
            Conv2d(wt, b, shape, pads=(1, 1, 1, 1), algo="small_maps", **kw)


@needs_it
def test_repack_takes_new_weights():
    case = CASES["resnet_s2"]
    x, wt, b = _data(case)
    conv = _conv(case, wt, b)
    wt2 = -2 * wt[:, :, ::-1, ::-1]  # a strided view, as training's dX passes
    assert conv.repack(wt2, b)
    out = np.empty(conv.out_shape, np.float32)
    conv(x, out)
    np.testing.assert_allclose(out, conv2d_ref(x, wt2, b, case[7], case[8], case[9], 1), **TOL)


@needs_it
def test_bitwise_same_across_thread_counts():
    case = CASES["m40_k20"]
    x, wt, b = _data(case)
    outs = outputs_at_thread_counts(_conv(case, wt, b, activation="relu"), x)
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


@needs_it
def test_threads_share_one_conv():
    """The panels live in each calling thread's scratch."""
    case = CASES["resnet_s2"]
    _, wt, b = _data(case)
    conv = _conv(case, wt, b)
    xs = [_data(case, seed=s)[0] for s in range(4)]
    refs = [conv2d_ref(x, wt, b, case[7], case[8], case[9], 1) for x in xs]
    check_concurrent_calls(conv, xs, refs, 10, TOL)


@needs_it
def test_bitwise_equal_to_the_flat_kernels_whatever_another_process_cached_first(tmp_path):
    """With an empty cache, one process runs the element-wise sigmoid and SiLU (caching their
    kernels), then another compiles the conv kernel with those activations: its epilogue must
    still give the flat kernels' values bit for bit, applied to its own output without an
    activation.  While the scalar helpers were cached on their own, conv kernels compiled
    against the cached helper disagreed by up to 2 ulp (kernels/elementwise.py says why they
    are not cached)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    first = ("import numpy as np\n"
             "from convrt.kernels import elementwise as K\n"
             "x = np.linspace(-9, 9, 4096, dtype=np.float32)\n"
             "K._sigmoid32(x, np.empty_like(x)); K._silu32(x, np.empty_like(x))\n")
    second = ("import numpy as np\n"
              "from convrt.kernels import elementwise as K\n"
              "import test_kernels_conv_small_maps as t\n"
              "case = t.CASES['resnet_2x2']\n"
              "x, wt, b = t._data(case)\n"
              "def run(act):\n"
              "    conv = t._conv(case, wt, b, algo='small_maps', activation=act)\n"
              "    out = np.empty(conv.out_shape, np.float32)\n"
              "    conv(x, out, None)\n"
              "    return out\n"
              "plain = run('none')\n"
              "for act, flat in (('sigmoid', K._sigmoid32), ('silu', K._silu32)):\n"
              "    want = np.empty_like(plain)\n"
              "    flat(plain.ravel(), want.ravel())\n"
              "    np.testing.assert_array_equal(run(act), want)\n"
              "print('ok')\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    here = Path(__file__).resolve().parent
    for code in (first, second):
        out = subprocess.run([sys.executable, "-c", code], cwd=here, env=env, text=True,
                             capture_output=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok"]
