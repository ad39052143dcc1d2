"""What every convolution algorithm is given and what it promises (oneDNN's primitive pattern).

``ConvLayer`` is a layer's geometry as named fields, validated once; every algorithm class takes
one and answers ``accepts(layer, cpu)`` ("can I run this layer on this CPU?"), then, bound to
the layer's weights, ``scratch_bytes()``, the zero-bordered handoff contract of
``runtime/plan.py`` and ``__call__(x, out, residual=None)``, which writes ``act(conv(x) + b +
residual)`` into ``out``.  ``ConvAlgorithm`` holds the defaults: no handoff, no scratch.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass

import numpy as np

from ... import activations


@dataclass(frozen=True, eq=False)
class ConvLayer:
    """A 2-D convolution's shapes and epilogue, as ONNX ``Conv`` gives them (pads are top,
    left, bottom, right), with the output size derived.  ``act`` is the activation code,
    ``prm`` the epilogue's constants (``activations.params``)."""
    n_img: int
    c_n: int
    h_n: int
    w_n: int
    m_all: int
    cg: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int
    group: int
    oh_n: int
    ow_n: int
    act: int
    prm: np.ndarray
    dtype: np.dtype

    @classmethod
    def build(cls, w_shape, in_shape, strides, pads, dilations, group, activation, alpha,
              clip_min, clip_max, dtype) -> ConvLayer:
        dtype = np.dtype(dtype)
        n_img, c_n, h_n, w_n = (int(v) for v in in_shape)
        m_all, cg, kh, kw = (int(v) for v in w_shape)
        sh, sw = (int(v) for v in strides)
        dh, dw = (int(v) for v in dilations)
        pt, pl, pb, pr = (int(v) for v in pads)
        group = int(group)
        assert c_n % group == 0 and m_all % group == 0 and cg == c_n // group
        oh_n = (h_n + pt + pb - (kh - 1) * dh - 1) // sh + 1
        ow_n = (w_n + pl + pr - (kw - 1) * dw - 1) // sw + 1
        assert oh_n >= 1 and ow_n >= 1 and min(sh, sw, dh, dw) >= 1 and min(pads) >= 0
        return cls(n_img, c_n, h_n, w_n, m_all, cg, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr,
                   group, oh_n, ow_n, activations.code(activation),
                   activations.params(dtype, alpha, clip_min, clip_max), dtype)

    in_shape = property(lambda self: (self.n_img, self.c_n, self.h_n, self.w_n))
    out_shape = property(lambda self: (self.n_img, self.m_all, self.oh_n, self.ow_n))
    mg = property(lambda self: self.m_all // self.group)  # output channels per group
    pads = property(lambda self: (self.pt, self.pl, self.pb, self.pr))
    strides = property(lambda self: (self.sh, self.sw))
    dilations = property(lambda self: (self.dh, self.dw))
    # the most elements the layer moves, its input or its output (``_schedule.serial``: a
    # stride-2 depthwise layer reads four inputs an output)
    moved = property(lambda self: max(math.prod(self.in_shape), math.prod(self.out_shape)))


# (cache, key, keep, strict) while a Conv2d is being bound with a session's pack cache (``Conv2d``'s
# ``packs``), else None.  A context variable so that the algorithms' constructors need no
# extra parameter, and two threads binding at once do not see each other's scope.
_PACKING: contextvars.ContextVar = contextvars.ContextVar("convrt_conv_packing", default=None)


class WeightsNeeded(Exception):
    """Raised by ``packed`` on a miss while the weights are only a stand-in (see ``Conv2d``)."""


def _need_weights():
    raise WeightsNeeded


def packed(what: str, params: tuple, make):
    """``make()`` (the packed weights), shared through the session's pack cache when the layer
    is being bound with one: every plan of a session (one per batch size) then holds one copy.
    ``params``: whatever besides the weights and the layer's geometry the packing depends on
    (the microkernel's block width...), so a different choice gets its own entry.  While the
    weights are a released stand-in (``strict``), a miss raises ``WeightsNeeded`` instead of
    packing, and ``Conv2d`` binds again with the weights restored."""
    scope = _PACKING.get()
    if scope is None:
        return make()
    cache, key, keep, strict = scope
    return cache.get(key + (what, params), keep, _need_weights if strict else make)


def aligned_zeros(shape, dtype, align: int = 64) -> np.ndarray:
    """Zeros whose first element sits on an ``align``-byte boundary (numpy only promises 16):
    a 16-lane float32 vector at a multiple of 16 elements from it is then one cache line, where
    an unaligned one would be split across two on every load."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.zeros(n * dtype.itemsize + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n * dtype.itemsize].view(dtype).reshape(shape)


def geometry_key(layer: ConvLayer) -> tuple:
    """``layer``'s geometry without the batch: what a packing may depend on besides weights."""
    return (layer.c_n, layer.h_n, layer.w_n, layer.m_all, layer.cg, layer.kh, layer.kw,
            layer.strides, layer.pads, layer.dilations, layer.group, layer.dtype.str)


class ConvAlgorithm:
    """Base of the algorithm classes (``select.ALGORITHMS``)."""

    name = ""  # what ``Conv2d.algo`` reports
    # True where the weights reach the kernel only through ``packed``: the bound object keeps
    # no reference to them, so a session may release the original (convrt/weights.py)
    packs_weights = False

    @classmethod
    def accepts(cls, layer: ConvLayer, cpu) -> bool:
        """Whether this algorithm runs ``layer`` on ``cpu`` (``_microkernel.Cpu``), from the
        shapes alone, so the choice (and the result, bit for bit) is the same on every run."""
        raise NotImplementedError

    def __init__(self, layer: ConvLayer, w, bias):
        self.layer = layer
        self.in_shape, self.out_shape = layer.in_shape, layer.out_shape
        self.dtype, self.act, self._prm = layer.dtype, layer.act, layer.prm
        self._dummy = np.zeros(1, dtype=layer.dtype)

    # the zero-bordered handoff (runtime/plan.py); only RowInput's kernels take part
    x_shape = property(lambda self: self.in_shape)
    y_shape = property(lambda self: self.out_shape)

    def padded_input(self):
        return None

    def can_write_padded(self) -> bool:
        return False

    def scratch_bytes(self) -> int:
        """Bytes of one calling thread's scratch."""
        return 0

    def __call__(self, x, out, residual=None):
        raise NotImplementedError
