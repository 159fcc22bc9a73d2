"""The validation split: a fixed, seeded, class-stratified subset of a dataset's training split.

Every choice (a denoiser, a grid's sigma_min, an EOT size, an LM radius) is made on these images, never on the
test images (rdc_lib.experiments.selection). ``rdc train --exclude-val`` trains without them; the shipped checkpoints
were trained on the full training split (data/README.md), so for those the validation images are held out from the
choices only, not from the denoiser weights.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

# Validation images per dataset (digits: 200 of the 1,437 training images, 20 per class; CIFAR-10: 1,000 of 50,000).
VAL_SIZE = {"digits": 200, "cifar10": 1000}
VAL_SEED = 0  # seeds the stratified draw: the same images on every machine


def val_indices(labels: Tensor, size: int, seed: int = VAL_SEED) -> Tensor:
    """(size,) int64 sorted indices into ``labels`` (N,) of a class-stratified subset drawn with ``seed``.

    Each class gets its share of ``size`` (rounded as scikit-learn's stratified split rounds); the draw depends
    only on ``labels``, ``size`` and ``seed``.
    """
    n = int(labels.shape[0])
    if not 0 < size < n:
        raise ValueError(f"validation size must be in [1, {n - 1}] for {n} training images, got {size}")
    key = (tuple(labels.tolist()), size, seed)
    return torch.from_numpy(_indices(key).copy())


@lru_cache(maxsize=4)
def _indices(key: tuple) -> np.ndarray:
    from sklearn.model_selection import train_test_split  # heavy (scikit-learn, ~1.5 s): only a fresh split needs it

    labels, size, seed = key
    labels = np.asarray(labels)
    _, val = train_test_split(np.arange(len(labels)), test_size=size, random_state=seed, stratify=labels)
    return np.sort(val).astype(np.int64)


def carve(x: Tensor, y: Tensor, dataset: str, part: str) -> tuple[Tensor, Tensor]:
    """From a training split (x (N, C, H, W), y (N,)): ``part`` "val" (its validation images) or "rest" (the others)."""
    idx = val_indices(y, VAL_SIZE[dataset])
    if part == "val":
        return x[idx], y[idx]
    keep = torch.ones(y.shape[0], dtype=torch.bool)
    keep[idx] = False
    return x[keep], y[keep]
