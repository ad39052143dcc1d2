"""Which algorithm runs a convolution: one ordered list, the first that accepts wins.

This is oneDNN's ``cpu_convolution_list``: every algorithm is a peer class (``_base``) that
answers ``accepts(layer, cpu)`` from the shapes alone, so a layer's algorithm, and hence its
result bit for bit, is the same on every run and at any thread count.  Adding an algorithm is
one module and one line in ``ALGORITHMS``.
"""

import numpy as np

from ._base import _PACKING, ConvLayer, WeightsNeeded, geometry_key
from ._microkernel import HOST
from .depthwise import Depthwise
from .direct import Direct
from .direct_bf16 import DirectBF16
from .. import bf16 as _bf16
from .dw3x3 import Depthwise3x3
from .dwcb import DepthwiseBlocked
from .pixel import Pixel
from .small_maps import SmallMaps
from .winograd import WinogradConv

ALGORITHMS = (
    DepthwiseBlocked,  # depthwise on small maps (<= 28x28), >= 16 channels: 16 channels a vector
    Depthwise3x3,  # MobileNet's 3x3 depthwise, padding 1, stride 1 or 2: rows from registers
    Depthwise,  # any other layer with fewer than 8 output channels per group
    Pixel,  # 1x1 layers and short reductions (first layers): vectors along pixels
    SmallMaps,  # output rows of <= 4 pixels over a batch: a tile's pixels run across images
    WinogradConv,  # deep 3x3 stride-1 layers (VGG-16's 56x56..14x14)
    Direct,  # everything else: the blocked kernel
)
# ``algo=`` names for tests and benchmarks that force one; a layer with fewer than 8 output
# channels per group still takes the general depthwise kernel unless Winograd is forced
FORCED = {"direct": Direct, "pixel": Pixel, "winograd": WinogradConv, "depthwise": Depthwise,
          "direct_bf16": DirectBF16, "small_maps": SmallMaps}
# Tried first under ``precision="bf16"`` (on a CPU with AVX512_BF16): a layer none of them
# accepts (depthwise, grouped, first layers with few channels, float64) keeps its float32
# algorithm.  Winograd is not offered in bf16: its transformed inputs would be rounded after
# the transform, and the bf16 direct kernel already does twice the float32 one's work per
# instruction on the deep 3x3 layers Winograd takes in float32.
BF16_ALGORITHMS = (DirectBF16,)


