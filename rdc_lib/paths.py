"""Where the shipped checkpoints live (``data/checkpoints`` of the repository; override with RDC_DATA_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The project's data folder (env ``RDC_DATA_DIR`` or ``<repo>/data``)."""
    return Path(os.environ.get("RDC_DATA_DIR", REPO_ROOT / "data"))


def checkpoint_path(name: str) -> Path:
    """Path of a shipped checkpoint, e.g. ``checkpoint_path('digits_single')``; FileNotFoundError if absent."""
    path = data_dir() / "checkpoints" / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped checkpoint {path} is missing; see data/README.md for the command that reproduces it"
        )
    return path
