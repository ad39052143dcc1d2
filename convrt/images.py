"""Image files as model inputs: decode, resize, center-crop, scale to [0, 1], normalize.

Why here and not in the CLI only: ``convrt run --input``, ``convrt inspect --activations`` and
``convrt featuremaps --input`` all accept an image, and ``convrt.viz`` shows the same picture
beside the feature maps, so the one preprocessing lives in one place.  It is torchvision's
usual evaluation transform: resize so the image covers H x W (the shorter side fits), crop the
center, divide by 255, subtract ``mean`` and divide by ``std`` per channel.  Pillow is optional
(the ``[viz]`` extra); a missing Pillow is a one-line InputError saying how to install it.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# one-channel models: the mean of ImageNet's channel statistics (torchvision's grayscale rule)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
INSTALL_HINT = 'pip install "convrt[viz]"'


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise InputError(f"reading images needs Pillow: {INSTALL_HINT}") from None
    return Image


def load_image(path, size: tuple[int, int], channels: int) -> np.ndarray:
    """The image at ``path`` as an (H, W, C) float32 array in [0, 1], resized so it covers
    ``size`` = (H, W) and center-cropped to it; grayscale when ``channels`` is 1."""
    Image = _pil()
    if channels not in (1, 3):
        raise InputError(f"{path}: an image gives 1 or 3 channels; the model's input has "
                         f"{channels}")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot decode image {str(path)!r} ({type(e).__name__})") from None
    h, w = size
    scale = max(h / im.height, w / im.width)
    rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    im = im.resize((rw, rh), Image.BILINEAR)
    left, top = (rw - w) // 2, (rh - h) // 2
    im = im.crop((left, top, left + w, top + h))
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a[:, :, None] if a.ndim == 2 else a


def image_feed(path, shape, mean=None, std=None, layout: str = "NCHW") -> np.ndarray:
    """A (1, C, H, W) (or NHWC) normalized float32 batch from an image, for input ``shape``.

    Args:
        path: the image file.
        shape: the model input's shape (ints; a symbolic batch dim is fine).
        mean, std: per channel (len C); None = ImageNet's (gray: their averages).
        layout: "NCHW" or "NHWC": which axes of ``shape`` are channels and H, W.
    """
    if len(shape) != 4:
        raise InputError(f"{path}: an image feeds a 4-D input; this one is {list(shape)}")
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1],
                                                                        shape[2])
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise InputError(f"{path}: the model's input {list(shape)} ({layout}) has no fixed "
                         "channels/height/width to fit an image to; feed an .npy file")
    mean = (IMAGENET_MEAN if c == 3 else GRAY_MEAN) if mean is None else tuple(mean)
    std = (IMAGENET_STD if c == 3 else GRAY_STD) if std is None else tuple(std)
    for flag, vals in (("--mean", mean), ("--std", std)):
        if len(vals) != c:
            raise InputError(f"{flag} has {len(vals)} value(s); the model's input has {c} "
                             "channel(s)")
    if any(s == 0 for s in std):
        raise InputError("--std must not contain 0")
    a = (load_image(path, (h, w), c) - np.asarray(mean, np.float32)) / np.asarray(std,
                                                                                   np.float32)
    a = a[None].astype(np.float32)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2) if layout == "NCHW" else a)


def is_image(path) -> bool:
    """By the file name: .npy is an array, anything else with an image suffix is an image."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)
