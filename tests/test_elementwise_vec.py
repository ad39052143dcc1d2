"""The vectorized float32 exp/sigmoid/tanh/SiLU kernels (``convrt.kernels.elementwise``) against
numpy in float64 (the oracle, rounded once), over every float32 exponent, both signs, +-0, +-inf,
NaN and denormals.

Measured bounds (this grid, 4.3 M values): exp 0.94 ulp, sigmoid 2.2 ulp, tanh 1.25 ulp, SiLU
2.8 ulp where its sigmoid is a normal float (numpy's own float32 exp is 2.3 ulp here).  Below
that (x < -87.33) SiLU is flushed to -0: numpy's value there is x times a denormal sigmoid,
smaller than 1.2e-36 in magnitude.
"""

import numpy as np
import pytest

from convrt.kernels import elementwise as K

SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, -1e-40, 88.72, 88.73,
            -87.3, -88.7, -103.9, -104.0, 89.0, 9.0, -9.0, 0.625, -0.625, 17.0, -17.0,
            3.4028235e38, -3.4028235e38, 1.1754944e-38]


def _grid():
    bits = np.arange(0, 2 ** 32, 997, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([bits.view(np.float32), np.array(SPECIALS, np.float32)])


X = _grid()


def _ref(name, x64):
    with np.errstate(all="ignore"):
        return {"exp": np.exp, "sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh,
                "silu": lambda v: v / (1 + np.exp(-v))}[name](x64)


def _ulps(got, ref64):
    """Error of float32 ``got`` in units of the float32 spacing at the exact value ``ref64``."""
    with np.errstate(over="ignore"):
        sp = np.spacing(np.abs(ref64.astype(np.float32))).astype(np.float64)
    return np.abs(got.astype(np.float64) - ref64) / sp


@pytest.mark.parametrize("name,bound", [("exp", 1.0), ("sigmoid", 2.5), ("tanh", 1.5),
                                        ("silu", 3.0)])
def test_float32_accuracy_and_special_values(name, bound):
    out = np.full_like(X, 7.0)
    getattr(K, name)(X, out)
    ref64 = _ref(name, X.astype(np.float64))
    ref = ref64.astype(np.float32)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    special = ~np.isfinite(ref) & ~np.isnan(ref)
    np.testing.assert_array_equal(out[special], ref[special])  # +-inf where numpy's is
    fin = np.isfinite(ref)
    if name == "silu":  # x * (denormal sigmoid, x < -87.33): flushed to -0
        tiny = X < -87.33
        assert np.all(out[fin & tiny] == 0) and np.all(np.signbit(out[fin & tiny]))
        assert np.abs(ref64[fin & tiny]).max() < 1.2e-36
        fin &= ~tiny
    err = _ulps(out[fin], ref64[fin])
    assert err.max() <= bound, (name, err.max(), X[fin][np.argmax(err)])
    # signed zeros as numpy: tanh(-0) = -0, silu(-0) = -0, exp(-inf) = +0, sigmoid(-inf) = +0
    z = np.array([-0.0, 0.0, -np.inf], np.float32)
    oz = np.empty_like(z)
    getattr(K, name)(z, oz)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(np.signbit(oz), np.signbit(_ref(name, z)))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, K.CHUNK - 1, K.CHUNK + 3, 3 * K.CHUNK + 5])
def test_chunk_edges(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 10
    for name in ("exp", "sigmoid", "tanh", "silu"):
        out = np.full(n, np.nan, np.float32)
        getattr(K, name)(x, out)
        np.testing.assert_allclose(out, _ref(name, x.astype(np.float64)), rtol=3e-7, atol=0)


@pytest.mark.parametrize("name", ["exp", "sigmoid", "tanh", "silu"])
def test_float64_keeps_libm_accuracy(name):
    x = np.concatenate([np.linspace(-800, 800, 20001), [np.nan, np.inf, -np.inf, -0.0, 5e-324]])
    out = np.empty_like(x)
    getattr(K, name)(x, out)
    with np.errstate(all="ignore"):
        ref = _ref(name, x)
    # atol: below -745 the kernel's e / (1 + e) keeps the denormal 5e-324 where the oracle's
    # 1 / (1 + exp(-x)) overflows to 0
    np.testing.assert_allclose(out, ref, rtol=1e-15, atol=1e-300)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))


