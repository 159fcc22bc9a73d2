"""Provenance of a measurement: which code, which checkpoints, which libraries, which command.

Every raw result row under ``docs/raw`` carries ``provenance(...)`` so that each number of the generated
docs can be traced back to a commit and a command::

    {"commit": "a845259...", "dirty": False, "checkpoints": {"data/checkpoints/digits_multi.safetensors": sha256},
     "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.1.0", "rdc": "0.1.0"},
     "command": "python benchmarks/drivers/results_table.py run", "utc": "2026-12-01T15:20:00Z"}

Paths inside the repository are written relative to it (never the machine's absolute paths), so a row
means the same on every checkout. ``commit`` / ``dirty`` are ``None`` outside a git checkout.

A row measured before provenance was recorded carries ``not_recorded(...)`` instead: every field
"not recorded", or the commit recovered from the history of its raw file with ``commit_source`` "git history"
(the code that added the row, not necessarily the code that measured it). ``provenance_problem(row)`` says
what is wrong with a row's provenance ('' when it has a full one or an explicit marker).
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

import numpy
import torch

from .. import __version__
from ..core.paths import REPO_ROOT, checkpoint_path
from ..defenses import TRANSFER_SOURCE, checkpoint_files
from .attacking import NO_ATTACK
from .runner import defense_spec

PROVENANCE_KEYS = ("commit", "dirty", "checkpoints", "versions", "command", "utc")
NOT_RECORDED = "provenance not recorded"
NOT_RECORDED_VALUE = "not recorded"  # every field of a row measured before provenance was recorded
GIT_HISTORY = "git history"  # commit_source of a commit recovered from the raw file's history

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
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def library_versions() -> dict[str, str]:
    """Versions of python, torch, numpy and this package."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "rdc": __version__,
    }


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


def provenance(
    checkpoints: Iterable[str | Path] = (), *, argv: Sequence[str] | None = None, root: Path = REPO_ROOT
) -> dict[str, Any]:
    """{commit, dirty, checkpoints {path: sha256}, versions, command, utc} of the current process.

    ``checkpoints``: the files the measurement read (missing files raise FileNotFoundError naming them:
    a provenance that cannot hash what it claims to have used would be wrong).
    """
    hashes = {}
    for path in checkpoints:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"provenance: checkpoint {p} does not exist (expected the file the measurement read)"
            )
        hashes[relative_to_repo(p, root)] = file_sha256(p)
    commit, dirty = git_state(root)
    return {
        "commit": commit,
        "dirty": dirty,
        "checkpoints": dict(sorted(hashes.items())),
        "versions": library_versions(),
        "command": command_line(argv, root),
        "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def not_recorded(note: str, commit: str | None = None, commit_source: str = GIT_HISTORY) -> dict[str, Any]:
    """The explicit marker of a row measured before provenance was recorded: every field "not recorded", with
    ``note`` saying why; ``commit``: a commit known otherwise, with where it comes from (``commit_source``; by
    default "git history": the commit that added the row to its raw file, so the measuring code is that commit
    or an earlier one)."""
    if not note:
        raise ValueError("not_recorded: a note is required (say when the row was measured and why nothing was kept)")
    mark_ = {k: NOT_RECORDED_VALUE for k in PROVENANCE_KEYS}
    if commit:
        mark_.update(commit=commit, commit_source=commit_source)
    return {**mark_, "note": note}


def _partial(prov: dict) -> bool:
    return any(v == NOT_RECORDED_VALUE for v in prov.values())


def provenance_problem(row: dict) -> str:
    """What is wrong with the provenance of a raw row ('' when it carries a full provenance, a back-filled one
    or an explicit not-recorded marker with a note): missing, or missing fields."""
    prov = row.get("provenance") if isinstance(row, dict) else None
    if not isinstance(prov, dict) or not prov:
        return (
            "no provenance (expected rdc_lib.evaluation.provenance.provenance(...) or an explicit "
            "not_recorded(...) marker)"
        )
    if prov.get("backfilled"):
        return ""
    missing = [k for k in PROVENANCE_KEYS if k not in prov]
    if missing:
        return f"provenance without {', '.join(missing)}"
    if _partial(prov) and not prov.get("note"):
        return "a not-recorded marker without a note"
    return ""


def describe(row: dict) -> str:
    """One deterministic line for a doc: ``commit a845259 (dirty)``, "provenance not recorded" or, for a marker
    with a commit known otherwise, ``commit a845259 (git history; the rest not recorded)``."""
    prov = row.get("provenance")
    if not prov:
        return NOT_RECORDED
    if prov.get("backfilled"):
        return str(prov["backfilled"])
    commit = prov.get("commit")
    if commit == NOT_RECORDED_VALUE:
        return NOT_RECORDED
    if not commit:
        return "commit unknown (no git checkout)"
    if _partial(prov):
        return f"commit {commit[:7]} ({prov.get('commit_source', GIT_HISTORY)}; the rest not recorded)"
    return f"commit {commit[:7]}" + (" (dirty)" if prov.get("dirty") else "")


def mark(row: dict) -> str:
    """The suffix a doc writes beside a figure: '' for a clean commit (or back-filled figures, which say where
    they came from elsewhere), ' (dirty)', ' (provenance not recorded)' (also for a marker whose commit is known
    otherwise) or ' (commit unknown)'."""
    prov = row.get("provenance") or {}
    if prov.get("backfilled"):
        return ""
    if not prov or _partial(prov):
        return f" ({NOT_RECORDED})"
    if not prov.get("commit"):
        return " (commit unknown)"
    return " (dirty)" if prov.get("dirty") else ""


def eval_provenance(cfg: Any, *, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``provenance`` of one ``rdc_lib.evaluation.EvalConfig`` run: hashes of the checkpoints its defense
    reads, plus the CNN the sanity checks transfer from when checks run on a robust evaluation."""
    checks = bool(cfg.run_checks) and cfg.attack != NO_ATTACK and cfg.defense != TRANSFER_SOURCE
    return provenance(checkpoint_files(defense_spec(cfg), transfer_source=checks), argv=argv)


def certify_provenance(cfg: Any, *, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``provenance`` of one ``rdc_lib.certify.CertifyConfig`` run: the denoiser it reads, and the CNN of
    denoised smoothing."""
    ref = cfg.denoiser
    files = [Path(ref) if ref.endswith(".safetensors") else checkpoint_path(ref)]
    if cfg.base == "denoised":
        files.append(checkpoint_path("digits_cnn"))
    return provenance(files, argv=argv)
