"""The small-map convolution input gradient (convrt/train/kernels/conv_dx.py) against a
float64 numpy reference written here from the definition (dX scatters dY through every tap),
with NaN/Inf, at both thread counts, and in a Trainer against the same model in float64."""

import numba
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convrt.train import Trainer
from convrt.train.grads import conv as conv_grads
from convrt.train.kernels import conv_dx as DX


def reference_dx(dy, w, x_shape, kernel, strides, dilations, pads):
    """dX[n, c, y, x] = sum of dY[n, m, oh, ow] * W[m, c, a, b] over the (oh, ow, a, b) whose
    window puts tap (a, b) on (y, x): every tap's contribution added into a zero-padded
    canvas, in float64."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = kernel, strides, dilations, pads
    n, c, h, wd = x_shape
    oh, ow = dy.shape[2:]
    big = np.zeros((n, c, h + pt + oh * sh + kh * dh, wd + pl + ow * sw + kw * dw))
    for a in range(kh):
        for b in range(kw):
            big[:, :, a * dh:a * dh + oh * sh:sh, b * dw:b * dw + ow * sw:sw] += np.einsum(
                "nmpq,mc->ncpq", dy.astype(np.float64), w[:, :, a, b].astype(np.float64))
    return big[:, :, pt:pt + h, pl:pl + wd]


def run_dx(dy, w, x_shape, kernel, strides, dilations, pads):
    gx = np.full(x_shape, np.nan, np.float32)  # every cell must be written
    assert DX.applies(gx, dy, w, 1)
    DX.input_grad({}, dy, w, gx, kernel, strides, dilations, pads)
    return gx


def out_size(h, k, s, d, p0, p1):
    return (h + p0 + p1 - d * (k - 1) - 1) // s + 1


# (images, channels, H, W, output channels, kernel, stride, dilation, pads t/l/b/r):
# ResNet's 2x2 and 4x4 layers (3x3, stride 1 and 2, the 1x1 downsample), C*kH*kW not a
# multiple of the 14-row tile (the last one shifted back), images x pixels not a multiple of
# 32, asymmetric pads, dilation, cells no window reads (stride 3)
CASES = [(8, 64, 2, 2, 64, 3, 1, 1, (1, 1, 1, 1)), (8, 32, 4, 4, 48, 3, 2, 1, (1, 1, 1, 1)),
         (8, 32, 4, 4, 48, 1, 2, 1, (0, 0, 0, 0)), (5, 7, 4, 4, 20, 3, 1, 1, (1, 1, 1, 1)),
         (3, 5, 5, 4, 9, 3, 1, 1, (0, 1, 2, 1)), (2, 6, 6, 6, 33, 3, 1, 2, (1, 1, 1, 1)),
         (4, 8, 9, 9, 16, 2, 3, 1, (0, 0, 0, 0)), (1, 2, 3, 4, 5, 7, 1, 1, (3, 3, 3, 3))]


@pytest.mark.parametrize("case", CASES)
def test_input_gradient_matches_definition(case):
    n, c, h, w_, m, k, s, d, p = case
    oh, ow = out_size(h, k, s, d, p[0], p[2]), out_size(w_, k, s, d, p[1], p[3])
    rng = np.random.default_rng(0)
    dy = rng.standard_normal((n, m, oh, ow)).astype(np.float32)
    w = rng.standard_normal((m, c, k, k)).astype(np.float32)
    geo = ((k, k), (s, s), (d, d), p[:2])
    got = run_dx(dy, w, (n, c, h, w_), *geo)
    want = reference_dx(dy, w, (n, c, h, w_), *geo)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_nan_and_inf_reach_exactly_the_cells_that_read_them():
    n, c, h, m = 8, 16, 4, 24
    rng = np.random.default_rng(1)
    dy = rng.standard_normal((n, m, h, h)).astype(np.float32)
    w = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
    dy[0, 3, 0, 0] = np.nan
    dy[5, 1, 3, 2] = np.inf
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    got = run_dx(dy, w, (n, c, h, h), *geo)
    want = reference_dx(dy, w, (n, c, h, h), *geo)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    assert fin.sum() > want.size // 2
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-4)


def test_result_does_not_depend_on_the_thread_count():
    rng = np.random.default_rng(2)
    dy = rng.standard_normal((8, 40, 2, 2)).astype(np.float32)
    w = rng.standard_normal((40, 20, 3, 3)).astype(np.float32)
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run_dx(dy, w, (8, 20, 2, 2), *geo)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run_dx(dy, w, (8, 20, 2, 2), *geo)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, two)


def _small_net(rng):
    """conv 3->20 (3x3, stride 2, pad 1) -> Relu -> conv 20->24 (3x3, pad 1) -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm 24->5 on 8x3x8x8: both 4x4 maps."""
    def init(name, *shape):
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.3).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "dx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 5])],
        [init("w1", 20, 3, 3, 3), init("b1", 20), init("w2", 24, 20, 3, 3), init("fc", 5, 24),
         init("fcb", 5)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_trainer_gradients_through_it_match_float64(monkeypatch):
    """The second convolution's dX takes this path (the first needs none); every weight
    gradient upstream of it matches the float64 model's (whose dX takes the others)."""
    from test_torch_families import as_float64

    calls = []
    real = DX.input_grad
    monkeypatch.setattr(conv_grads.DX, "input_grad",
                        lambda cache, dy, *a: calls.append(dy.shape) or real(cache, dy, *a))
    rng = np.random.default_rng(3)
    model = _small_net(rng)
    x = rng.standard_normal((8, 3, 8, 8), dtype=np.float32)
    y = np.array([0, 1, 2, 4, 3, 1, 0, 2])
    g32 = Trainer(model).gradients({"x": x}, y)
    assert calls == [(8, 24, 4, 4)]
    g64 = Trainer(as_float64(onnx.ModelProto.FromString(model.SerializeToString()))).gradients(
        {"x": x.astype(np.float64)}, y)
    for name in ("w1", "b1", "w2"):
        scale = np.abs(g64[name]).max()
        assert np.abs(g32[name] - g64[name]).max() <= 1e-5 * scale, name
