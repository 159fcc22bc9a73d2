"""Where the project's files live, and how a path a user or a notebook names is found.

Shipped checkpoints are in ``data/checkpoints`` of the repository (override the data folder with
RDC_DATA_DIR). A notebook parameter may name a shipped checkpoint by its name (``'digits_multi'``)
or give a path; a relative path is looked up in the current folder first, then in the repository's
``notebooks/`` folder (the folder the notebooks' own defaults and ``notebooks/params/*.yaml`` are
written relative to), so the same value works from the repository root, from ``notebooks/`` and
from JupyterLab. Which shipped digits denoiser a ``heads`` loads is :func:`default_denoiser`; which one a
stored configuration was run with is :func:`stored_denoiser_name`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .choices import DEFAULT_DENOISERS, HEADS, LEGACY_DENOISERS, check_choice

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
CHECKPOINT_SUFFIX = ".safetensors"


def data_dir() -> Path:
    """The project's data folder (env ``RDC_DATA_DIR`` or ``<repo>/data``)."""
    return Path(os.environ.get("RDC_DATA_DIR", REPO_ROOT / "data"))


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints in ``data_dir()/checkpoints`` (file stems), sorted."""
    folder = data_dir() / "checkpoints"
    return sorted(p.stem for p in folder.glob(f"*{CHECKPOINT_SUFFIX}")) if folder.is_dir() else []


def checkpoint_path(name: str) -> Path:
    """Path of a shipped checkpoint, e.g. ``checkpoint_path('digits_single')``; FileNotFoundError if absent."""
    path = data_dir() / "checkpoints" / f"{name}{CHECKPOINT_SUFFIX}"
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped checkpoint {path} is missing (shipped: {', '.join(shipped_checkpoints()) or 'none'}); "
            "see data/README.md for the command that reproduces it"
        )
    return path


def is_checkpoint_name(value: str | Path) -> bool:
    """True for a bare name such as ``'digits_multi'`` (no folder, no suffix): a shipped checkpoint."""
    text = str(value)
    return (
        bool(text)
        and "/" not in text
        and os.sep not in text
        and not text.endswith(CHECKPOINT_SUFFIX)
        and text not in (".", "..")
    )


def candidate_paths(value: str | Path, base: str | Path | None = None) -> list[Path]:
    """Where a path may point: itself if absolute, else under ``base`` (default: cwd), then under notebooks/."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    out: list[Path] = []
    for folder in (Path.cwd() if base is None else Path(base), NOTEBOOKS_DIR):
        cand = (folder / path).resolve()
        if cand not in out:
            out.append(cand)
    return out


def resolve_path(value: str | Path, base: str | Path | None = None) -> Path:
    """The first of :func:`candidate_paths` that exists; if none does, the first whose parent folder exists
    (else the first): the place a missing file is expected, for the error message."""
    cands = candidate_paths(value, base)
    for cand in cands:
        if cand.exists():
            return cand
    return next((c for c in cands if c.parent.is_dir()), cands[0])


def resolve_checkpoint(value: str | Path, base: str | Path | None = None) -> Path:
    """A shipped checkpoint's name -> its path (:func:`checkpoint_path`); anything else -> :func:`resolve_path`.

    Raises FileNotFoundError naming the value and every place looked in when no such file exists.
    """
    if is_checkpoint_name(value):
        return checkpoint_path(str(value))
    path = resolve_path(value, base)
    if not path.is_file():
        tried = ", ".join(str(c) for c in candidate_paths(value, base))
        raise FileNotFoundError(
            f"no such file: {value} (looked in: {tried}); shipped checkpoints can also be "
            f"named by name: {', '.join(shipped_checkpoints()) or 'none'}"
        )
    return path


def default_denoiser(heads: str) -> str:
    """The shipped digits denoiser that ``heads`` ('single' | 'multi') loads when none is named
    (rdc_lib.core.choices.DEFAULT_DENOISERS); ValueError naming the valid heads otherwise."""
    check_choice("heads", heads, HEADS)
    return DEFAULT_DENOISERS[heads]


def stored_denoiser_name(config: Mapping[str, Any]) -> str:
    """The denoiser a stored configuration (an ``EvalConfig`` / ``CertifyConfig`` as a dict) was run with.

    A stored ``denoiser`` "" means the checkpoint its ``heads`` loaded before the defaults changed
    (rdc_lib.core.choices.LEGACY_DENOISERS: digits_single / digits_multi), never today's default; a named one is
    returned as stored. CIFAR-10 configurations (denoisers from a preset) give "". Only meaningful for a
    configuration whose defense has a denoiser. ValueError if ``heads`` is missing or unknown.
    """
    if config.get("dataset", "digits") != "digits":
        return ""
    if config.get("denoiser"):
        return str(config["denoiser"])
    if "heads" not in config:
        raise ValueError(
            f"a stored configuration without a denoiser must name its heads ({', '.join(HEADS)}); "
            f"got the fields {sorted(config)}"
        )
    check_choice("heads", config["heads"], HEADS)
    return LEGACY_DENOISERS[config["heads"]]


def default_denoisers_text() -> str:
    """Which checkpoint each heads loads, now and before, for help texts (read from DEFAULT_DENOISERS and
    LEGACY_DENOISERS): 'single -> NAME, multi -> NAME (before: single -> digits_single, multi -> digits_multi)'."""
    now, old = (", ".join(f"{h} -> {n}" for h, n in m.items()) for m in (DEFAULT_DENOISERS, LEGACY_DENOISERS))
    return f"{now} (before: {old})"


def denoiser_flags_help() -> dict[str, str]:
    """Help texts of the ``--heads`` and ``--denoiser`` flags (rdc eval, rdc certify)."""
    return {
        "heads": f"the digits denoiser loaded without --denoiser: {default_denoisers_text()}",
        "denoiser": "a digits denoiser: a shipped name (data/checkpoints) or a .safetensors path; '' = the "
        "default of --heads",
    }


def denoiser_note(path: str | Path) -> str:
    """One line saying which digits denoiser ``path`` (a resolved checkpoint path or a name) is and where the
    choice is explained: the shipped default of a heads, a retired default, or another file (the notebooks print it)."""
    name = Path(path).name.removesuffix(CHECKPOINT_SUFFIX)
    where = "why: docs/denoisers.md; how it was made: data/README.md"
    for heads, default in DEFAULT_DENOISERS.items():
        if name == default:
            return f"{name}: the shipped {heads}-head default (rdc_lib.core.choices.DEFAULT_DENOISERS; {where})"
    for heads, old in LEGACY_DENOISERS.items():
        if name == old:
            return (
                f"{name}: the retired {heads}-head default, kept for comparison "
                "(rdc_lib.core.choices.LEGACY_DENOISERS; "
                f"today's is {DEFAULT_DENOISERS[heads]}; {where})"
            )
    shipped = name in shipped_checkpoints()
    return (
        f"{name}: {'a shipped denoiser' if shipped else 'a denoiser file'} named by the notebook's parameter ({where})"
    )
