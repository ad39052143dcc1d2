"""Convolution + activation + 2x2/2 max pool in one pass (VGG's ``conv -> relu -> pool``).

Unfused, the convolution writes its whole output (small VGG at batch 64: 16.8 MB after its
second layer) and the pool reads it back to keep a quarter.  Here a work item of the blocked
kernel (``direct.py``) is (image, block of 16*B channels, *pooled* row): it computes the
two convolution rows of that pooled row tile by tile, takes each 2x2 window's max from the two
tiles while they are still in L1, applies the activation and stores only the pooled values.

The workers (``direct._pooled_worker``, ``direct._store_pool``) live beside the blocked
kernel's and share its parallel driver (``Direct.run``).  The results equal the unfused ops bit for
bit: the bias is in every sum already, and ReLU is monotonic, so ``relu(max(a, b, c, d)) ==
max(relu(a), ..., relu(d))``; the max is NaN-sticky in the same order as ``kernels/pool.py``.
Tiles hold an even number of pixels and start at even columns, so a window never straddles two
tiles (the last tile of a row is shifted left, as in the blocked kernel, and recomputes a few
windows with the same values).

Layers the blocked kernel does not run (Winograd, pixel, depthwise, 1x1 layers read as one
long row), and activations other than none/ReLU, take the general path: the convolution into a
per-thread scratch, then ``kernels/pool.max_pool2d``.
"""

import math
import threading

import numpy as np

from ...activations import NONE, RELU
from ..pool import max_pool2d
from . import _microkernel
from .._alloc import mapped_empty
from ._layout import nchw_strides, padded_strides, zero_spare
from .select import Conv2d

_UNPOOLED = threading.local()


def _unpooled_scratch(n, dtype):
    """This thread's buffer for the general path's unpooled output, shared by every
    ``ConvMaxPool`` (grown to the largest asked for).  Separate from ``_layout._shared_scratch``,
    which holds the input copy the same call reads."""
    key = np.dtype(dtype).str
    buf = getattr(_UNPOOLED, key, None)
    if buf is None or buf.size < n:
        buf = None  # the old one goes first
        setattr(_UNPOOLED, key, None)
        buf = mapped_empty(n, dtype)
        setattr(_UNPOOLED, key, buf)
    return buf[:n]


def pooled_shape(conv_shape):
    """Output shape of a 2x2/2 max pool (floor mode, no padding) over ``conv_shape``."""
    n, m, oh, ow = conv_shape
    return (n, m, oh // 2, ow // 2)


class ConvMaxPool:
    """``maxpool2x2(act(conv(x) + b))`` bound once; arguments as ``Conv2d`` (activation "none"
    or "relu" on the fused path, any on the general one).  The convolution's output must be at
    least 2x2.  Calling ``f(x, out)`` writes the pooled result into ``out`` (``Conv2d``'s call
    signature; there is no residual)."""

    def __init__(self, w, b, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                 group=1, activation="none", alpha=0.01, clip_min=-np.inf, clip_max=np.inf,
                 dtype=np.float32, algo="auto", packs=None, precision="fp32"):
        conv = Conv2d(w, b, in_shape, strides, pads, dilations, group, activation, alpha,
                      clip_min, clip_max, dtype, algo, packs, precision)
        _, m_all, oh_n, ow_n = conv.out_shape
        assert oh_n >= 2 and ow_n >= 2
        self.conv = conv
        self.in_shape = conv.in_shape
        self.out_shape = pooled_shape(conv.out_shape)
        self.dtype = conv.dtype
        # the blocked kernel, reading 2-D rows (not a 1x1 layer's single long row)
        self.fused = (conv.algo in ("direct", "direct_bf16") and conv._oh == oh_n
                      and conv.act in (NONE, RELU))
        if self.fused:
            nb_ = conv._shape[0]  # the packing; only the tile width changes
            even = {s for s in _microkernel.SHAPES if s[0] == nb_ and s[1] % 2 == 0}
            self._shape = _microkernel._choose_shape(conv._mg, 2 * self.out_shape[3], self.dtype,
                                                     even)
            assert self._shape[0] == nb_ and self._shape[1] % 2 == 0
        self._ogeo = nchw_strides(self.out_shape)

    # the zero-bordered handoff of Conv2d (see there): the input side is the convolution's,
    # the output side the fused path's
    x_shape = property(lambda self: self.conv.x_shape)
    y_shape = property(lambda self: (-1,) if self._padded_out else self.out_shape)
    _padded_out = False
    packs_weights = property(lambda self: self.conv.packs_weights)

    def padded_input(self):
        return self.conv.padded_input()

    def read_padded(self):
        self.conv.read_padded()

    def can_write_padded(self) -> bool:
        return self.fused

    def write_padded(self, geometry):
        assert self.fused
        self._ogeo[:] = padded_strides(self.out_shape, geometry)
        self._padded_out = True

    def scratch_bytes(self) -> int:
        """Bytes of one calling thread's scratch: the input copy, plus the unpooled output on
        the general path."""
        extra = 0 if self.fused else math.prod(self.conv.out_shape) * self.dtype.itemsize
        return self.conv.scratch_bytes() + extra

    def __call__(self, x, out, residual=None):
        assert residual is None  # a fused residual add has no pooled form here
        c = self.conv
        if not self.fused:
            y = _unpooled_scratch(math.prod(c.out_shape), self.dtype).reshape(c.out_shape)
            c(x, y)
            max_pool2d(y, out, 2, 2, 2, 2, 1, 1, 0, 0)
            return out
        xf = c.prepare(x)
        if self._padded_out:
            zero_spare(out, self._ogeo, c.in_shape[0])
        ph_n, pw_n = self.out_shape[2:]
        c.impl.run(xf, out.reshape(-1), c._dummy, False, self._shape, ph_n, pw_n, self._ogeo,
                   True)
        return out
