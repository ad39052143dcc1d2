"""Conv backward: dX, dW, dB for 1-D/2-D, any strides, pads, dilations and group.

Images are processed in chunks so the im2col buffer stays bounded (about ``CHUNK_BYTES``; few
chunks, since each kernel call is a parallel region and waking threads is costly on a busy
machine).  Per chunk and group, ``dW += dY_t @ cols.T`` and ``dcols = W.T @ dY_t`` are BLAS
products, split by columns among the threads (``_threads.matmul_split``), and ``col2im``
scatters ``dcols`` into dX.  For unit-stride 2-D layers of one group (most of ResNet's and
VGG's), dX is instead the forward convolution of dY with the flipped,
transposed weights, run by the inference kernels (``_dx_by_forward_conv``); on small maps
(float32, one group) a product with the weights as they are and a gather
(``kernels/conv_dx.py``), any stride.
"""

from __future__ import annotations

import numpy as np

from ...ops.conv import conv_geometry
from ...ops.registry import OpContext, TensorInfo
from .._threads import matmul_split
from ..kernels import conv as K
from ..kernels import conv_dw as DW
from ..kernels import conv_dx as DX
from .registry import kept, register_grad

CHUNK_BYTES = 32 << 20


def _geometry(ctx, x, w, b):
    geo = ctx.cache.get("geo")
    if geo is None:
        a = ctx.attrs
        octx = OpContext(ctx.label, "Conv", ctx.opset, True)
        infos = [TensorInfo(t.shape, t.dtype) if t is not None else None for t in (x, w, b)]
        k, s, d, p, g, shape, _ = conv_geometry(octx, *infos, a.get("auto_pad", "NOTSET"),
                                                a.get("dilations"), a.get("group", 1),
                                                a.get("kernel_shape"), a.get("pads"),
                                                a.get("strides"))
        if len(k) == 1:  # lift 1-D to 2-D with unit height
            k, s, d, p = (1,) + k, (1,) + s, (1,) + d, (0, p[0], 0, p[1])
        geo = ctx.cache["geo"] = (k, s, d, p, g)
    return geo


def _as_forward(x, group, strides, dilations, kernel, pads) -> bool:
    """Whether dX is a plain forward convolution the inference kernels run: 2-D, one group,
    unit stride and dilation, and pads below the kernel size (so the adjoint's pads,
    ``k - 1 - p``, are not negative)."""
    return (x.ndim == 4 and group == 1 and strides == (1, 1) and dilations == (1, 1)
            and all(p <= k - 1 for p, k in zip(pads, kernel + kernel)))


def _dx_by_forward_conv(dy, w, x_shape, kernel, pads, cache):
    """dX of a unit-stride convolution: the convolution of dY with W's channels swapped and
    its taps flipped, padded ``k - 1 - p`` (the adjoint), on the inference kernels (blocked,
    Winograd...) instead of W.T @ dY and a col2im scatter: 2-3x faster on ResNet's and VGG's
    3x3 layers.  The weights change every step: the layer is bound once per node and shapes
    (``cache``) and repacked per call, straight from the view (the blocked kernel's packing
    reads any strides)."""
    from ...kernels.conv import Conv2d

    kh, kw = kernel
    pt, pl, pb, pr = pads
    wt = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]  # a view: the kernels pack from it
    conv = cache.get("dx_conv")  # the node's binding for these shapes, repacked each step
    if conv is None or not conv.repack(wt, None):
        conv = cache["dx_conv"] = Conv2d(wt, None, dy.shape, (1, 1), (
            kh - 1 - pt, kw - 1 - pl, kh - 1 - pb, kw - 1 - pr), dtype=dy.dtype)
    gx = kept(cache, "gx", x_shape, dy.dtype)
    conv(np.ascontiguousarray(dy), gx)
    return gx


