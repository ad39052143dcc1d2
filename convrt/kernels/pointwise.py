"""1x1 convolution (no padding, group 1) as a GEMM whose vectors run along pixels.

In NCHW a 1x1 convolution is ``out[n] = W (M x C) @ x[n] (C x P)`` with the pixels P
contiguous.  The blocked kernel of ``kernels/conv.py`` vectorises over output channels and has
to transpose every tile back to NCHW; with few input channels (MobileNetV2's expansions read
16-24) that transpose and the store cost as much as the multiply-adds.  Here the microkernel
``_pw_sums`` keeps MR output channels x NV vectors of 16 pixels in registers: per input channel
it loads NV vectors of pixels, broadcasts MR weights (packed at construction, MR contiguous
values per input channel) and issues MR*NV multiply-adds.  Its sums are already in NCHW order,
so the epilogue (bias, residual, activation) stores straight along pixels.

Work items are (image, pixel tile, block of MR channels), in one of two orders chosen by the
input's size (``PIX_MAJOR_BYTES``).  They are claimed dynamically
from an atomic counter, as in the blocked kernel; each item computes the same outputs in the
same order whichever thread runs it (bitwise reproducible).  The last pixel tile of an image is
shifted left to end at the image's end (a few pixels are computed twice, written from the same
sums); layers with fewer than 16 pixels stay on the blocked kernel.  A stride is handled by
first gathering the strided pixels into a per-thread scratch.
"""

import threading

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
def _pw_sums(typingctx, xf, xb, xs, nc, wp, wb, bp, tile, mr, nv):
    """``tile[m*16*NV + p] = bp[wb/nc + m] + sum_c xf[xb + c*xs + p] * wp[wb + c*MR + m]`` for
    m < MR, p < 16*NV.  ``mr``, ``nv`` literals; ``xb``, ``xs``, ``nc``, ``wb`` uint64."""
    if not (isinstance(mr, types.IntegerLiteral) and isinstance(nv, types.IntegerLiteral)):
        return None
    n_m, n_v = mr.literal_value, nv.literal_value
    sig = types.void(xf, xb, xs, nc, wp, wb, bp, tile, mr, nv)

    def codegen(context, builder, signature, args):
        xf_v, xb_v, xs_v, nc_v, wp_v, wb_v, bp_v, tile_v, _, _ = args
        aty = signature.args
        ft = context.get_value_type(aty[0].dtype)
        vt = ir.VectorType(ft, VEC)
        vpt = vt.as_pointer()
        i64, i32 = ir.IntType(64), ir.IntType(32)

        def c64(v):
            return ir.Constant(i64, v)

        xa = context.make_array(aty[0])(context, builder, xf_v)
        wa = context.make_array(aty[4])(context, builder, wp_v)
        ba = context.make_array(aty[6])(context, builder, bp_v)
        ta = context.make_array(aty[7])(context, builder, tile_v)
        xb = context.cast(builder, xb_v, aty[1], types.uint64)
        xs = context.cast(builder, xs_v, aty[2], types.uint64)
        nc = context.cast(builder, nc_v, aty[3], types.uint64)
        wb = context.cast(builder, wb_v, aty[5], types.uint64)
        fname = "llvm.fmuladd.v%d%s" % (VEC, "f32" if isinstance(ft, ir.FloatType) else "f64")
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt] * 3), fname)
        splat_mask = ir.Constant(ir.VectorType(i32, VEC), [0] * VEC)
        undef = ir.Constant(vt, ir.Undefined)

        def splat(s):
            return builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)),
                                          undef, splat_mask)

        bbase = builder.udiv(wb, nc)  # = block * MR
        inits = [splat(builder.load(builder.gep(ba.data, [builder.add(bbase, c64(m))])))
                 for m in range(n_m)]
        pre = builder.block
        loop = builder.append_basic_block("pw.loop")
        done = builder.append_basic_block("pw.done")
        builder.cbranch(builder.icmp_unsigned(">", nc, c64(0)), loop, done)
        builder.position_at_end(loop)
        c = builder.phi(i64)
        c.add_incoming(c64(0), pre)
        accs = []  # accs[m*n_v + v]
        for m in range(n_m):
            for _ in range(n_v):
                acc = builder.phi(vt)
                acc.add_incoming(inits[m], pre)
                accs.append(acc)
        xo = builder.add(xb, builder.mul(c, xs))
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
        builder.cbranch(builder.icmp_unsigned("<", cn, nc), loop, done)
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
def _pw_kernel(xf, xb, xs, nc, wp, wb, bp, tile, mr, nv):
    """``_pw_sums`` for a runtime shape (mr, nv), one of ``SHAPES``."""
    if mr == 12 and nv == 2:
        _pw_sums(xf, xb, xs, nc, wp, wb, bp, tile, 12, 2)
    elif mr == 8 and nv == 3:
        _pw_sums(xf, xb, xs, nc, wp, wb, bp, tile, 8, 3)
    elif mr == 6 and nv == 4:
        _pw_sums(xf, xb, xs, nc, wp, wb, bp, tile, 6, 4)
    elif mr == 16 and nv == 1:
        _pw_sums(xf, xb, xs, nc, wp, wb, bp, tile, 16, 1)
    elif mr == 8 and nv == 2:
        _pw_sums(xf, xb, xs, nc, wp, wb, bp, tile, 8, 2)
    elif mr == 8 and nv == 1:
        _pw_sums(xf, xb, xs, nc, wp, wb, bp, tile, 8, 1)
    elif mr == 4 and nv == 2:
        _pw_sums(xf, xb, xs, nc, wp, wb, bp, tile, 4, 2)
    else:
        _pw_sums(xf, xb, xs, nc, wp, wb, bp, tile, 4, 1)


