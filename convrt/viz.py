"""Feature-map pictures: each requested layer's channels as a labelled grid, the input beside.

``feature_maps(sess, feeds, layers)`` returns a matplotlib Figure; ``save_feature_maps`` writes
it (PNG).  The values are fetched with ``sess.run(layers, feeds)``, so any 4-D value of the
original model works, also one the optimizer fused away (convrt/fetch.py).  Each channel is
normalized on its own (min..max -> the colour map's range): channels differ in scale by orders
of magnitude, and one global scale would show most of them as flat.  A constant channel (a dead
ReLU) is drawn as the colour map's low end.

matplotlib is optional (``pip install "convrt[viz]"``).  Only its object-oriented API with the
Agg canvas is used, never pyplot: no GUI backend is chosen, no global state changes, and it works
on headless machines and in threads.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError
from .images import INSTALL_HINT

TILE_GAP = 1  # pixels between channel tiles in a layer's mosaic


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError(f"pictures need matplotlib: {INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def check_layers(sess, layers: list[str]) -> None:
    """One-line InputErrors for names that are unknown or not 4-D (N, C, H, W) values."""
    if not layers:
        raise InputError("no layer given: name one or more values (convrt inspect "
                         "--activations lists them)")
    sess._fetch.check(list(layers))
    info = {v.name: v for v in sess.get_values()}
    for name in layers:
        v = info[name]
        if v.shape is None or len(v.shape) != 4:
            what = "of unknown rank" if v.shape is None else (
                f"{len(v.shape)}-D {v.shape}")
            raise InputError(f"layer {name!r} ({v.op} output) is {what}; feature maps need a "
                             "4-D N x C x H x W value")


def mosaic(maps: np.ndarray, max_channels: int = 64) -> tuple[np.ndarray, int]:
    """(C, H, W) -> a 2-D grid of per-channel-normalized tiles (NaN between tiles) and the
    number of columns; at most ``max_channels`` channels."""
    maps = np.asarray(maps, np.float64)[:max_channels]
    c, h, w = maps.shape
    lo = np.nanmin(maps.reshape(c, -1), axis=1)[:, None, None]
    hi = np.nanmax(maps.reshape(c, -1), axis=1)[:, None, None]
    norm = np.where(hi > lo, (maps - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    g = TILE_GAP
    grid = np.full((rows * (h + g) - g, cols * (w + g) - g), np.nan)
    for i in range(c):
        r, k = divmod(i, cols)
        grid[r * (h + g):r * (h + g) + h, k * (w + g):k * (w + g) + w] = norm[i]
    return grid, cols


def _input_picture(x: np.ndarray) -> np.ndarray:
    """An (H, W[, 3]) picture of the first sample of a 4-D NCHW (or NHWC) input, min..max."""
    a = np.asarray(x[0], np.float64)
    if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    lo, hi = np.nanmin(a), np.nanmax(a)
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a[:, :, 0] if a.shape[-1] == 1 else a


def first_conv_weights(sess) -> tuple[str, np.ndarray]:
    """(node name, weights (O, C, kH, kW)) of the original model's first 2-D convolution."""
    for node in sess.original_graph.nodes:
        w = node.input(1) if node.op_type == "Conv" else None
        if w is not None and w.const is not None and w.const.ndim == 4:
            return node.name or node.outputs[0].name, w.const
    raise InputError(f"{sess.graph.source}: no 2-D convolution with constant weights to draw")


def _filters_picture(w: np.ndarray, max_channels: int) -> tuple[np.ndarray, str]:
    """RGB tiles of each filter when it reads 3 channels, else its first input channel."""
    w = np.asarray(w, np.float64)[:max_channels]
    if w.shape[1] == 3:
        o, _, kh, kw = w.shape
        lo = w.reshape(o, -1).min(1)[:, None, None, None]
        hi = w.reshape(o, -1).max(1)[:, None, None, None]
        t = np.where(hi > lo, (w - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
        cols = math.ceil(math.sqrt(o))
        rows = math.ceil(o / cols)
        g = TILE_GAP
        grid = np.ones((rows * (kh + g) - g, cols * (kw + g) - g, 3))
        for i in range(o):
            r, k = divmod(i, cols)
            grid[r * (kh + g):r * (kh + g) + kh, k * (kw + g):k * (kw + g) + kw] = \
                t[i].transpose(1, 2, 0)
        return grid, "RGB per filter"
    return mosaic(w[:, 0], max_channels)[0], "input channel 0"


def feature_maps(sess, feeds: dict, layers: list[str], max_channels: int = 64,
                 filters: bool = False, image: np.ndarray | None = None, cmap: str = "viridis"):
    """A Figure: the input, then each layer's channels as a grid (channel numbers on the tiles),
    then (``filters``) the first convolution's kernels.

    Args:
        sess: an InferenceSession.
        feeds: its input feeds; the first sample of the first input is drawn.
        layers: names of 4-D values (``sess.get_values()``).
        max_channels: channels drawn per layer (the first ones).
        image: an (H, W[, 3]) picture in [0, 1] to show as the input (default: the feed).
    """
    Figure, FigureCanvasAgg = _matplotlib()
    check_layers(sess, layers)
    outs = sess.run(list(layers), feeds)
    x = next(iter(feeds.values()))
    panels = [("input", image if image is not None else _input_picture(x), None, 0)]
    for name, y in zip(layers, outs):
        grid, cols = mosaic(y[0], max_channels)
        op = next(v.op for v in sess.get_values() if v.name == name)
        shown = min(y.shape[1], max_channels)
        extra = f", first {shown}" if shown < y.shape[1] else ""
        title = f"{name}\n{op}: {y.shape[1]} ch x {y.shape[2]}x{y.shape[3]}{extra}"
        panels.append((title, grid, y.shape[2:], cols))
    if filters:
        node, w = first_conv_weights(sess)
        grid, how = _filters_picture(w, max_channels)
        panels.append((f"{node} kernels\n{w.shape[0]} x {w.shape[1]} x {w.shape[2]}x"
                       f"{w.shape[3]} ({how})", grid, None, 0))
    fig = Figure(figsize=(3.4 * len(panels), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    axes = np.atleast_1d(axes)
    for ax, (title, pic, hw, cols) in zip(axes, panels):
        color = pic.ndim == 3
        ax.imshow(pic, cmap=None if color else cmap, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if hw is not None:  # number the channel tiles
            h, w = hw
            fs = max(4, min(7 if h >= 12 else 5, int(110 / max(cols, 1))))
            for i in range(min(max_channels, cols * math.ceil(pic.shape[0] / (h + TILE_GAP)))):
                r, k = divmod(i, cols)
                if r * (h + TILE_GAP) >= pic.shape[0] or np.isnan(
                        pic[r * (h + TILE_GAP), k * (w + TILE_GAP)]):
                    continue
                ax.text(k * (w + TILE_GAP) + 0.5, r * (h + TILE_GAP) + 0.5, str(i), color="white",
                        fontsize=fs, va="top", ha="left",
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0})
    fig.tight_layout()
    return fig


def save_feature_maps(sess, feeds: dict, layers: list[str], path, **kw) -> None:
    """``feature_maps(...)`` written to ``path`` (PNG by its suffix)."""
    fig = feature_maps(sess, feeds, layers, **kw)
    try:
        fig.savefig(path, dpi=fig.dpi)
    except OSError as e:
        raise InputError(f"cannot write {str(path)!r} ({e.strerror})") from None
