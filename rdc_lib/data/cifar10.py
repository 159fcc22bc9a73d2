"""CIFAR-10 from the standard python-pickle batches (``cifar-10-batches-py``), read safely.

Each batch is a pickled dict with ``b"data"`` (10000, 3072) uint8 rows (R, G, B planes of 32x32)
and ``b"labels"`` (list of int). The files are unpickled with a restricted unpickler that admits
only the numpy types those dicts hold, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core.choices import SOURCE_SPLITS, check_choice
from ..core.safe_pickle import restricted_load

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_FILES = CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES

# numpy globals that a CIFAR batch pickle may legitimately reference (arrays and dtypes).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            batch = restricted_load(f, _ALLOWED_GLOBALS, encoding="bytes")
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path} is not a CIFAR-10 python batch: {err}") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: keys 'data' and 'labels' expected, got {list(batch)}")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: 'labels' must be N ints in [0, 9]")
    return data, labels


def load_cifar10(root: str | Path, split: str = "test") -> tuple[Tensor, Tensor]:
    """CIFAR-10 ``split`` from ``root`` as images (N, 3, 32, 32) float32 in [0, 1], labels (N,) int64."""
    check_choice("split", split, SOURCE_SPLITS)
    root = Path(root)
    names = CIFAR10_TRAIN_FILES if split == "train" else CIFAR10_TEST_FILES
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 {split} split not found in folder {root.resolve()}: missing {', '.join(missing)}. "
            f"Put the python-pickle batches ({', '.join(CIFAR10_FILES)}, from cifar-10-python.tar.gz, "
            "folder cifar-10-batches-py) in that folder."
        )
    parts = [_read_batch(root / n) for n in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return images, torch.from_numpy(labels)