def test_sigmoid_op_float64_and_float16_inputs():
    """Sigmoid on float64 runs the libm kernel; on float16 the op says so in one line."""
    import onnx
    from onnx import TensorProto, helper

    import convrt
    from convrt.errors import ConvrtError

    for et, dt in ((TensorProto.DOUBLE, np.float64), (TensorProto.FLOAT16, np.float16)):
        g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", et, [3, 4])],
                              [helper.make_tensor_value_info("y", et, [3, 4])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        x = np.linspace(-30, 30, 12).reshape(3, 4).astype(dt)
        try:
            sess = convrt.InferenceSession(m.SerializeToString())
        except ConvrtError as e:
            assert dt == np.float16 and "\n" not in str(e)
            continue
        (y,) = sess.run(None, {"x": x})
        ref = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(dt)
        np.testing.assert_allclose(y, ref, rtol=1e-3 if dt == np.float16 else 1e-15)
    assert onnx  # imported for helper


@pytest.mark.parametrize("shape, axis", [((3, 1000), -1), ((1, 16, 4, 2100), 1), ((2, 5, 67), 1),
                                         ((2, 3, 5, 7), 2), ((9, 1), 1), ((2, 9, 130), -2)])
@pytest.mark.parametrize("log", [False, True])
def test_float32_softmax_against_float64_numpy(shape, axis, log):
    """Softmax/LogSoftmax float32 (``kernels.softmax.softmax32``: rows when the axis is last,
    blocks of inner positions otherwise) against float64 numpy; a NaN poisons its own line only,
    an +inf logit takes the line to NaN as in numpy's exp(inf - inf), -inf gives 0 (or -inf)."""
    import convrt
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    flat = x.reshape(-1)
    flat[[1, 7]] = [np.nan, -np.inf]
    if x.size > 40:
        flat[40] = np.inf
    op = "LogSoftmax" if log else "Softmax"
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], axis=axis)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    got = convrt.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        z = x64 - x64.max(axis=axis, keepdims=True)
        e = np.exp(z)
        want = z - np.log(e.sum(axis=axis, keepdims=True)) if log else \
            e / e.sum(axis=axis, keepdims=True)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    ok = np.isfinite(want)
    err = np.abs(got[ok] - want[ok])
    assert err.max() <= (4e-7 * np.maximum(np.abs(want[ok]), 1)).max() + 1e-7, err.max()


@pytest.mark.parametrize("name", ["sigmoid", "silu"])
def test_conv_epilogue_equals_the_flat_kernel_bitwise(name):
    """The conv epilogues' vector form (``conv/_ir.VecIR.sigmoid``, applied in registers by an
    identity 1x1 convolution here) and the flat kernel compute the same float32 operations:
    equal bit for bit over the whole grid (the range reduction's fused multiply-adds are
    written out in both; before, LLVM contracted them in the conv kernels only, and 9 in 262k
    SiLU values differed)."""
    from convrt.kernels.conv import Conv2d

    fin = X[np.isfinite(X)]  # 0 * inf in the other channels' terms would make NaN
    n = fin.size // 16 * 16
    x = fin[:n].reshape(1, 16, n // 16, 1).copy()
    eye = np.eye(16, dtype=np.float32).reshape(16, 16, 1, 1)
    conv = Conv2d(eye, None, x.shape, activation=name)
    got = np.empty(conv.out_shape, np.float32)
    conv(x, got)
    want = np.empty(n, np.float32)
    getattr(K, name)(x.reshape(-1), want)
    np.testing.assert_array_equal(got.reshape(-1), want)