@register_grad("Conv")
def conv_grad(ctx, gy):
    x, w = ctx.inputs[0], ctx.inputs[1]
    b = ctx.input(2)
    (kh, kw), (sh, sw), (dh, dw), pads, group = _geometry(ctx, x, w, b)
    pt, pl = pads[0], pads[1]
    dy = gy[0]
    one_d = x.ndim == 3
    x4 = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if one_d else x
    n, c = x4.shape[:2]
    m = w.shape[0]
    oh, ow = (1, dy.shape[2]) if one_d else dy.shape[2:]
    p = oh * ow
    dy3 = np.ascontiguousarray(dy).reshape(n, m, p)
    need_x, need_w = ctx.needs[0], ctx.needs[1]
    need_b = len(ctx.needs) > 2 and ctx.needs[2]
    gb = dy3.sum(axis=(0, 2)) if need_b else None
    if not (need_x or need_w):
        return (None, None, gb)[:len(ctx.inputs)]
    cg, mg = c // group, m // group
    kk = kh * kw
    w3 = w.reshape(group, mg, cg * kk)
    # written by the first chunk's product (the others add to it); zeros for an empty batch
    gw = None
    if need_w:
        gw = kept(ctx.scratch, "gw", (group, mg, cg * kk), x.dtype) if n else \
            np.zeros((group, mg, cg * kk), dtype=x.dtype)  # an empty batch
    gx = None
    if need_x and not one_d and DX.applies(x4, dy, w, group):  # small maps: kernels/conv_dx.py
        gx = kept(ctx.scratch, "gx", x4.shape, x.dtype)
        DX.input_grad(ctx.cache, dy, w, gx, (kh, kw), (sh, sw), (dh, dw), (pt, pl))
        need_x = False
    elif need_x and _as_forward(x, group, (sh, sw), (dh, dw), (kh, kw), pads):
        gx = _dx_by_forward_conv(dy, w, x4.shape, (kh, kw), pads, ctx.cache)
        need_x = False
    elif need_x:
        gx = kept(ctx.scratch, "gx", x4.shape, x.dtype)
    rows = c * kk
    per_img = rows * p * x.dtype.itemsize
    step = max(1, min(n, CHUNK_BYTES // max(per_img, 1)))
    if need_w and group == 1 and DW.weight_grad(ctx.cache, x4, dy3, gw[0], (
            (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh, ow))):
        need_w = False  # on the microkernel (kernels/conv_dw.py); else im2col + BLAS below
    cols = kept(ctx.scratch, "cols", (rows, step * p), x.dtype) if need_w else None
    dyt = kept(ctx.scratch, "dyt", (m, step * p), x.dtype) if (need_w or need_x) else None
    dcols = kept(ctx.scratch, "dcols", (rows, step * p), x.dtype) if need_x else None
    for n0 in range(0, n, step) if (need_w or need_x) else ():
        n1 = min(n, n0 + step)
        q = (n1 - n0) * p
        K.nchw_to_cnp(dy3, dyt, n0, n1)
        if need_w:
            K.im2col(x4, cols, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
        for g in range(group):
            dyg = dyt[g * mg:(g + 1) * mg, :q]
            if need_w:
                matmul_split(dyg, cols[g * cg * kk:(g + 1) * cg * kk, :q].T, gw[g], n0 > 0)
            if need_x:
                matmul_split(w3[g].T, dyg, dcols[g * cg * kk:(g + 1) * cg * kk, :q])
        if need_x:
            K.col2im(dcols[:, :q] if q == dcols.shape[1] else
                     np.ascontiguousarray(dcols[:, :q]), gx, n0, n1, kh, kw, sh, sw, dh, dw,
                     pt, pl, oh, ow)
    res = (None if gx is None else gx.reshape(x.shape),
           None if gw is None else gw.reshape(w.shape), gb)
    return res[:len(ctx.inputs)]


def _ct_geometry(ctx, x, w, b):
    """ConvTranspose's resolved (k, s, d, begin pads, group), 1-D lifted to 2-D; pads from
    output_shape / auto_pad resolved by the op's own shape rule."""
    geo = ctx.cache.get("ct_geo")
    if geo is None:
        from ...errors import TrainingError
        from ...ops.conv_transpose import _geometry as ct_geometry

        a = ctx.attrs
        if x.ndim not in (3, 4):
            raise TrainingError(f"node '{ctx.label}' (ConvTranspose): backward supports 1-D and "
                                f"2-D, got input rank {x.ndim}")
        octx = OpContext(ctx.label, "ConvTranspose", ctx.opset, True)
        infos = [TensorInfo(t.shape, t.dtype) if t is not None else None for t in (x, w, b)]
        s, d, p, g, _, _ = ct_geometry(octx, *infos, a.get("auto_pad", "NOTSET"),
                                       a.get("dilations"), a.get("group", 1),
                                       a.get("kernel_shape"), a.get("output_padding"),
                                       a.get("output_shape"), a.get("pads"), a.get("strides"))
        k = tuple(w.shape[2:])
        nsp = len(k)
        begin = tuple(p[:nsp])
        if nsp == 1:
            k, s, d, begin = (1,) + k, (1,) + tuple(s), (1,) + tuple(d), (0,) + begin
        geo = ctx.cache["ct_geo"] = (k, tuple(s), tuple(d), begin, int(g))
    return geo


@register_grad("ConvTranspose")
def conv_transpose_grad(ctx, gy):
    """Y = T(W) X with T(W) the adjoint of the convolution Conv(., W) (same strides, pads,
    dilations, group; W is (C_in, C_out/group, kH, kW), exactly a convolution's weight from
    C_out to C_in channels).  So dX = Conv(dY, W) and dW is that convolution's weight gradient
    with input dY and output gradient X: both from one im2col of dY per chunk of images."""
    x, w = ctx.inputs[0], ctx.inputs[1]
    b = ctx.input(2)
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), group = _ct_geometry(ctx, x, w, b)
    dy = np.ascontiguousarray(gy[0])
    one_d = x.ndim == 3
    x4 = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if one_d else x
    dy4 = dy.reshape(dy.shape[0], dy.shape[1], 1, dy.shape[2]) if one_d else dy
    n, cin, oh, ow = x4.shape  # the "output" of the adjoint convolution
    cout = dy4.shape[1]
    need_x, need_w = ctx.needs[0], ctx.needs[1]
    need_b = len(ctx.needs) > 2 and ctx.needs[2]
    gb = dy4.sum(axis=(0, 2, 3)) if need_b else None
    if not (need_x or need_w):
        return (None, None, gb)[:len(ctx.inputs)]
    cg, mg = cout // group, cin // group  # conv input / output channels per group
    kk = kh * kw
    p = oh * ow
    w3 = w.reshape(group, mg, cg * kk)
    # written by the first chunk's product (the others add to it); zeros for an empty batch
    gw = (np.empty if n else np.zeros)((group, mg, cg * kk), dtype=x.dtype) if need_w else None
    gx = np.empty((n, cin, p), dtype=x.dtype) if need_x else None
    x3 = np.ascontiguousarray(x4).reshape(n, cin, p)
    rows = cout * kk
    step = max(1, min(n, CHUNK_BYTES // max(rows * p * x.dtype.itemsize, 1)))
    cols = np.empty((rows, step * p), dtype=x.dtype)
    xt = np.empty((cin, step * p), dtype=x.dtype) if need_w else None
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        q = (n1 - n0) * p
        K.im2col(dy4, cols, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
        if need_w:
            K.nchw_to_cnp(x3, xt, n0, n1)
        for g in range(group):
            cg_rows = cols[g * cg * kk:(g + 1) * cg * kk, :q]
            if need_w:
                matmul_split(xt[g * mg:(g + 1) * mg, :q], cg_rows.T, gw[g], n0 > 0)
            if need_x:
                z = w3[g] @ cg_rows  # (mg, q): images n0..n1-1, pixel-major per image
                gx[n0:n1, g * mg:(g + 1) * mg] = z.reshape(mg, n1 - n0, p).transpose(1, 0, 2)
    res = (None if gx is None else gx.reshape(x.shape),
           None if gw is None else gw.reshape(w.shape), gb)
    return res[:len(ctx.inputs)]