def select(layer: ConvLayer, cpu=HOST, algo: str = "auto", precision: str = "fp32"):
    """The algorithm class for ``layer`` on ``cpu``: the first of ``ALGORITHMS`` that accepts
    it (of ``BF16_ALGORITHMS`` first under ``precision="bf16"``, unless bf16 is forced off,
    ``bf16.FORCE_FP32``), or the one ``algo`` forces."""
    if algo == "auto":
        if precision == "bf16" and not _bf16.FORCE_FP32:
            for cls in BF16_ALGORITHMS:
                if cls.accepts(layer, cpu):
                    return cls
        return next(cls for cls in ALGORITHMS if cls.accepts(layer, cpu))
    if algo != "winograd" and Depthwise.accepts(layer, cpu):
        return Depthwise
    return FORCED[algo]


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, or a copy where it is read-only (memory-mapped external data, a caller's
    ``np.load(mmap_mode="r")``): numba types read-only arrays apart, so packing such weights
    compiled a second variant of each algorithm's packing kernels (seconds on an empty
    cache).  The packed copy is what the kernels read; the original is not kept."""
    return a if a.flags.writeable else a.copy()


class Conv2d:
    """A 2-D convolution bound once: validated shapes, an algorithm chosen, weights packed.

    Args:
        w: weights ``(M, C//group, kH, kW)``.
        b: bias ``(M,)`` or None.
        in_shape: the concrete input shape ``(N, C, H, W)``.
        strides, pads, dilations, group: as ONNX ``Conv`` (pads are top, left, bottom, right).
        activation: one of ``convrt.activations.NAMES``, applied after the bias and the
            optional residual.  alpha: LeakyRelu slope. clip_min, clip_max: Clip bounds.
        dtype: float32 (the fast path) or float64.
        algo: "auto" (``select``), or "direct", "pixel", "winograd", "depthwise",
            "direct_bf16" to force one.
        precision: "fp32", or "bf16": bf16 weights and inputs, float32 sums, where
            ``BF16_ALGORITHMS`` accept the layer (``select``).
        packs: ``(cache, key, keep)``: a session's ``PackCache`` (ops/registry.py), the key of
            the constant weights (their ids) and those arrays; the packed weights are then
            shared by every Conv2d bound to the same weights and geometry (``_base.packed``).

    Calling ``conv(x, out, residual=None)`` writes ``act(conv(x) + b + residual)`` into ``out``;
    ``w`` may be a released weight's stand-in (``convrt.ir.Released``: shape, dtype, ``array()``):
    it is only read when no plan packed this layer's weights before.
    ``residual`` must not share memory with ``out`` (the last tile of a row rewrites a few
    pixels, and would read an already-updated residual).  ``impl`` is the algorithm object;
    the handoff contract of ``runtime/plan.py`` is forwarded to it, and so are its own fields
    (read and written: tests force a kernel's loop form through them).
    """

    def __init__(self, w, b, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                 group=1, activation="none", alpha=0.01, clip_min=-np.inf, clip_max=np.inf,
                 dtype=np.float32, algo="auto", packs=None, precision="fp32"):
        dtype = np.dtype(dtype)
        # released weights (a stand-in with shape, dtype and ``array()``: convrt/ir/released.py)
        stand_in = not isinstance(w, np.ndarray) and callable(getattr(w, "array", None))
        if not stand_in:
            w = _writable(np.asarray(w, dtype=dtype))
        layer = ConvLayer.build(w.shape, in_shape, strides, pads, dilations, group, activation,
                                alpha, clip_min, clip_max, dtype)
        bias = np.zeros(layer.m_all, dtype=dtype) if b is None else \
            _writable(np.asarray(b, dtype=dtype))
        assert bias.shape == (layer.m_all,)
        cls = select(layer, HOST, algo, precision)
        if stand_in and (packs is None or not cls.packs_weights or w.dtype != dtype):
            w, stand_in = np.asarray(w.array(), dtype=dtype), False  # the kernel reads them
        if packs is None:
            impl = cls(layer, w, bias)
        else:
            impl = self._bind_packed(cls, layer, w, bias, packs, stand_in)
        object.__setattr__(self, "impl", impl)
        object.__setattr__(self, "algo", impl.name)
        object.__setattr__(self, "_own_packing", packs is None)

    def repack(self, w, b) -> bool:
        """Put new weights (same shape) into this layer's own packed arrays, in place of binding
        a new one: training changes every weight on every step, and a new binding (algorithm
        choice, layout, fresh packed arrays) cost ~0.2 ms a layer beside the packing.  False
        (nothing done) where the algorithm has no in-place repack or the packed arrays are a
        session's shared ones (``packs``)."""
        repack = getattr(self.impl, "repack", None)
        layer = self.impl.layer
        if not self._own_packing or repack is None or \
                np.shape(w) != (layer.m_all, layer.cg, layer.kh, layer.kw):
            return False
        dtype = layer.dtype
        bias = np.zeros(layer.m_all, dtype=dtype) if b is None else np.asarray(b, dtype)
        repack(np.asarray(w, dtype=dtype), bias)
        return True

    @staticmethod
    def _bind_packed(cls, layer, w, bias, packs, stand_in):
        """``cls(layer, w, bias)`` with its packed weights from the session's cache; with a
        stand-in for released weights, a miss (another packing than any plan made before)
        restores them and binds again."""
        cache, key, keep = packs
        token = _PACKING.set((cache, key + (geometry_key(layer),), keep, stand_in))
        try:
            return cls(layer, w, bias)
        except WeightsNeeded:
            _PACKING.set((cache, key + (geometry_key(layer),), keep, False))
            return cls(layer, np.asarray(w.array(), dtype=layer.dtype), bias)
        finally:
            _PACKING.reset(token)

    x_shape = property(lambda self: self.impl.x_shape)
    y_shape = property(lambda self: self.impl.y_shape)
    # the depthwise family's object under the name tests have always used
    _dw = property(lambda self: self.impl)

    def __getattr__(self, name):  # only called for names the facade itself lacks
        impl = self.__dict__.get("impl")
        if impl is None:
            raise AttributeError(name)
        return getattr(impl, name)

    def __setattr__(self, name, value):
        setattr(self.impl, name, value)

    def padded_input(self):
        return self.impl.padded_input()

    def read_padded(self):
        self.impl.read_padded()

    def can_write_padded(self) -> bool:
        return self.impl.can_write_padded()

    def write_padded(self, geometry):
        self.impl.write_padded(geometry)

    def scratch_bytes(self) -> int:
        return self.impl.scratch_bytes()

    def __call__(self, x, out, residual=None):
        return self.impl(x, out, residual)
