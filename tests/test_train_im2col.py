"""im2col for the convolution gradients (convrt/train/kernels/conv.py), both variants (row
copies, and the gather taken by small output maps), against the layout's definition written
here in numpy: zero padding, then one strided window per tap."""

import numpy as np
import pytest

from convrt.train.kernels import conv as K


def reference_cols(x, n0, n1, kernel, strides, dilations, pads, out):
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh, ow) = kernel, strides, dilations, pads, out
    n, c, h, w = x.shape
    big = np.zeros((n, c, h + pt + oh * sh + kh * dh, w + pl + ow * sw + kw * dw), x.dtype)
    big[:, :, pt:pt + h, pl:pl + w] = x
    cols = np.empty((c, kh, kw, n1 - n0, oh * ow), x.dtype)
    for a in range(kh):
        for b in range(kw):
            win = big[n0:n1, :, a * dh:a * dh + oh * sh:sh, b * dw:b * dw + ow * sw:sw]
            cols[:, a, b] = win.transpose(1, 0, 2, 3).reshape(c, n1 - n0, oh * ow)
    return cols.reshape(c * kh * kw, (n1 - n0) * oh * ow)


def out_size(h, k, s, d, p0, p1):
    return (h + p0 + p1 - d * (k - 1) - 1) // s + 1


# (images, channels, H, W, kernel, strides, dilations, pads top/left/bottom/right, n0, n1)
CASES = [(8, 5, 2, 2, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 0, 8),
         (3, 4, 4, 5, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), 1, 3),
         (2, 3, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 0, 2),
         (2, 3, 9, 7, (3, 2), (2, 1), (2, 1), (2, 0, 1, 1), 0, 2),
         (2, 3, 4, 4, (1, 1), (2, 2), (1, 1), (0, 0, 0, 0), 0, 2),
         (1, 2, 3, 3, (5, 5), (1, 1), (1, 1), (3, 3, 3, 3), 0, 1),  # windows wider than x
         (2, 3, 17, 16, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, 2),
         (2, 3, 20, 20, (7, 7), (2, 2), (1, 1), (3, 3, 3, 3), 0, 2)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", ["dispatch", "gather", "rows"])
def test_im2col_matches_definition(case, variant):
    n, c, h, w, (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr), n0, n1 = case
    oh, ow = out_size(h, kh, sh, dh, pt, pb), out_size(w, kw, sw, dw, pl, pr)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x.flat[::7] = np.inf  # padding stays 0 beside inf and NaN; they land where read
    x.flat[3::11] = np.nan
    cols = np.full((c * kh * kw, (n1 - n0) * oh * ow), 7.0, np.float32)  # every cell written
    fn = {"dispatch": K.im2col, "gather": K._im2col_gather, "rows": K._im2col_rows}[variant]
    fn(x, cols, n0, n1, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
    want = reference_cols(x, n0, n1, (kh, kw), (sh, sw), (dh, dw), (pt, pl), (oh, ow))
    np.testing.assert_array_equal(cols, want)

