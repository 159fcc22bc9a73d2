"""Datasets as tensors: images (N, C, H, W) float32 in [0, 1], labels (N,) int64.

``load_dataset("digits", split)`` uses scikit-learn's bundled 8x8 digits (no download);
``load_dataset("cifar10", split, root=...)`` reads the standard CIFAR-10 python-pickle batches
from a folder the user supplies.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..core.choices import DATASETS
from .cifar10 import CIFAR10_FILES, load_cifar10
from .digits import DIGITS_SPLIT_SEED, load_digits

__all__ = ["DATASETS", "CIFAR10_FILES", "DIGITS_SPLIT_SEED", "load_dataset", "load_digits", "load_cifar10", "dataset_info"]


def dataset_info(name: str) -> dict:
    """Static facts about a dataset: channels, resolution, number of classes."""
    if name == "digits":
        return {"channels": 1, "resolution": 8, "num_classes": 10}
    if name == "cifar10":
        return {"channels": 3, "resolution": 32, "num_classes": 10}
    raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")


def load_dataset(name: str, split: str = "test", *, root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Load ``split`` ('train' or 'test') of dataset ``name`` as (images, labels)."""
    if name == "digits":
        return load_digits(split)
    if name == "cifar10":
        if root is None:
            raise ValueError(
                "dataset 'cifar10' needs root=<folder holding the CIFAR-10 python batches "
                f"({', '.join(CIFAR10_FILES)})>"
            )
        return load_cifar10(root, split)
    raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
