"""Data sets for ``convrt train``: scikit-learn's bundled digits, or an ``.npz`` with x and y.

Both are split into a seeded held-out fraction (20 % by default) and a training part.
"""

from __future__ import annotations

import numpy as np

from ..errors import TrainingError


def split(x, y, val_fraction: float, seed: int):
    n = len(x)
    idx = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    val, tr = idx[:n_val], idx[n_val:]
    return (x[tr], y[tr]), (x[val], y[val])


def load_digits_data():
    """8x8 digits as (N, 1, 8, 8) float32 in [0, 1] and int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise TrainingError("--data digits needs scikit-learn (pip install convrt[train])") \
            from None
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return x, d.target.astype(np.int64)


def load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise TrainingError(f"{path}: needs arrays 'x' and 'y', has {sorted(z.files)}")
            x, y = z["x"], z["y"]
    except (OSError, ValueError) as e:
        raise TrainingError(f"cannot read data file {path}: {e}") from None
    if len(x) != len(y):
        raise TrainingError(f"{path}: {len(x)} inputs but {len(y)} targets")
    if x.dtype.kind not in "fiu":
        raise TrainingError(f"{path}: x must be numeric, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) if len(x) else np.zeros(0, bool)
    if bad.any():  # checked before the split, so the sample number is the file's
        raise TrainingError(f"{path}: x holds NaN/Inf in {int(bad.sum())} samples (first at "
                            f"sample {int(np.argmax(bad))}); training needs finite inputs")
    return x, y


def load_data(spec: str, val_fraction: float = 0.2, seed: int = 0):
    """(train, held-out) pairs for ``digits`` or a ``.npz`` file."""
    if not 0.0 <= val_fraction < 1.0:
        raise TrainingError(f"held-out fraction {val_fraction} must be in [0, 1)")
    x, y = load_digits_data() if spec == "digits" else load_npz(spec)
    if len(x) < 2:
        raise TrainingError(f"{spec}: needs at least 2 samples, got {len(x)}")
    return split(x, y, val_fraction, seed)


def batches(n: int, batch_size: int, rng):
    """Shuffled index batches covering all n samples once (the last one may be smaller)."""
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def check_like(path, xv, yv, x, y, train_spec) -> None:
    """A held-out set (``--val``) must be shaped like the training data: same sample shape,
    targets of the same per-sample shape and kind (class indices vs numbers), at least one
    sample; one line naming the file and the array otherwise (a mismatch would surface as a
    shape error deep in evaluation, after an epoch of training)."""
    if len(xv) == 0:
        raise TrainingError(f"{path}: the held-out set has no samples")
    if xv.shape[1:] != x.shape[1:]:
        raise TrainingError(f"{path}: x has samples of shape {list(xv.shape[1:])}, the "
                            f"training data {train_spec} has {list(x.shape[1:])}")
    if yv.shape[1:] != y.shape[1:]:
        raise TrainingError(f"{path}: y has targets of shape {list(yv.shape[1:])}, the "
                            f"training data {train_spec} has {list(y.shape[1:])}")
    labels = y.dtype.kind in "iu"
    if yv.dtype.kind not in "fiu" or (labels and yv.dtype.kind not in "iu"):
        raise TrainingError(f"{path}: y is {yv.dtype}, the training data {train_spec} has "
                            f"{y.dtype} targets")
