"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), a fixed seeded split.

Pixel values 0..16 are scaled to [0, 1]. The split is stratified with ``DIGITS_SPLIT_SEED`` and a
test fraction of 20%: 1,437 training and 360 test images, the same on every machine.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..core.choices import SOURCE_SPLITS, check_choice

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits as _sk_load  # heavy (scikit-learn, ~1.5 s): only needed here
    from sklearn.model_selection import train_test_split  # heavy (scikit-learn), as on the line above

    bunch = _sk_load()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def load_digits(split: str = "test") -> tuple[Tensor, Tensor]:
    """Digits ``split`` as images (N, 1, 8, 8) float32 in [0, 1] and labels (N,) int64."""
    check_choice("split", split, SOURCE_SPLITS)
    x, y = _split()[split]
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
