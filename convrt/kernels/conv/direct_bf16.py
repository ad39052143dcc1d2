"""The blocked convolution in bfloat16 (``precision="bf16"``): dense layers on AVX512_BF16.

The same driver, workers, tile shapes and epilogue as ``direct.py`` (hence a subclass of
``Direct``); only the operands differ.  ``vdpbf16ps`` multiplies *pairs* of bf16 values and adds
both products to one float32 lane, so the reduction runs over pairs of input channels:

* weights, rounded once at packing: ``wp[blk, c2*kk + tap, j]`` (uint32) holds bf16 of
  ``w[m, 2*c2, tap]`` in its low half and of ``w[m, 2*c2 + 1, tap]`` in its high half
  (m = blk*16*B + j; zeros past the last output channel and for an odd channel count);
* the input is rounded on the way into the zero-bordered copy (``bf16.pad_pairs``): one uint32
  per pixel and channel pair, in ``_layout``'s plane layout, so every tap offset and row step is
  the float32 kernel's with pairs in place of channels.  This layer therefore always copies its
  input (never reads a float32 predecessor's bordered output: ``padded_input`` is None), but it
  still writes a bordered float32 output for its successor;
* the bias, the sums, the residual and the activation stay float32.

Each reduction step is one broadcast of a pixel's pair and B ``vdpbf16ps``: 32 multiply-adds
per instruction where the float32 kernel's FMA does 16.
"""

import numpy as np

from .. import bf16
from . import _microkernel
from ._base import packed
from ._ir import VEC
from ._layout import RowInput, _shared_scratch, nchw_strides
from .direct import ROW_MAJOR_BYTES, Direct

_WORD = np.dtype(np.uint32)
MIN_CHANNELS = 8  # below this (first layers: RGB) the float32 kernels keep the layer


def pack_weights(w, bias, wd):
    """``(wp, bp)``: ``w`` (M, C, kH, kW) float32 as bf16 channel pairs in blocks of ``wd``
    output channels (see module docstring), ``bias`` (M,) float32 padded to the blocks.  One
    block at a time, so that packing VGG-16's 411 MB classifier holds a few MB of temporaries
    beside the result, not several copies of it."""
    m_all, c_n = w.shape[:2]
    kk = w.shape[2] * w.shape[3]
    c2_n = (c_n + 1) // 2
    nb = -(-m_all // wd)
    w3 = np.asarray(w, np.float32).reshape(m_all, c_n, kk)
    wp = np.empty((nb, c2_n * kk, wd), np.uint32)
    blk = np.zeros((wd, 2 * c2_n, kk), np.float32)
    for b in range(nb):
        m0, m1 = b * wd, min(m_all, (b + 1) * wd)
        blk[:] = 0
        blk[:m1 - m0, :c_n] = w3[m0:m1]
        words = bf16.pack_pairs(blk[:, 0::2], blk[:, 1::2])  # (wd, C2, kk)
        wp[b] = words.reshape(wd, c2_n * kk).T
    bp = np.zeros(nb * wd, np.float32)
    bp[:m_all] = bias
    return wp, bp.reshape(nb, wd)


class DirectBF16(Direct):
    """``Direct`` with bf16 weights and inputs and float32 sums (module docstring)."""

    name = "direct_bf16"
    repack = None  # Direct's in-place repack writes float32 blocks; this layout is bf16 pairs

    @classmethod
    def accepts(cls, layer, cpu) -> bool:
        """Dense float32 layers with at least ``MIN_CHANNELS`` input channels and 16 outputs,
        on a CPU with AVX512_BF16 (``select`` asks only under ``precision="bf16"``).  Not a
        strided unpadded 1x1 layer (ResNet's downsamples): float32 gathers the quarter of the
        input it reads, where the pair copy would round all of it (measured 0.165 ms against
        0.070 on 56x56x64 -> 128)."""
        strided_1x1 = (layer.kh == layer.kw == 1 and not any(layer.pads)
                       and layer.strides != (1, 1))
        return (bool(getattr(cpu, "bf16", False)) and layer.dtype == np.float32
                and layer.group == 1 and layer.cg >= MIN_CHANNELS and layer.m_all >= 16
                and not strided_1x1)

    def __init__(self, layer, w, bias):
        RowInput.__init__(self, layer, w, bias)  # the output side; the input side is redone
        n_img, c_n, h_n, w_n = layer.in_shape
        kh, kw, sh, sw, dh, dw = layer.kh, layer.kw, layer.sh, layer.sw, layer.dh, layer.dw
        pt, pl, pb, pr = layer.pads
        c2_n = (c_n + 1) // 2
        flat = kh == kw == 1 and sh == sw == 1 and not any(layer.pads)
        if flat:  # one long row per image, as RowInput reads such a layer
            hp, q_n, cstride = 1, h_n * w_n, h_n * w_n
            self._oh, self._ow = 1, h_n * w_n
            self._pairs_geom = (h_n, w_n, w_n, 1, 0, 0, cstride)
        else:
            hp = h_n + pt + pb
            q_n = -(-(w_n + pl + pr) // sw)
            cstride = hp * sw * q_n
            if (cstride * _WORD.itemsize) % 1024 == 0:  # cache-set aliasing across planes
                cstride += 16
            self._oh, self._ow = layer.oh_n, layer.ow_n
            self._pairs_geom = (h_n, w_n, q_n, sw, pt, pl, cstride)
        rl = sw * q_n if not flat else q_n
        self._gather = False
        self._copy = True
        self._ogeo = nchw_strides(self.out_shape, self._ow)
        self._nstride = c2_n * cstride
        self._gstride = 0
        self._rowstep = sh * rl
        koff = [i * dh * rl + ((j * dw) % sw) * q_n + (j * dw) // sw
                for i in range(kh) for j in range(kw)]
        self._offs = (np.arange(c2_n, dtype=np.uint64)[:, None] * np.uint64(cstride)
                      + np.array(koff, dtype=np.uint64)[None, :]).reshape(-1)
        self._xs_len = n_img * c2_n * cstride + cstride

        mg = layer.m_all
        self._shape = _microkernel._choose_shape(mg, self._ow, np.dtype(np.float32))
        wd = self._shape[0] * VEC
        wp, bp = packed("direct_bf16", (wd,), lambda: pack_weights(w, bias, wd))
        self._wp, self._bp, self._nb, self._nbg, self._mg = wp, bp, wp.shape[0], wp.shape[0], mg
        self._taps = 0 if (kh, kw) != (3, 3) else (1 if sw == dw == 1 else 2)
        self._row_major = (self._nstride * _WORD.itemsize > ROW_MAJOR_BYTES
                           and wp.nbytes <= ROW_MAJOR_BYTES // 2)

    def padded_input(self):
        """None: the input is always rounded into this layer's own pair layout."""
        return None

    def scratch_bytes(self) -> int:
        return self._xs_len * _WORD.itemsize

    def prepare(self, x):
        """The input rounded to bf16 pairs in this thread's scratch (``bf16.pad_pairs``)."""
        n_img, c_n = self.in_shape[:2]
        xs = _shared_scratch(self._xs_len, _WORD)
        bf16.pad_pairs(np.ascontiguousarray(x).reshape(-1).view(np.uint32), xs, n_img, c_n,
                       *self._pairs_geom)
        return xs
