"""fuse_conv_maxpool: a fused Conv + Relu followed by a MaxPool -> one fused node.

Before::

    x -> convrt.FusedConvRelu(W, B) -> y -> MaxPool<kernel 2x2, strides 2x2> -> z     (VGG)
    x -> convrt.FusedConvRelu(W, B) -> y -> MaxPool<3x3, strides 2, pads 1> -> z  (ResNet stem)

After::

    x -> convrt.FusedConvReluMaxPool(W, B, pool_kernel_shape, pool_strides, pool_pads) -> z

Conditions:
    * ``y`` is read by the MaxPool only and is not a graph output; the MaxPool is in the
      default domain, its Indices output (if any) is unused;
    * the pool is 2-D, explicit (auto_pad NOTSET or VALID), dilations 1, ceil_mode 0, storage
      order irrelevant (no Indices), each pad smaller than its kernel;
    * ``y`` is 4-D float32/float64 with spatial dims known and holding a window;
    * a model-local definition of the fused op already in the graph (an older convrt's, read
      from a file) takes the window as attributes, or the pool is 2x2/2 without pads.

Formula:
    z = maxpool(relu(conv(x, W) + B)).  For 2x2/2 without pads the kernel
    (``convrt/kernels/conv/conv_pool.py``) pools each pair of output rows while they are in
    cache, so the unpooled output is never written (small VGG at batch 64: 29 MB less written
    and read back); other windows convolve one image into a scratch and pool it, so the
    unpooled output of the batch is never held (ResNet-18's stem at batch 8: 24.5 MiB).
    Equal to the unfused ops bit for bit; the ONNX definition is Conv -> Relu -> MaxPool.
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph, Node
from convrt.ops.fused import POOL_ATTRS, POOLED, ensure_function

from ._infra import Pass, PassResult
from ._match import extra_outputs_unused, only_consumer, producer_is, replace_chain

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FUSED = {conv: pooled for pooled, conv in POOLED.items()}  # FusedConvRelu -> ...MaxPool


def _pool_window(pool: Node) -> dict | None:
    """The fused node's pool attributes for ``pool``, or None where it does not fuse."""
    a = pool.attrs
    k = [int(v) for v in a.get("kernel_shape", [])]
    s = [int(v) for v in a.get("strides", [1] * len(k))]
    p = [int(v) for v in a.get("pads", [0] * 2 * len(k))]
    if (len(k) != 2 or len(s) != 2 or len(p) != 4 or min(k + s) < 1
            or any(not 0 <= v < k[i % 2] for i, v in enumerate(p))
            or [int(v) for v in a.get("dilations", [1, 1])] != [1, 1]
            or int(a.get("ceil_mode", 0)) != 0
            or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID")):
        return None
    return {"pool_kernel_shape": k, "pool_strides": s, "pool_pads": p}


def _fits(shape, window: dict) -> bool:
    """``shape`` (the conv's output) is 4-D, spatially known, and holds one padded window."""
    if shape is None or len(shape) != 4 or not all(isinstance(v, int) for v in shape[2:]):
        return False
    k, p = window["pool_kernel_shape"], window["pool_pads"]
    return all(shape[2 + i] + p[i] + p[i + 2] >= k[i] for i in range(2))


def _defined_for(graph: Graph, op: str, window: dict) -> bool:
    """The graph's definition of ``op`` (if any) describes this window."""
    f = graph.functions.get(("convrt", op))
    plain = all(window[name] == default for name, (_, _, default) in POOL_ATTRS.items())
    return f is None or plain or "pool_kernel_shape" in f.attributes


class FuseConvMaxPoolPass(Pass):
    name = "fuse_conv_maxpool"
    level = "extended"

    def run(self, graph: Graph) -> PassResult:
        fused = 0
        for pool in list(graph.nodes):
            if pool.domain or pool.op_type != "MaxPool" or not pool.inputs:
                continue
            y = pool.inputs[0]
            conv = next((c for c in (producer_is(y, op, "convrt") for op in _FUSED) if c),
                        None)
            if conv is None or only_consumer(graph, y) is not pool or \
                    not extra_outputs_unused(graph, pool):
                continue
            window = _pool_window(pool)
            op = _FUSED[conv.op_type]
            if window is None or y.dtype not in _DTYPES or not _fits(y.shape, window) or \
                    not _defined_for(graph, op, window):
                continue
            new = Node(op, list(conv.inputs), [pool.outputs[0]], {**conv.attrs, **window},
                       name=conv.name, domain="convrt")
            replace_chain(graph, [conv, pool], new)
            ensure_function(graph, op)
            fused += 1
        return self.result({"Conv+Relu+MaxPool fused": fused} if fused else {})

    def describe(self, stats):
        n = stats.get("Conv+Relu+MaxPool fused", 0)
        return f"{self.name}: {n} Conv+Relu+MaxPool fused" if n else \
            f"{self.name}: no change"
