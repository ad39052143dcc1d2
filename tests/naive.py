"""Slow, obviously-correct numpy references for the kernels (float64 accumulation)."""

import numpy as np

from convrt.activations import reference


def conv2d_ref(x, w, b=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """ONNX Conv: x (N, C, H, W), w (M, C//group, kH, kW), pads (top, left, bottom, right)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    mg = m // group
    out = np.zeros((n, m, oh, ow))
    for g in range(group):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w[g * mg:(g + 1) * mg]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dh: i * dh + (oh - 1) * sh + 1: sh,
                           j * dw: j * dw + (ow - 1) * sw + 1: sw]  # (n, cg, oh, ow)
                out[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, wg[:, :, i, j])
    if b is not None:
        out += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return out


def activation_ref(y, activation="none", alpha=0.01, clip_min=-np.inf, clip_max=np.inf):
    """The fused activations, with numpy's NaN behaviour (``convrt.activations.reference``)."""
    return reference(y, activation, alpha, clip_min, clip_max)
