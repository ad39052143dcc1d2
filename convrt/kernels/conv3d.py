"""Direct 3-D convolution (NCDHW), one parallel task per (image, output channel).

A simple kernel for the rarer volumetric case; 2-D and 1-D convs use ``conv.py``'s packed
kernel.  ``geo`` is an int64 array: strides (3), dilations (3), pads begin (3).  Padding is
handled by index tests; the op validated every shape.
"""

from numba import prange

from ._jit import pjit


@pjit
def conv3d(x, w, bias, has_bias, out, group, geo):
    n, c, d0, d1, d2 = x.shape
    m = out.shape[1]
    o0, o1, o2 = out.shape[2], out.shape[3], out.shape[4]
    cg, k0, k1, k2 = w.shape[1], w.shape[2], w.shape[3], w.shape[4]
    s0, s1, s2, e0, e1, e2, p0, p1, p2 = (geo[0], geo[1], geo[2], geo[3], geo[4], geo[5],
                                          geo[6], geo[7], geo[8])
    mg = m // group
    for t in prange(n * m):
        i, j = t // m, t % m
        g = j // mg
        dst = out[i, j]
        b = bias[j] if has_bias else 0.0
        for a in range(o0):
            for bb in range(o1):
                for q in range(o2):
                    dst[a, bb, q] = b
        for cl in range(cg):
            src = x[i, g * cg + cl]
            for u in range(k0):
                for r in range(k1):
                    for h in range(k2):
                        wv = w[j, cl, u, r, h]
                        for a in range(o0):
                            z = a * s0 - p0 + u * e0
                            if z < 0 or z >= d0:
                                continue
                            for bb in range(o1):
                                y = bb * s1 - p1 + r * e1
                                if y < 0 or y >= d1:
                                    continue
                                for q in range(o2):
                                    xx = q * s2 - p2 + h * e2
                                    if 0 <= xx < d2:
                                        dst[a, bb, q] += wv * src[z, y, xx]
