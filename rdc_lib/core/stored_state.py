"""Stored state that is damaged or stale: one error type, safe readers, and the move-aside helper.

Every reader of resumable state (evaluation records and adversarial images, the ensemble state, the
training state, sweep cell folders, the sweep's SQLite store) raises :class:`StoredStateError` when
what it reads is damaged (cut short, random bytes, wrong shape) or stale (another configuration or
code version). The message names the file, what is wrong, and the two ways out: rerun with the
reader's restart flag, which moves the stored files aside with :func:`move_aside` (renamed to
``<name>.damaged-<UTC time>``, never deleted) and starts afresh, or delete the named file.
``StoredStateError`` is a ``ValueError``, so the CLI reports it as one line and exits non-zero.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from .. import __version__

log = logging.getLogger(__name__)

__all__ = [
    "StoredStateError",
    "is_stored_state_error",
    "load_safetensors",
    "load_torch_state",
    "move_aside",
    "restart_aside",
    "source_version",
    "sources_version",
]

DAMAGED, REPLACED, ORPHANED = "damaged", "replaced", "orphaned"  # tags of move_aside


class StoredStateError(ValueError):
    """A stored file is damaged or stale. ``path``: the file; ``problem``: what is wrong; ``restart``:
    the flag (or argument) that moves the stored state aside and starts afresh."""

    def __init__(self, path: str | Path, problem: str, *, restart: str) -> None:
        self.path, self.problem, self.restart = Path(path), problem, restart
        super().__init__(
            f"stored state {self.path} is unusable: {problem}. Two ways out: (1) rerun with {restart}: the "
            f"stored files are moved aside as '<name>.{DAMAGED}-<time>' (nothing is deleted) and the run starts "
            f"afresh; (2) delete {self.path}"
        )


def move_aside(path: str | Path, tag: str = DAMAGED) -> Path:
    """Rename ``path`` (a file or folder) to ``<name>.<tag>-<UTC time>`` beside it; returns the new path.

    Never overwrites: a counter is appended if that name exists. ``path`` must exist.
    """
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    k = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{tag}-{stamp}-{k}")
        k += 1
    path.rename(target)
    log.warning("moved %s aside to %s", path, target)
    return target


def restart_aside(paths: list[Path], validate: Callable[[], Any]) -> list[Path]:
    """Restart: move every existing path aside, tagged ``damaged`` if ``validate()`` raises
    :class:`StoredStateError`, else ``replaced``. Returns the new names."""
    if not any(p.exists() for p in paths):
        return []
    try:
        validate()
        tag = REPLACED
    except StoredStateError:
        tag = DAMAGED
    return [move_aside(p, tag) for p in paths if p.exists()]


def is_stored_state_error(text: str | None) -> bool:
    """Whether an error text recorded by a sweep (``'<Type>: message ...'``) is a :class:`StoredStateError`."""
    return bool(text) and text.startswith(f"{StoredStateError.__name__}:")


def load_torch_state(path: Path, *, restart: str, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` of a dict; any failure becomes a :class:`StoredStateError`."""
    import torch  # keeps core.stored_state torch-free at import (jobs and sweep bookkeeping import it)

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, a forbidden global: all are damage
        raise StoredStateError(
            path, f"it cannot be read ({type(exc).__name__}: {_first_line(exc)})", restart=restart
        ) from exc
    if not isinstance(state, dict):
        raise StoredStateError(path, f"it holds a {type(state).__name__}, expected a dict", restart=restart)
    return state


def load_safetensors(path: Path, *, restart: str) -> dict:
    """``safetensors.torch.load_file(path)``; any failure becomes a :class:`StoredStateError`."""
    from safetensors.torch import load_file  # safetensors.torch imports torch: keeps this module torch-free at import

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError (bad header, cut short), OSError
        raise StoredStateError(
            path, f"it cannot be read ({type(exc).__name__}: {_first_line(exc)})", restart=restart
        ) from exc


def sources_version(root: Path, extra: bytes = b"") -> str:
    """``<rdc version>+src.<12 hex>``: sha256 over every .py file under ``root`` (relative path and bytes),
    then ``extra`` (a sweep's target source; rdc_lib.sweep.store.code_version)."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    if extra:
        h.update(extra)
    return f"{__version__}+src.{h.hexdigest()[:12]}"


@lru_cache(maxsize=1)
def source_version() -> str:
    """The version of the code that writes stored state: the sweep's ``code_version()`` of rdc_lib.

    Computed once per process: the code a process runs does not change when files are edited later."""
    return sources_version(Path(__file__).resolve().parents[1])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no message"
