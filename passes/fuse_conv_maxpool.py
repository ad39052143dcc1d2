"""fuse_conv_maxpool: a fused Conv + Relu followed by a 2x2/2 MaxPool -> one fused node.

Before::

    x -> convrt.FusedConvRelu(W, B) -> y -> MaxPool<kernel 2x2, strides 2x2> -> z     (VGG)

After::

    x -> convrt.FusedConvReluMaxPool(W, B) -> z

Conditions:
    * ``y`` is read by the MaxPool only and is not a graph output; the MaxPool is in the
      default domain, its Indices output (if any) is unused;
    * the pool is exactly 2x2 with stride 2: no padding (pads zero or absent, auto_pad NOTSET
      or VALID), dilations 1, ceil_mode 0;
    * ``y`` is 4-D float32/float64 with spatial dims known and at least 2.

Formula:
    z = maxpool2x2(relu(conv(x, W) + B)): the kernel (``convrt/kernels/conv_pool.py``) pools
    each pair of output rows while they are in cache, so the unpooled output is never written
    (small VGG at batch 64: 29 MB less written and read back).  Equal to the unfused ops bit for
    bit; the ONNX definition is Conv -> Relu -> MaxPool.
"""

from __future__ import annotations

import numpy as np

from convrt.ir import Graph, Node
from convrt.ops.fused import POOL_ATTRS, POOLED, ensure_function

from ._infra import Pass, PassResult
from ._match import extra_outputs_unused, only_consumer, producer_is, replace_chain

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_FUSED = {conv: pooled for pooled, conv in POOLED.items()}  # FusedConvRelu -> ...MaxPool


def _is_plain_2x2_pool(pool: Node) -> bool:
    a = pool.attrs
    return (list(a.get("kernel_shape", [])) == POOL_ATTRS["kernel_shape"]
            and list(a.get("strides", [1, 1])) == POOL_ATTRS["strides"]
            and not any(a.get("pads", [0, 0, 0, 0]))
            and list(a.get("dilations", [1, 1])) == [1, 1]
            and int(a.get("ceil_mode", 0)) == 0
            and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID", b"NOTSET", b"VALID"))


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
                    not extra_outputs_unused(graph, pool) or not _is_plain_2x2_pool(pool):
                continue
            if y.dtype not in _DTYPES or y.shape is None or len(y.shape) != 4 or \
                    not all(isinstance(v, int) and v >= 2 for v in y.shape[2:]):
                continue
            op = _FUSED[conv.op_type]
            new = Node(op, list(conv.inputs), [pool.outputs[0]], dict(conv.attrs),
                       name=conv.name, domain="convrt")
            replace_chain(graph, [conv, pool], new)
            ensure_function(graph, op)
            fused += 1
        return self.result({"Conv+Relu+MaxPool fused": fused} if fused else {})

    def describe(self, stats):
        n = stats.get("Conv+Relu+MaxPool fused", 0)
        return f"{self.name}: {n} Conv+Relu+MaxPool 2x2 fused" if n else \
            f"{self.name}: no change"
