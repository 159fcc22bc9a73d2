"""Datasets as tensors: images (N, C, H, W) float32 in [0, 1], labels (N,) int64.

``load_dataset("digits", split)`` uses scikit-learn's bundled 8x8 digits (no download);
``load_dataset("cifar10", split, root=...)`` reads the standard CIFAR-10 python-pickle batches
from a folder the user supplies. ``split`` "val" is a fixed stratified subset of "train" (rdc_lib.data.splits);
``exclude_val=True`` returns the training split without it.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..core.choices import DATASETS, SPLITS, check_choice
from .cifar10 import CIFAR10_FILES, load_cifar10
from .digits import DIGITS_SPLIT_SEED, load_digits
from .splits import VAL_SEED, VAL_SIZE, carve, val_indices

__all__ = [
    "DATASETS",
    "CIFAR10_FILES",
    "DIGITS_SPLIT_SEED",
    "VAL_SEED",
    "VAL_SIZE",
    "load_dataset",
    "load_digits",
    "load_cifar10",
    "dataset_info",
    "val_indices",
]


def dataset_info(name: str) -> dict:
    """Static facts about a dataset: channels, resolution, number of classes."""
    if name == "digits":
        return {"channels": 1, "resolution": 8, "num_classes": 10}
    if name == "cifar10":
        return {"channels": 3, "resolution": 32, "num_classes": 10}
    raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")


def load_dataset(
    name: str, split: str = "test", *, root: str | Path | None = None, exclude_val: bool = False
) -> tuple[Tensor, Tensor]:
    """Load ``split`` ('train', 'val' or 'test') of dataset ``name`` as (images, labels).

    'val' is ``VAL_SIZE[name]`` training images (class-stratified, seeded); ``exclude_val=True`` (split 'train'
    only) leaves them out of the training split, so a denoiser trained on it never saw them.
    """
    check_choice("dataset", name, DATASETS)
    check_choice("split", split, SPLITS)
    if exclude_val and split != "train":
        raise ValueError(f"exclude_val=True removes the validation images from split 'train', got split {split!r}")
    source = "test" if split == "test" else "train"
    if name == "digits":
        x, y = load_digits(source)
    else:
        if root is None:
            raise ValueError(
                "dataset 'cifar10' needs root=<folder holding the CIFAR-10 python batches "
                f"({', '.join(CIFAR10_FILES)})>"
            )
        x, y = load_cifar10(root, source)
    if split == "val":
        return carve(x, y, name, "val")
    return carve(x, y, name, "rest") if exclude_val else (x, y)
