"""Provenance of a measurement: which code, which checkpoints, which libraries, which command.

Every raw result row under ``docs/raw`` carries ``provenance(...)`` so that each number of the generated
docs can be traced back to a commit and a command::

    {"commit": "a845259...", "dirty": False, "checkpoints": {"data/checkpoints/digits_multi.safetensors": sha256},
     "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.1.0", "rdc": "0.1.0"},
     "command": "python benchmarks/results_table.py run", "utc": "2026-12-01T15:20:00Z"}

Paths inside the repository are written relative to it (never the machine's absolute paths), so a row
means the same on every checkout. ``commit`` / ``dirty`` are ``None`` outside a git checkout.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.paths import REPO_ROOT

PROVENANCE_KEYS = ("commit", "dirty", "checkpoints", "versions", "command", "utc")
NOT_RECORDED = "provenance not recorded"

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, cached per process by path, size and mtime."""
    path = Path(path)
    st = path.stat()
    cache_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if cache_key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[cache_key] = h.hexdigest()
    return _SHA_CACHE[cache_key]


def relative_to_repo(path: str | Path, root: Path = REPO_ROOT) -> str:
    """``path`` relative to the repository when it lies inside it, else unchanged (as given)."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def git_state(root: Path = REPO_ROOT) -> tuple[str | None, bool | None]:
    """(commit hash, dirty flag) of the checkout at ``root``; (None, None) without git or a repository.

    Dirty means tracked files differ from the commit (untracked files, e.g. run outputs, do not count).
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def library_versions() -> dict[str, str]:
    """Versions of python, torch, numpy and this package."""
    import numpy
    import torch

    from .. import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "rdc": __version__}


def command_line(argv: Sequence[str] | None = None, root: Path = REPO_ROOT) -> str:
    """The full command line of this process (``sys.orig_argv``), shell-quoted and machine-independent:
    the interpreter becomes ``python`` and absolute paths inside the repository become relative."""
    if argv is None:
        argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    if not argv:
        return ""
    parts = ["python" if Path(argv[0]).name.startswith("python") else relative_to_repo(argv[0], root)]
    for arg in argv[1:]:
        key, eq, value = arg.partition("=")
        if eq and key.startswith("--") and Path(value).is_absolute():
            parts.append(f"{key}={relative_to_repo(value, root)}")
        else:
            parts.append(relative_to_repo(arg, root) if Path(arg).is_absolute() else arg)
    return shlex.join(parts)


def provenance(checkpoints: Iterable[str | Path] = (), *, argv: Sequence[str] | None = None,
               root: Path = REPO_ROOT) -> dict[str, Any]:
    """{commit, dirty, checkpoints {path: sha256}, versions, command, utc} of the current process.

    ``checkpoints``: the files the measurement read (missing files raise FileNotFoundError naming them:
    a provenance that cannot hash what it claims to have used would be wrong).
    """
    hashes = {}
    for path in checkpoints:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"provenance: checkpoint {p} does not exist (expected the file the "
                                    "measurement read)")
        hashes[relative_to_repo(p, root)] = file_sha256(p)
    commit, dirty = git_state(root)
    return {"commit": commit, "dirty": dirty, "checkpoints": dict(sorted(hashes.items())),
            "versions": library_versions(), "command": command_line(argv, root),
            "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def describe(row: dict) -> str:
    """One deterministic line for a doc: ``commit a845259 (dirty)`` or "provenance not recorded"."""
    prov = row.get("provenance")
    if not prov:
        return NOT_RECORDED
    if prov.get("backfilled"):
        return str(prov["backfilled"])
    commit = prov.get("commit")
    if not commit:
        return "commit unknown (no git checkout)"
    return f"commit {commit[:7]}" + (" (dirty)" if prov.get("dirty") else "")


def eval_provenance(cfg: Any, *, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``provenance`` of one ``rdc_lib.evaluation.EvalConfig`` run: hashes of the checkpoints its defense
    reads, plus the CNN the sanity checks transfer from when checks run on a robust evaluation."""
    from ..defenses import TRANSFER_SOURCE, checkpoint_files
    from .attacking import NO_ATTACK
    from .runner import defense_spec

    checks = bool(cfg.run_checks) and cfg.attack != NO_ATTACK and cfg.defense != TRANSFER_SOURCE
    return provenance(checkpoint_files(defense_spec(cfg), transfer_source=checks), argv=argv)
