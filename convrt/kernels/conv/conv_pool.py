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

Other pool windows (``pool``: ResNet's stem, 3x3/2 with one pixel of padding) always take the
general path, one image at a time: the convolution is bound for one image and its output goes
to a one-image scratch that the pool reads while it is still in cache.  Unfused, the stem's
output is the largest activation of a ResNet (ResNet-18 at batch 8: 24.5 MiB of a 36.75 MiB
arena); fused, only the pooled quarter is written.  The results equal the unfused ops bit for
bit: the same convolution kernel and the same pool kernel on the same values.
"""

import math
import threading

import numpy as np

from ...activations import NONE, RELU
from ..pool import max_pool2d
from . import _microkernel
from .._alloc import mapped_empty
from ._layout import nchw_strides, padded_strides, zero_spare
from ._base import ConvLayer
from .select import HOST, Conv2d, select

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


# a max pool's window: kernel (h, w), strides (h, w), pads (top, left, bottom, right)
POOL_2X2 = (2, 2, 2, 2, 0, 0, 0, 0)


def pooled_shape(conv_shape, pool=POOL_2X2):
    """Output shape of the max pool ``pool`` (floor mode, no dilation) over ``conv_shape``."""
    n, m, oh, ow = conv_shape
    kh, kw, sh, sw, pt, pl, pb, pr = pool
    return (n, m, (oh + pt + pb - kh) // sh + 1, (ow + pl + pr - kw) // sw + 1)


class ConvMaxPool:
    """``maxpool(act(conv(x) + b))`` bound once; arguments as ``Conv2d`` (activation "none"
    or "relu" on the fused path, any on the general one), and ``pool``, the pool's window
    (``POOL_2X2`` by default; the caller checked that each pad is smaller than its kernel and
    the padded output holds a window).  Calling ``f(x, out)`` writes the pooled result into
    ``out`` (``Conv2d``'s call signature; there is no residual)."""

    def __init__(self, w, b, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                 group=1, activation="none", alpha=0.01, clip_min=-np.inf, clip_max=np.inf,
                 dtype=np.float32, algo="auto", packs=None, precision="fp32", pool=POOL_2X2):
        self.pool = pool = tuple(int(v) for v in pool)
        # another window: one image at a time (the module doc), so the conv is bound for one,
        # where one image takes the algorithm the batch would (its sums in the same order)
        geometry = (strides, pads, dilations, group, activation, alpha, clip_min, clip_max,
                    np.dtype(dtype))
        one = (1,) + tuple(in_shape[1:])
        self._per_image = pool != POOL_2X2 and in_shape[0] > 1 and select(
            ConvLayer.build(tuple(w.shape), one, *geometry), HOST, algo, precision) is select(
            ConvLayer.build(tuple(w.shape), tuple(in_shape), *geometry), HOST, algo, precision)
        conv_in = one if self._per_image else in_shape
        conv = Conv2d(w, b, conv_in, strides, pads, dilations, group, activation, alpha,
                      clip_min, clip_max, dtype, algo, packs, precision)
        _, m_all, oh_n, ow_n = conv.out_shape
        self.conv = conv
        self.in_shape = tuple(in_shape)
        self.out_shape = pooled_shape((in_shape[0],) + conv.out_shape[1:], pool)
        self.dtype = conv.dtype
        # the blocked kernel, reading 2-D rows (not a 1x1 layer's single long row)
        self.fused = (pool == POOL_2X2 and conv.algo in ("direct", "direct_bf16")
                      and conv._oh == oh_n and conv.act in (NONE, RELU))
        if self.fused:
            nb_ = conv._shape[0]  # the packing; only the tile width changes
            even = {s for s in _microkernel._shapes(self.dtype) if s[0] == nb_ and s[1] % 2 == 0}
            self._shape = _microkernel._choose_shape(conv._mg, 2 * self.out_shape[3], self.dtype,
                                                     even)
            assert self._shape[0] == nb_ and self._shape[1] % 2 == 0
        self._ogeo = nchw_strides(self.out_shape)

    # the zero-bordered handoff of Conv2d (see there): the input side is the convolution's,
    # the output side the fused path's
    x_shape = property(lambda self: self.in_shape if self._per_image else self.conv.x_shape)
    y_shape = property(lambda self: (-1,) if self._padded_out else self.out_shape)
    _padded_out = False
    packs_weights = property(lambda self: self.conv.packs_weights)

    def padded_input(self):
        return None if self._per_image else self.conv.padded_input()

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
            kh, kw, sh, sw, pt, pl = self.pool[:6]
            if not self._per_image:
                c(x, y)
                max_pool2d(y, out, kh, kw, sh, sw, 1, 1, pt, pl)
                return out
            for i in range(self.in_shape[0]):
                c(x[i:i + 1], y)
                max_pool2d(y, out[i:i + 1], kh, kw, sh, sw, 1, 1, pt, pl)
            return out
        xf = c.prepare(x)
        if self._padded_out:
            zero_spare(out, self._ogeo, c.in_shape[0])
        ph_n, pw_n = self.out_shape[2:]
        c.impl.run(xf, out.reshape(-1), c._dummy, False, self._shape, ph_n, pw_n, self._ogeo,
                   True)
        return out