@pjit
def _run(xf, wp, bp, out, res, has_res, prm, geo, nthr, grain):
    """Work items claimed ``grain`` at a time from a shared counter by ``nthr`` workers."""
    ctr = np.zeros(1, dtype=np.int64)
    for _ in prange(nthr):
        _worker(ctr, grain, xf, wp, bp, out, res, has_res, prm, geo)


@njit(fastmath=_FM)
def _worker(ctr, grain, xf, wp, bp, out, res, has_res, prm, geo):
    """One worker: items u -> (image, pixel tile, channel block), the block fastest."""
    n_img, c_n, m_all, npix, mr, nv, nmb, act, pix_major = (
        geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[8])
    px = nv * 16
    npt = (npix + px - 1) // px
    total = n_img * npt * nmb
    tile = np.empty(TILE_ELEMS, dtype=wp.dtype)
    uc = _U(c_n)
    up = _U(npix)
    while True:
        u0 = _fetch_add(ctr, grain)
        if u0 >= total:
            break
        for u in range(u0, min(total, u0 + grain)):
            if pix_major:  # consecutive items: one pixel tile, every channel block
                mb = u % nmb
                r = u // nmb
                pt = r % npt
                n = r // npt
            else:  # consecutive items: one channel block along the image's pixel tiles
                pt = u % npt
                r = u // npt
                mb = r % nmb
                n = r // nmb
            p0 = min(pt * px, npix - px)
            m0 = mb * mr
            jv = min(mr, m_all - m0)
            _pw_kernel(xf, _U(n * c_n) * up + _U(p0), up, uc, wp, _U(mb) * _U(mr) * uc, bp,
                       tile, mr, nv)
            _store_tile(tile, px, px, out, _U(n * m_all + m0) * up + _U(p0), up, jv, res,
                        has_res, act, prm)


@pjit
def _gather(x, xs, n_c, h_n, w_n, oh_n, ow_n, sh, sw):
    """``xs[(u*oh + i)*ow + j] = x[(u*h + i*sh)*w + j*sw]``: the strided pixels, per plane u."""
    for u in prange(n_c):
        for i in range(oh_n):
            src = (u * h_n + i * sh) * w_n
            dst = (u * oh_n + i) * ow_n
            for j in range(ow_n):
                xs[dst + j] = x[src + j * sw]


class Pointwise:
    """A 1x1, unpadded, group-1 convolution bound once (same contract as ``Conv2d``).

    ``act``/``prm`` are Conv2d's activation code and (alpha, clip_min, clip_max, 0, 1) array.
    Use only when ``choose_shape`` finds a shape (at least 16 output pixels per image).
    """

    def __init__(self, w, bias, in_shape, strides, act, prm, dtype):
        dtype = np.dtype(dtype)
        n_img, c_n, h_n, w_n = (int(v) for v in in_shape)
        m_all = w.shape[0]
        sh, sw = (int(v) for v in strides)
        oh_n, ow_n = (h_n - 1) // sh + 1, (w_n - 1) // sw + 1
        npix = oh_n * ow_n
        self.in_shape = (n_img, c_n, h_n, w_n)
        self.out_shape = (n_img, m_all, oh_n, ow_n)
        self.dtype = dtype
        self._prm = prm
        self._dummy = np.zeros(1, dtype=dtype)
        self._strided = (sh, sw) != (1, 1)
        self._gather_geo = (n_img * c_n, h_n, w_n, oh_n, ow_n, sh, sw)
        mr, nv = choose_shape(m_all, npix, dtype)
        nmb = -(-m_all // mr)
        wp = np.zeros((nmb * mr, c_n), dtype=dtype)
        wp[:m_all] = w.reshape(m_all, c_n)
        # (block, c, MR): the MR weights one input channel contributes are contiguous
        self._wp = np.ascontiguousarray(wp.reshape(nmb, mr, c_n).transpose(0, 2, 1))
        self._bp = np.zeros(nmb * mr, dtype=dtype)
        self._bp[:m_all] = bias
        self._items = n_img * -(-npix // (nv * VEC)) * nmb
        pix_major = int(c_n * npix * dtype.itemsize > PIX_MAJOR_BYTES)
        self._geo = np.array([n_img, c_n, m_all, npix, mr, nv, nmb, act, pix_major],
                             dtype=np.int64)
        self.shape = (mr, nv)
        self._tls = threading.local()

    def scratch_bytes(self) -> int:
        """Bytes of one calling thread's strided-input copy (0 at unit stride)."""
        if not self._strided:
            return 0
        n_c, _, _, oh_n, ow_n, _, _ = self._gather_geo
        return n_c * oh_n * ow_n * self.dtype.itemsize

    def __call__(self, x, out, residual=None):
        xf = x.reshape(-1)
        if self._strided:
            xs = getattr(self._tls, "xs", None)
            if xs is None:
                xs = self._tls.xs = np.empty(self.scratch_bytes() // self.dtype.itemsize,
                                             self.dtype)
            _gather(xf, xs, *self._gather_geo)
            xf = xs
        res = self._dummy if residual is None else residual.reshape(-1)
        nthr, grain = work_split(self._items)
        _run(xf, self._wp, self._bp, out.reshape(-1), res, residual is not None, self._prm,
             self._geo, nthr, grain)
        return out
