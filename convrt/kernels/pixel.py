"""Convolution vectorised along output pixels: 1x1 layers and layers with few input channels.

``Conv2d`` (kernels/conv.py) runs a layer here when its reduction (input channels x taps) is
short.  In NCHW, output row y of channel m is ``sum_r W[m, r] * X[r, y, :]`` with the pixels
contiguous; the blocked kernel of conv.py vectorises over output channels instead and has to
transpose every tile back to NCHW, which on a short reduction (MobileNetV2's expansions read
16-24 channels, a first layer 3 x 3 x 3 taps) costs as much as the multiply-adds.  Here the
microkernel ``_px_sums`` keeps MR output channels x NV vectors of 16 pixels in registers: per
tap r it loads NV vectors of pixels, broadcasts MR weights (packed at construction, MR
contiguous values per tap) and issues MR*NV multiply-adds.  Its sums are already in NCHW
order, so the epilogue (bias, residual, activation) stores straight along pixels.

The input is read through Conv2d's layout (the zero-bordered, stride-phase-split copy, or the
input itself), with the same tap offsets as the blocked kernel: consecutive output pixels read
consecutive elements whatever the stride.  A 1x1 unpadded layer runs as one long row per image;
with a stride its pixels are first gathered (``gather``) so that it still does.

Work items are (image, output row, pixel tile, block of MR channels), in one of two orders
chosen by the input's size (``PIX_MAJOR_BYTES``), claimed dynamically from an atomic counter as
in the blocked kernel; each item computes the same outputs in the same order whichever thread
runs it (bitwise reproducible).  The last tile of a row is shifted left to end at the row's end
(a few pixels are computed twice, written from the same sums), so a row needs 16+ pixels.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import FAST, njit, pjit
from .conv import _NREGS, _VBITS, VEC, _fetch_add, _store_tile, work_split

_FM = set(FAST)
_U = np.uint64
# (MR channels, NV vectors of 16 pixels) -> relative speed per multiply-add.  MR*NV sums, NV
# pixel vectors and one broadcast must fit the 32 AVX-512 registers.
SHAPES = {(12, 2): 1.0, (8, 3): 1.0, (6, 4): 0.97, (16, 1): 0.85, (8, 2): 0.9, (8, 1): 0.7,
          (4, 2): 0.6, (4, 1): 0.45}
TILE_ELEMS = 24 * VEC  # largest MR * NV * 16
# Work order.  When one image's input fits in L2 (2 MiB per core here), a worker walks one
# block of MR output channels along all the pixel tiles: it writes MR long contiguous runs and
# re-reads the input from L2 once per block.  Otherwise it keeps one input tile in L1 and walks
# the channel blocks, which writes M short runs at once.  On MobileNetV2's 112x112 expansion
# (16 -> 96 channels, 4.8 MB written) the first order took 0.48 ms in the model, the second 1.3.
PIX_MAJOR_BYTES = 2 << 20


def _shapes(dtype):
    """Shapes whose registers fit this CPU (AVX2 hosts get the narrow ones)."""
    nvec = max(1, VEC * 8 * dtype.itemsize // _VBITS)
    return {(m, v): e for (m, v), e in SHAPES.items()
            if (m * v + v) * nvec + 1 <= _NREGS or (m, v) == (4, 1)}


def choose_shape(m_all, npix, dtype):
    """The (MR, NV) shape with the least estimated time (padded channels, recomputed pixels)."""
    best, best_cost = None, None
    for (mr, nv), eff in _shapes(np.dtype(dtype)).items():
        px = nv * VEC
        if px > npix:
            continue
        cost = -(-m_all // mr) * mr * -(-npix // px) * px / eff
        if best_cost is None or cost < best_cost:
            best, best_cost = (mr, nv), cost
    return best


@intrinsic
def _px_sums(typingctx, xf, xb, offs, wp, blk, bp, tile, mr, nv):
    """``tile[m*16*NV + p] = bp[blk*MR + m] + sum_r xf[xb + offs[r] + p] * wp[blk, r, m]`` for
    m < MR, p < 16*NV.  ``mr``, ``nv`` literals; ``xb`` uint64; arrays C-contiguous."""
    if not (isinstance(mr, types.IntegerLiteral) and isinstance(nv, types.IntegerLiteral)):
        return None
    n_m, n_v = mr.literal_value, nv.literal_value
    sig = types.void(xf, xb, offs, wp, blk, bp, tile, mr, nv)

    def codegen(context, builder, signature, args):
        xf_v, xb_v, offs_v, wp_v, blk_v, bp_v, tile_v, _, _ = args
        aty = signature.args
        ft = context.get_value_type(aty[0].dtype)
        vt = ir.VectorType(ft, VEC)
        vpt = vt.as_pointer()
        i64, i32 = ir.IntType(64), ir.IntType(32)

        def c64(v):
            return ir.Constant(i64, v)

        xa = context.make_array(aty[0])(context, builder, xf_v)
        oa = context.make_array(aty[2])(context, builder, offs_v)
        wa = context.make_array(aty[3])(context, builder, wp_v)
        ba = context.make_array(aty[5])(context, builder, bp_v)
        ta = context.make_array(aty[6])(context, builder, tile_v)
        xb = context.cast(builder, xb_v, aty[1], types.uint64)
        blk = context.cast(builder, blk_v, aty[4], types.int64)
        nc = builder.extract_value(oa.shape, 0)
        wb = builder.mul(blk, builder.mul(nc, c64(n_m)))
        fname = "llvm.fmuladd.v%d%s" % (VEC, "f32" if isinstance(ft, ir.FloatType) else "f64")
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), fname)
        splat_mask = ir.Constant(ir.VectorType(i32, VEC), [0] * VEC)
        undef = ir.Constant(vt, ir.Undefined)

        def splat(s):
            return builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)),
                                          undef, splat_mask)

        bbase = builder.mul(blk, c64(n_m))
        inits = [splat(builder.load(builder.gep(ba.data, [builder.add(bbase, c64(m))])))
                 for m in range(n_m)]
        pre = builder.block
        loop = builder.append_basic_block("px.loop")
        done = builder.append_basic_block("px.done")
        builder.cbranch(builder.icmp_signed(">", nc, c64(0)), loop, done)
        builder.position_at_end(loop)
        c = builder.phi(i64)
        c.add_incoming(c64(0), pre)
        accs = []  # accs[m*n_v + v]
        for m in range(n_m):
            for _ in range(n_v):
                acc = builder.phi(vt)
                acc.add_incoming(inits[m], pre)
                accs.append(acc)
        xo = builder.add(xb, builder.load(builder.gep(oa.data, [c])))
        xvs = [builder.load(builder.bitcast(builder.gep(xa.data, [builder.add(xo, c64(v * VEC))]),
                                            vpt), align=1) for v in range(n_v)]
        wo = builder.add(wb, builder.mul(c, c64(n_m)))
        news = []
        for m in range(n_m):
            ws = splat(builder.load(builder.gep(wa.data, [builder.add(wo, c64(m))])))
            for v in range(n_v):
                news.append(builder.call(fma, [ws, xvs[v], accs[m * n_v + v]]))
        cn = builder.add(c, c64(1))
        end = builder.block
        c.add_incoming(cn, end)
        for acc, new in zip(accs, news):
            acc.add_incoming(new, end)
        builder.cbranch(builder.icmp_signed("<", cn, nc), loop, done)
        builder.position_at_end(done)
        finals = []
        for i in range(n_m * n_v):  # every phi first: LLVM wants them at the block's top
            fin = builder.phi(vt)
            fin.add_incoming(inits[i // n_v], pre)
            fin.add_incoming(news[i], end)
            finals.append(fin)
        for i, fin in enumerate(finals):
            dst = builder.bitcast(builder.gep(ta.data, [c64(i * VEC)]), vpt)
            builder.store(fin, dst, align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit
def _px_kernel(xf, xb, offs, wp, blk, bp, tile, mr, nv):
    """``_px_sums`` for a runtime shape (mr, nv), one of ``SHAPES``."""
    if mr == 12 and nv == 2:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 12, 2)
    elif mr == 8 and nv == 3:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 8, 3)
    elif mr == 6 and nv == 4:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 6, 4)
    elif mr == 16 and nv == 1:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 16, 1)
    elif mr == 8 and nv == 2:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 8, 2)
    elif mr == 8 and nv == 1:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 8, 1)
    elif mr == 4 and nv == 2:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 4, 2)
    else:
        _px_sums(xf, xb, offs, wp, blk, bp, tile, 4, 1)


@pjit
def run(xf, offs, wp, bp, out, res, has_res, prm, geo, nthr, grain):
    """Work items claimed ``grain`` at a time from a shared counter by ``nthr`` workers.

    ``geo`` (int64) = images, output rows, row length, M, MR, NV, channel blocks, activation,
    pixel-major order (0/1), input image stride, input row step.
    """
    ctr = np.zeros(1, dtype=np.int64)
    for _ in prange(nthr):
        _worker(ctr, grain, xf, offs, wp, bp, out, res, has_res, prm, geo)


@njit(fastmath=_FM)
def _worker(ctr, grain, xf, offs, wp, bp, out, res, has_res, prm, geo):
    """One worker of ``run``: claims items until none is left."""
    n_img, oh_n, ow_n, m_all, mr, nv, nmb, act, pix_major, nstride, rowstep = (
        geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9], geo[10])
    px = nv * 16
    ntl = (ow_n + px - 1) // px
    rt = oh_n * ntl  # (row, tile) pairs per image
    total = n_img * rt * nmb
    ohw = _U(oh_n * ow_n)
    tile = np.empty(TILE_ELEMS, dtype=wp.dtype)
    while True:
        u0 = _fetch_add(ctr, grain)
        if u0 >= total:
            break
        for u in range(u0, min(total, u0 + grain)):
            if pix_major:  # consecutive items: one pixel tile, every channel block
                mb = u % nmb
                r = u // nmb
                q = r % rt
                n = r // rt
            else:  # consecutive items: one channel block along the image's pixel tiles
                q = u % rt
                r = u // rt
                mb = r % nmb
                n = r // nmb
            y = q // ntl
            p0 = min((q - y * ntl) * px, ow_n - px)
            m0 = mb * mr
            _px_kernel(xf, _U(n * nstride + y * rowstep + p0), offs, wp, mb, bp, tile, mr, nv)
            _store_tile(tile, px, px, out, _U(((n * m_all + m0) * oh_n + y) * ow_n + p0), ohw,
                        min(mr, m_all - m0), res, has_res, act, prm)


@pjit
def gather(x, xs, n_c, h_n, w_n, oh_n, ow_n, sh, sw):
    """``xs[(u*oh + i)*ow + j] = x[(u*h + i*sh)*w + j*sw]``: the strided pixels, per plane u."""
    for u in prange(n_c):
        for i in range(oh_n):
            src = (u * h_n + i * sh) * w_n
            dst = (u * oh_n + i) * ow_n
            for j in range(ow_n):
                xs[dst + j] = x[src + j * sw]


def pack_weights(w, bias, mr, dtype):
    """``(wp, bp)``: weights ``(blocks, C*kH*kW, MR)`` (the MR weights of one tap contiguous)
    and the bias ``(blocks*MR,)``, zero-padded to whole blocks."""
    m_all = w.shape[0]
    nmb = -(-m_all // mr)
    wf = np.zeros((nmb * mr, w[0].size), dtype=dtype)
    wf[:m_all] = w.reshape(m_all, -1)
    bp = np.zeros(nmb * mr, dtype=dtype)
    bp[:m_all] = bias
    return np.ascontiguousarray(wf.reshape(nmb, mr, -1).transpose(0, 2, 1)), bp
