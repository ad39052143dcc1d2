"""Seed models for the fuzzer: the committed samples, builder graphs and tiny per-op graphs.

Each seed is ``(name, serialized ModelProto bytes)``; the fuzzer mutates copies of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"

# Tiny graphs covering every registered op and its attribute forms (opset 13 unless said).
_TEXT = {
    "conv_pool": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,2,6,6] x) => (float[N,4] y) {
            c = Conv <kernel_shape=[3,3], pads=[1,1,1,1], strides=[1,1], group=2> (x, w, b)
            r = LeakyRelu <alpha=0.1> (c)
            p = MaxPool <kernel_shape=[2,2], strides=[2,2], ceil_mode=1> (r)
            a = AveragePool <kernel_shape=[3,3], pads=[1,1,1,1], count_include_pad=1> (p)
            gp = GlobalAveragePool (a)
            gm = GlobalMaxPool (p)
            s = Add (gp, gm)
            y = Flatten <axis=1> (s)
        }""",
    "conv1d_gemm": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,8] x) => (float[1,5] y) {
            c = Conv <kernel_shape=[3], dilations=[2], strides=[1], pads=[2,2]> (x, w)
            t = Tanh (c)
            f = Flatten (t)
            y = Gemm <alpha=0.5, beta=1.0, transB=1> (f, wg, bg)
        }""",
    "shape_ops": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N,2,3,4] x) => (float[N,3,8] y, int64[4] s) {
            s = Shape (x)
            n = Gather <axis=0> (s, i0)
            n1 = Unsqueeze (n, ax0)
            shp = Concat <axis=0> (n1, tail)
            r = Reshape (x, shp)
            q = Unsqueeze (r, ax0)
            sq = Squeeze (q, ax0)
            m = Mul (sq, sq)
            d = Div (m, two)
            y = Sub (d, sq)
        }""",
    "matmul_softmax": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3,4] x) => (float[2,3,5] y, float[2,1,5] z) {
            m = MatMul (x, w)
            sm = Softmax <axis=-1> (m)
            ls = LogSoftmax <axis=1> (m)
            y = Add (sm, ls)
            z = ReduceMean <axes=[1], keepdims=1> (y)
        }""",
    "bn_clip_cast": """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,4,4] x) => (float[1,3,4,4] y, int32[1,3,4,4] yi) {
            b = BatchNormalization <epsilon=1e-5> (x, sc, bi, mu, va)
            c = Clip (b, lo, hi)
            s = Sigmoid (c)
            i = Identity (s)
            dr = Dropout (i)
            y = Relu (dr)
            yi = Cast <to=6> (y)
        }""",
    "old_opset": """
        <ir_version: 7, opset_import: ["" : 12]>
        g (float[1,4] x) => (float[1,4] y) {
            k = Constant <value_floats=[1.0, 2.0, 3.0, 4.0]> ()
            a = Mul (x, k)
            c = Clip (a, lo, hi)
            s = Softmax <axis=1> (c)
            q = Unsqueeze <axes=[0]> (s)
            r = Squeeze <axes=[0]> (q)
            y = ReduceMean <axes=[0], keepdims=1> (r)
        }""",
    "tensor_ops": """
        <ir_version: 8, opset_import: ["" : 14]>
        g (float[2,2,4,4] x) => (float[2,3,8,10] y, float[4,2,4,2] t, float[2,3] k) {
            p = Pad <mode="constant"> (x, pads, pv)
            s = Slice (p, st, en, ax, sp)
            ct = ConvTranspose <strides=[2,2], pads=[1,1,1,1], output_padding=[1,1]> (s, wt, bt)
            pr = PRelu (ct, slope)
            l = LRN <size=3> (pr)
            e = Elu <alpha=0.5> (l)
            hs = HardSwish (e)
            hg = HardSigmoid (hs)
            mx = Max (hg, e)
            mn = Min (mx, hs)
            sm = Sum (mn, mx)
            me = Mean (sm, mn)
            ab = Mul (me, me)
            q = Sqrt (ab)
            ex = Exp (q)
            lg = Log (ex)
            y = Pow (lg, two)
            t = Transpose <perm=[2,0,3,1]> (x)
            k = ConstantOfShape <value=float[1] {1.5}> (kshape)
        }""",
}


def _inits(name: str, rng) -> dict[str, np.ndarray]:
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    return {
        "conv_pool": {"w": f(4, 1, 3, 3), "b": f(4)},
        "conv1d_gemm": {"w": f(2, 3, 3), "wg": f(5, 16), "bg": f(5)},
        "shape_ops": {"i0": np.array(0, np.int64), "ax0": i64(0), "tail": i64(3, 8), "two": np.float32(2)},
        "matmul_softmax": {"w": f(4, 5)},
        "bn_clip_cast": {"sc": f(3), "bi": f(3), "mu": f(3),
                         "va": np.abs(f(3)) + np.float32(0.5),
                         "lo": np.float32(-1), "hi": np.float32(1)},
        "old_opset": {"lo": np.float32(-2), "hi": np.float32(2)},
        "tensor_ops": {"pads": i64(0, 0, 1, 1, 0, 0, 1, 1), "pv": np.float32(0.5),
                       "st": i64(0, 1), "en": i64(4, 6), "ax": i64(2, 3), "sp": i64(1, 1),
                       "wt": f(2, 3, 3, 3), "bt": f(3), "slope": f(3, 1, 1) * 0.1,
                       "two": np.float32(2), "kshape": i64(2, 3)},
    }[name]


def tiny_models() -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(0)
    out = {}
    for name, text in _TEXT.items():
        m = onnx.parser.parse_model(text)
        for k, v in _inits(name, rng).items():
            m.graph.initializer.append(numpy_helper.from_array(np.asarray(v), k))
        out[name] = m
    return out


def builder_models() -> dict[str, onnx.ModelProto]:
    """Small graphs from sample_models/builders.py."""
    if str(SAMPLES) not in sys.path:
        sys.path.insert(0, str(SAMPLES))
    import builders

    g = builders._Graph(seed=1, opset=13)
    x = g.conv("input", 3, 8, 3, pad=1, name="c0", bn=True)
    x = g.relu6(x, name="r0")
    y = g.conv(x, 8, 8, 3, pad=1, group=8, name="dw", bias=False)
    x = g.add(x, y, name="res")
    x = g.maxpool(x, 2, 2, name="mp")
    x = g.gap(x, name="gap")
    x = g.flatten(x, name="flat")
    x = g.dropout(x, 0.1, name="drop")
    x = g.gemm(x, 8, 4, name="fc")
    tiny = builders._finish(g, "tiny_builder", 3, 8, x, 4, "fuzz seed")
    mnet = builders.mobilenet_v2(num_classes=4, image=16, width_mult=0.25, dropout=True)
    return {"builder_tiny": tiny, "builder_mobilenet": mnet}


def sample_files() -> dict[str, onnx.ModelProto]:
    return {p.stem: onnx.load(str(p)) for p in sorted(SAMPLES.glob("*.onnx"))}


def all_seeds() -> list[tuple[str, bytes, float]]:
    """(name, model bytes, weight) for every seed; tiny graphs are picked most often."""
    seeds = []
    for name, m in tiny_models().items():
        seeds.append((name, m.SerializeToString(), 3.0))
    for name, m in builder_models().items():
        seeds.append((name, m.SerializeToString(), 2.0 if name == "builder_tiny" else 0.7))
    for name, m in sample_files().items():
        seeds.append((name, m.SerializeToString(), 1.5 if name == "digits_vgg" else 0.6))
    return seeds


__all__ = ["all_seeds", "builder_models", "sample_files", "tiny_models"]
