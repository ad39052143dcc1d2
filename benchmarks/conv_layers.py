"""VGG-16 conv layers at batch 1 (or small VGG, --set small_vgg, batch 64): convrt's Conv2d (+ReLU) vs onnxruntime's Conv+Relu, same run.

Usage: python benchmarks/conv_layers.py [--runs 15] [--layers 0,1,...] [--threads 2]
       [--set vgg16|small_vgg] [--batch N] [--algo auto|direct|winograd]
Prints per layer: ms (median of runs after warm-up; the two runtimes alternate call by call),
GFLOP/s, the ratio convrt / onnxruntime, and the same ratio of the fastest runs (the machine is
shared, so minima are the steadier measure of what each kernel can do).
"""

import argparse
import os
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from convrt.kernels.conv import Conv2d  # noqa: E402

VGG16 = [  # (C, M, H=W) of each distinct conv layer shape, times it occurs in VGG-16
    (3, 64, 224, 1), (64, 64, 224, 1), (64, 128, 112, 1), (128, 128, 112, 1),
    (128, 256, 56, 1), (256, 256, 56, 2), (256, 512, 28, 1), (512, 512, 28, 2),
    (512, 512, 14, 3),
]
SMALL_VGG = [  # sample_models/builders.py small_vgg_32(), run at batch 64 (--set small_vgg)
    (3, 64, 32, 1), (64, 64, 32, 1), (64, 128, 16, 1), (128, 128, 16, 1), (128, 256, 8, 1),
    (256, 256, 8, 1),
]
SETS = {"vgg16": (VGG16, 1), "small_vgg": (SMALL_VGG, 64)}


def ort_session(w, b, threads=2):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, c = w.shape[:2]
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["y"], ["z"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, "H", "W"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def interleaved_ms(fa, fb, runs, pause=0.03):
    """Times of ``fa`` and ``fb`` (ms), alternating call by call so that the load from other
    processes on this shared machine hits both alike; a short pause after each call lets the
    other runtime's idle worker threads stop spinning."""
    for f in (fa, fb, fa, fb):
        f()
    ta, tb = [], []
    for _ in range(runs):
        for f, ts in ((fa, ta), (fb, tb)):
            time.sleep(pause)
            t = time.perf_counter()
            f()
            ts.append(1e3 * (time.perf_counter() - t))
    return np.array(ta), np.array(tb)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--layers", default=None)
    ap.add_argument("--threads", type=int, default=2, help="for both runtimes (default 2)")
    ap.add_argument("--algo", default="auto", choices=["auto", "direct", "winograd"],
                    help="Conv2d's algorithm (default: its own per-layer choice)")
    ap.add_argument("--set", default="vgg16", choices=sorted(SETS),
                    help="layer set: VGG-16 (batch 1) or small VGG on 32x32 (batch 64)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the set's)")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    layers, batch = SETS[args.set]
    batch = args.batch or batch
    rng = np.random.default_rng(0)
    sel = range(len(layers)) if args.layers is None else [int(i) for i in args.layers.split(",")]
    print(f"{'layer':>22} {'convrt ms':>10} {'GFLOP/s':>8} {'ort ms':>8} {'GFLOP/s':>8} "
          f"{'ratio':>6}")
    tot_c = tot_o = min_c = min_o = 0.0
    for i in sel:
        c, m, hw, times = layers[i]
        x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((m, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        conv = Conv2d(w, b, x.shape, pads=(1, 1, 1, 1), activation="relu", algo=args.algo)
        out = np.empty(conv.out_shape, np.float32)
        t = time.perf_counter()
        conv(x, out)
        compile_s = time.perf_counter() - t
        sess = ort_session(w, b, args.threads)
        ref = sess.run(None, {"x": x})[0]
        err = float(np.abs(out - ref).max())
        tca, toa = interleaved_ms(lambda: conv(x, out), lambda: sess.run(None, {"x": x}),
                                  args.runs)
        tc, to = float(np.median(tca)), float(np.median(toa))
        min_c += times * tca.min()
        min_o += times * toa.min()
        gflop = 2 * m * c * 9 * hw * hw * batch / 1e9
        tot_c += times * tc
        tot_o += times * to
        name = f"{conv.algo[0]} {hw}^2 {c}->{m}" + (f" (x{times})" if times > 1 else "")
        print(f"{name:>22} {tc:10.2f} {gflop / tc * 1e3:8.1f} {to:8.2f} {gflop / to * 1e3:8.1f} "
              f"{tc / to:6.2f}  (min {tca.min():.2f} vs {toa.min():.2f}: {tca.min() / toa.min():.2f})"
              f"  first call {compile_s:.2f}s, max|err| {err:.1e}", flush=True)
    print(f"{'total (' + args.set + ')':>22} {tot_c:10.2f} {'':>8} {tot_o:8.2f} {'':>8} "
          f"{tot_c / tot_o:6.2f}  (sum of minima {min_c:.2f} vs {min_o:.2f}: {min_c / min_o:.2f})")


if __name__ == "__main__":
    main()
