"""The convolution weight gradient on the inference microkernel (convrt/train/kernels/conv_dw.py,
both variants) against a float64 numpy reference written here from the definition, and in a
Trainer against the same model computed in float64 (whose weight gradients take the BLAS
path)."""

import numba
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from convrt.train import Trainer
from convrt.train.grads import conv as conv_grads
from convrt.train.kernels import conv_dw as DW


def reference_dw(x, dy, kernel, strides, dilations, pads):
    """dW[m, c, a, b] = sum over images and output pixels of dY * the input under tap (a, b),
    in float64: zero padding, then one strided window per tap."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = kernel, strides, dilations, pads
    n, c, h, w = x.shape
    oh, ow = dy.shape[2:]
    big = np.zeros((n, c, h + pt + oh * sh + kh * dh, w + pl + ow * sw + kw * dw))
    big[:, :, pt:pt + h, pl:pl + w] = x
    out = np.zeros((dy.shape[1], c, kh, kw))
    for a in range(kh):
        for b in range(kw):
            win = big[:, :, a * dh:a * dh + oh * sh:sh, b * dw:b * dw + ow * sw:sw]
            out[:, :, a, b] = np.einsum("nmpq,ncpq->mc", dy.astype(np.float64), win)
    return out


def run_dw(x, dy, kernel, strides, dilations, pads, step):
    """The kernel's dW over chunks of ``step`` images, (M, C, kH, kW); ``step`` "rows": the
    variant for short reductions (the whole batch at once), "gather": the same with its panels
    gathered (small maps)."""
    n, c = x.shape[:2]
    m, oh, ow = dy.shape[1:]
    kh, kw = kernel
    if step in ("rows", "gather"):
        bufs = DW.DwRowsBuffers(m, c * kh * kw, n * oh * ow, np.float32)
        if step == "gather":
            bufs.tab = DW.gather_table(c, x.shape[2], x.shape[3], kh, kw, *strides, *dilations,
                                       *pads, oh, ow, bufs.cp.shape[0] * DW.WD)
        gw = np.full((m, c * kh * kw), np.nan, dtype=np.float32)
        DW.weight_grad_rows(bufs, x, dy.reshape(n, m, -1), gw,
                            (kernel, strides, dilations, pads, (oh, ow)))
        return gw.reshape(m, c, kh, kw)
    bufs = DW.DwBuffers(m, c * kh * kw, step * oh * ow, np.float32)
    gw = np.full((m, c * kh * kw), np.nan, dtype=np.float32)  # every cell must be written
    geo = (kernel, strides, dilations, pads, (oh, ow))
    for n0 in range(0, n, step):
        DW.weight_grad_chunk(bufs, x, dy.reshape(n, m, -1), gw, n0, min(n, n0 + step), geo,
                             n0 == 0)
    return gw.reshape(m, c, kh, kw)


def out_size(h, k, s, d, p):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


# (images, channels, size, output channels, kernel, stride, dilation, pad, images per chunk):
# M not a multiple of the 32-channel block, C*kH*kW not a multiple of the 14-column tile,
# a reduction past one 1024-row piece with a partial last piece, a partial last chunk
CASES = [(3, 5, 9, 40, 3, 1, 1, 1, 3), (3, 5, 9, 40, 3, 1, 1, 1, 2),
         (2, 64, 16, 64, 3, 1, 1, 1, 2), (3, 7, 21, 33, 3, 1, 1, 1, 3),
         (4, 17, 11, 70, 3, 2, 1, 1, 3), (2, 8, 10, 16, 1, 1, 1, 0, 2),
         (2, 3, 20, 64, 7, 2, 1, 3, 1), (1, 6, 12, 70, 3, 1, 2, 2, 1)]
# the rows variant: M >= 14 and not a multiple of 14 (the last tile shifted back), C*kH*kW not
# a multiple of the 32-column block
CASES += list(dict.fromkeys(case[:-1] + ("rows",) for case in CASES if case[3] >= DW.TR))
CASES += [(8, 512, 2, 512, 3, 1, 1, 1, "rows"), (2, 7, 6, 14, 3, 2, 1, 1, "rows")]
# the gathered rows variant (small output maps): ResNet-18's last stages at 64x64 (batch 8: 2x2
# maps, a strided 4x4 -> 2x2, a 1x1 stride-2 downsample), a dilated one
CASES += list(dict.fromkeys(
    case[:-1] + ("gather",) for case in CASES
    if case[3] >= DW.TR and out_size(*case[2:3], *case[4:8]) ** 2 <= DW.GATHER_PIXELS_ROWS))
CASES += [(8, 256, 4, 512, 3, 2, 1, 1, "gather"), (8, 256, 4, 512, 1, 2, 1, 0, "gather"),
          (3, 9, 7, 20, 3, 1, 2, 2, "gather")]


@pytest.mark.parametrize("n,c,h,m,k,s,d,p,step", CASES)
def test_weight_gradient_matches_definition(n, c, h, m, k, s, d, p, step):
    rng = np.random.default_rng(n * 1000 + c * 10 + m)
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    o = out_size(h, k, s, d, p)
    dy = rng.standard_normal((n, m, o, o), dtype=np.float32)
    ref = reference_dw(x, dy, (k, k), (s, s), (d, d), (p, p))
    got = run_dw(x, dy, (k, k), (s, s), (d, d), (p, p), step)
    assert np.abs(got - ref).max() <= 2e-6 * np.abs(ref).max() * np.sqrt(n * o * o)


@pytest.mark.parametrize("step", [2, "rows", "gather"])
def test_nan_and_inf_reach_exactly_the_taps_that_read_them(step):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6, 6), dtype=np.float32)
    x[1, 2, 0, 0] = np.nan  # a corner: read by taps (1..2, 1..2) only
    x[0, 3, 3, 3] = np.inf
    dy = np.abs(rng.standard_normal((2, 8, 6, 6), dtype=np.float32)) + 0.5  # no inf - inf
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    ref = reference_dw(x, dy, *geo)
    got = run_dw(x, dy, *geo, step)
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.isnan(got).any()
    assert np.array_equal(np.isposinf(got), np.isposinf(ref)) and np.isposinf(got).any()


@pytest.mark.parametrize("step", [2, "rows", "gather"])
def test_result_does_not_depend_on_the_thread_count(step):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 16, 24, 24), dtype=np.float32)
    dy = rng.standard_normal((4, 48, 24, 24), dtype=np.float32)
    geo = ((3, 3), (1, 1), (1, 1), (1, 1))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run_dw(x, dy, *geo, step)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run_dw(x, dy, *geo, step)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, two)


def _conv_net(rng, size):
    """conv 3->40 (3x3, pad 1) -> Relu -> conv 40->36 (3x3, pad 1) -> GlobalAveragePool ->
    Flatten -> Gemm 36->5 on 4x3xSIZExSIZE: both convolutions reduce over 4*SIZE^2 rows."""
    def init(name, *shape):
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.2).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
        [init("w1", 40, 3, 3, 3), init("b1", 40), init("w2", 36, 40, 3, 3), init("b2", 36),
         init("fc", 5, 36), init("fcb", 5)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("size,variant,gathered", [(32, "weight_grad_chunk", False),
                                                   (24, "weight_grad_rows", False),
                                                   (6, "weight_grad_rows", True)])
def test_trainer_gradients_on_the_microkernel_match_float64(monkeypatch, size, variant,
                                                            gathered):
    """32x32: 4096 reduction rows (the column variant); 24x24: 2304 (the rows variant); 6x6:
    144 (the rows variant, its panels gathered: small maps)."""
    from test_torch_families import as_float64

    calls = []
    real = getattr(DW, variant)

    def spy(*a):
        assert (getattr(a[0], "tab", None) is not None) == gathered
        calls.append(a[1].shape)
        return real(*a)

    monkeypatch.setattr(conv_grads.DW, variant, spy)
    rng = np.random.default_rng(3)
    model = _conv_net(rng, size)
    x = rng.standard_normal((4, 3, size, size), dtype=np.float32)
    y = np.array([0, 1, 2, 4])
    g32 = Trainer(model).gradients({"x": x}, y)
    assert {s[1] for s in calls} == {3, 40}  # both convolutions took this variant
    g64 = Trainer(as_float64(onnx.ModelProto.FromString(model.SerializeToString()))).gradients(
        {"x": x.astype(np.float64)}, y)
    for name in ("w1", "w2"):
        scale = np.abs(g64[name]).max()
        assert np.abs(g32[name] - g64[name]).max() <= 1e-5 * scale, name
