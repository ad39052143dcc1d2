"""Transposed convolution (scatter form) on lifted 3-D arrays.

x (N, C, D, H, W), w (C, M/group, kd, kh, kw), out (N, M, OD, OH, OW).  Each output channel of
each image is one parallel task, so no two tasks write the same cell.  ``geo`` is an int64 array:
strides (3), dilations (3), pads begin (3); input cells whose target falls outside the output
(cropped by pads) are skipped.
"""

from numba import prange

from ._jit import pjit


@pjit
def conv_transpose3d(x, w, bias, has_bias, out, group, geo):
    n, c, d0, d1, d2 = x.shape
    m = out.shape[1]
    o0, o1, o2 = out.shape[2], out.shape[3], out.shape[4]
    k0, k1, k2 = w.shape[2], w.shape[3], w.shape[4]
    s0, s1, s2, e0, e1, e2, p0, p1, p2 = (geo[0], geo[1], geo[2], geo[3], geo[4], geo[5],
                                          geo[6], geo[7], geo[8])
    cg = c // group
    mg = m // group
    for t in prange(n * m):
        i, j = t // m, t % m
        g = j // mg
        jl = j - g * mg
        dst = out[i, j]
        b = bias[j] if has_bias else 0.0
        for a in range(o0):
            for bb in range(o1):
                for q in range(o2):
                    dst[a, bb, q] = b
        for cc in range(g * cg, (g + 1) * cg):
            src = x[i, cc]
            ker = w[cc, jl]
            for z in range(d0):
                for y in range(d1):
                    for xx in range(d2):
                        v = src[z, y, xx]
                        for u in range(k0):
                            oz = z * s0 - p0 + u * e0
                            if oz < 0 or oz >= o0:
                                continue
                            for r in range(k1):
                                oy = y * s1 - p1 + r * e1
                                if oy < 0 or oy >= o1:
                                    continue
                                for h in range(k2):
                                    ox = xx * s2 - p2 + h * e2
                                    if 0 <= ox < o2:
                                        dst[oz, oy, ox] += v * ker[u, r, h]
