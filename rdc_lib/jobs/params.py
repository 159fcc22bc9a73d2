"""Validation of notebook parameters (the cell tagged ``parameters`` in notebooks/*.ipynb).

Every notebook's ``parameters`` cell holds annotated literals only; the next cell calls
``validate_params(name=value, ...)`` with every one of them, so a bad ``papermill -p`` fails in
that first cell with a message that names the parameter, the value received and what is
expected. The rules of single values are in rdc_lib.jobs.param_specs, one :class:`ParamSpec` per name in
:data:`PARAM_SPECS` (the same name means the same thing in every notebook); this module applies them and
adds the checks that read several parameters at once and the files they point to.

This module imports no torch at import time (the check runs before the notebook's heavy imports);
the lists of attack and defense names and the CIFAR-10 file check are imported on demand.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ..core.choices import DATASETS, NORMS
from ..core.paths import (
    CHECKPOINT_SUFFIX,
    NOTEBOOKS_DIR,
    data_dir,
    default_denoiser,
    is_checkpoint_name,
    resolve_checkpoint,
    resolve_path,
)
from .param_specs import (
    CIFAR10_TEST_SIZE,
    DIGITS_TEST_SIZE,
    PARAM_SPECS,
    MissingFilesError,
    NotebookParameterError,
    ParamSpec,
    param_error,
)

__all__ = [
    "DATASETS",
    "NORMS",
    "MissingFilesError",
    "NotebookParameterError",
    "PARAM_SPECS",
    "ParamSpec",
    "validate_params",
]


# ------------------------------------------------------------------------------ cross-parameter checks


def _check_norm_budget(values: dict[str, Any]) -> None:
    for budget, norm in (("eps", "norm"), ("eps_list", "norm"), ("lm_eta", "lm_norm")):
        if budget in values and values.get(norm, "linf") == "linf":
            bad = [v for v in (values[budget] if isinstance(values[budget], list) else [values[budget]]) if v > 1]
            if bad:
                raise param_error(
                    budget, values[budget], f"an l_inf budget in [0, 1] for images in [0, 1] ({norm} = 'linf')"
                )


def _check_device(value: str) -> None:
    kind = value.split(":", 1)[0]
    if kind not in ("cpu", "cuda", "mps") or (":" in value and not value.split(":", 1)[1].isdigit()):
        raise param_error("device", value, "'cpu', 'cuda', 'cuda:N' or 'mps'")
    if kind == "cpu":
        return
    import torch  # on demand: importing this module stays torch-free

    available = torch.cuda.is_available() if kind == "cuda" else torch.backends.mps.is_available()
    if not available:
        raise NotebookParameterError(
            f"notebook parameter device = {value!r}: no {kind} device on this machine; use device 'cpu'"
        )


PATH_PARAMS = ("checkpoint", "checkpoint_single", "contrast_checkpoint", "cnn_checkpoint")  # a shipped name or a path
# '' for these means the shipped digits default of this heads (the one mapping: rdc_lib.core.choices.DEFAULT_DENOISERS);
# for "checkpoint" a notebook's own heads parameter, when it declares one, decides instead.
DENOISER_DEFAULT_HEADS = {"checkpoint": "multi", "checkpoint_single": "single"}
DIR_PARAMS = ("data_root", "ckpt_dir")  # folders (dataset 'cifar10')
DATA_FILE_PARAMS = ("study_raw", "raw_dir", "grid_raw")  # data files / folders of the repository


def _default_denoisers(values: dict[str, Any]) -> None:
    """'' denoiser parameters -> the shipped default's name (digits) or the cifar10-paper preset's classifier."""
    for name, heads in DENOISER_DEFAULT_HEADS.items():
        if values.get(name) != "":
            continue
        if values.get("dataset", "digits") == "digits":
            values[name] = default_denoiser(values.get("heads", heads) if name == "checkpoint" else heads)
        elif name == "checkpoint":
            from ..defenses.presets import get_preset  # on demand: importing this module stays torch-free

            values[name] = str(data_dir() / "checkpoints" / get_preset("cifar10-paper").checkpoints.classifier)
        else:
            raise param_error(
                name,
                "",
                f"a checkpoint path with dataset {values['dataset']!r} (the shipped default is a digits denoiser)",
            )


def _resolve_files(values: dict[str, Any], base: Path | None) -> None:
    """Checkpoint parameters -> absolute paths (a shipped name through rdc_lib.core.paths; see there for paths)."""
    _default_denoisers(values)
    for name in PATH_PARAMS:
        if name not in values:
            continue
        try:
            values[name] = str(resolve_checkpoint(values[name], base))
        except FileNotFoundError as exc:
            if values.get("dataset", "digits") != "digits":
                # the cifar10 check below names every missing file, checkpoints included
                values[name] = str(
                    data_dir() / "checkpoints" / f"{values[name]}{CHECKPOINT_SUFFIX}"
                    if is_checkpoint_name(values[name])
                    else resolve_path(values[name], base)
                )
                continue
            raise MissingFilesError(
                f"notebook parameter {name} = {values[name]!r}: {exc}; the shipped checkpoints "
                "are in data/checkpoints/ (see data/README.md)"
            ) from None
    for name in DIR_PARAMS + DATA_FILE_PARAMS:
        if name in values and values[name]:
            values[name] = str(resolve_path(values[name], base))
    if "diffusers_model" in values:
        _check_diffusers_model(values, base)


def _check_diffusers_model(values: dict[str, Any], base: Path | None) -> None:
    """diffusers_model -> the absolute folder, checked against the digits (imported on demand)."""
    from ..models.diffusers_adapter import inspect_diffusers_folder  # on demand: importing this module stays torch-free

    value = values["diffusers_model"]
    folder = resolve_path(value.removeprefix("diffusers:"), base)
    try:
        inspect_diffusers_folder(folder)
    except FileNotFoundError as exc:
        raise MissingFilesError(
            f"notebook parameter diffusers_model = {value!r}: {exc}; the digits model is "
            "data/diffusers_digits (see data/README.md)"
        ) from None
    except ValueError as exc:
        raise NotebookParameterError(f"notebook parameter diffusers_model = {value!r}: {exc}") from None
    values["diffusers_model"] = str(folder)


def _check_raw_dir(values: dict[str, Any]) -> None:
    """raw_dir must be a folder holding the headline rows (docs/raw/headline.jsonl)."""
    if "raw_dir" in values and not (Path(values["raw_dir"]) / "headline.jsonl").is_file():
        raise MissingFilesError(
            f"notebook parameter raw_dir = {values['raw_dir']!r}: expected a folder holding "
            "headline.jsonl (the repository's docs/raw; relative paths are looked up in the "
            f"current folder, then in {NOTEBOOKS_DIR})"
        )


def _check_cifar10(values: dict[str, Any], base: Path | None) -> None:
    from ..defenses.presets import required_files  # on demand: importing this module stays torch-free

    root = Path(values["data_root"]) if values.get("data_root") else resolve_path("../data/cifar10", base)
    if values.get("ckpt_dir"):
        ckpt = Path(values["ckpt_dir"])
    elif "checkpoint" in values:
        ckpt = Path(values["checkpoint"]).parent
    else:
        ckpt = data_dir() / "checkpoints"
    req = required_files("cifar10-paper", root, ckpt)
    if not req.ok:
        raise MissingFilesError(
            f"notebook parameter dataset = 'cifar10' needs files that are missing "
            f"(data_root = {values.get('data_root')!r}, checkpoint folder {ckpt}; relative "
            f"paths are looked up in the current folder, then in {NOTEBOOKS_DIR}):\n"
            f"{req.message}"
        )


def _check_cifar10_defenses(values: dict[str, Any]) -> None:
    if values.get("dataset") == "cifar10" and "defenses" in values:
        from ..defenses import defense_names  # on demand: importing this module stays torch-free

        cifar = defense_names(datasets="cifar10")
        other = [d for d in values["defenses"] if d not in cifar]
        if other:
            raise param_error(
                "defenses",
                values["defenses"],
                f"only {' and '.join(map(repr, cifar))} with dataset 'cifar10' "
                "(EDM checkpoints; "
                f"no CIFAR-10 baseline for {', '.join(other)})",
            )


def _check_certify_draws(values: dict[str, Any]) -> None:
    """n_estimate must allow a non-zero radius at alpha (``rdc_lib.certify.min_draws``, imported on demand)."""
    if "n_estimate" in values and "alpha" in values:
        from ..certify.smoothing import min_draws  # on demand: importing this module stays torch-free

        need = min_draws(values["alpha"])
        if values["n_estimate"] < need:
            raise param_error(
                "n_estimate",
                values["n_estimate"],
                f"an int >= {need}: fewer estimation draws can never "
                f"certify a non-zero radius at alpha = {values['alpha']:g}",
            )


def _check_sizes(values: dict[str, Any]) -> None:
    limit = DIGITS_TEST_SIZE if values.get("dataset", "digits") == "digits" else CIFAR10_TEST_SIZE
    for name in ("n_images", "rdc_n_images", "n_variance_images", "n_cost_images"):
        if name in values and values[name] > limit:
            split = f"the size of the {values.get('dataset', 'digits')} test split"
            raise param_error(name, values[name], f"at most {limit} ({split})")


# ------------------------------------------------------------------------------------------- API


# Parameters renamed in issue 38 (old name -> new): passing an old name is an error that names the new one.
RENAMED_PARAMS = {"T": "timesteps", "T_list": "timesteps_list", "sigma_list": "pixel_sigma_list"}


def validate_params(
    *, base_dir: str | Path | None = None, namespace: dict | None = None, **params: Any
) -> dict[str, Any]:
    """Check every notebook parameter passed by keyword; return them normalised (numbers as float).

    File and folder parameters come back as absolute paths: a checkpoint given by a shipped name
    (``'digits_multi'``) resolves through :mod:`rdc_lib.core.paths`, a denoiser given as ``''`` is the shipped
    default (``rdc_lib.core.choices.DEFAULT_DENOISERS``, by :data:`DENOISER_DEFAULT_HEADS` or the notebook's
    ``heads``); a relative path is looked up under
    ``base_dir`` (default: the current directory), then under the repository's notebooks/ folder,
    so the notebooks' defaults work from any working folder. ``namespace``: the notebook's ``globals()``, where
    papermill injects every parameter it is given; an old name of :data:`RENAMED_PARAMS` found there (or passed
    here) is refused, never silently ignored.

    Raises :class:`NotebookParameterError` (a ValueError) naming the parameter, the value and the
    expected type or values; :class:`MissingFilesError` (also a
    FileNotFoundError) for missing checkpoints and, with ``dataset='cifar10'``, for every file of
    the ``cifar10-paper`` preset that is not in place (with where to put it).
    """
    renamed = sorted(n for n in RENAMED_PARAMS if n in params or n in (namespace or {}))
    if renamed:
        text = ", ".join(f"{n!r} is now {RENAMED_PARAMS[n]!r}" for n in renamed)
        raise NotebookParameterError(
            f"renamed notebook parameter(s): {text} (pass -p {RENAMED_PARAMS[renamed[0]]} ...)"
        )
    unknown = sorted(set(params) - set(PARAM_SPECS))
    if unknown:
        hints = {n: difflib.get_close_matches(n, PARAM_SPECS, n=1) for n in unknown}
        text = ", ".join(f"{n!r}" + (f" (did you mean {hints[n][0]!r}?)" if hints[n] else "") for n in unknown)
        raise NotebookParameterError(f"unknown notebook parameter(s) {text}; known: {', '.join(sorted(PARAM_SPECS))}")
    values = {name: PARAM_SPECS[name].check(name, value) for name, value in params.items()}
    _check_norm_budget(values)
    _check_sizes(values)
    _check_certify_draws(values)
    if "device" in values:
        _check_device(values["device"])
    base = None if base_dir is None else Path(base_dir)
    _resolve_files(values, base)
    _check_raw_dir(values)
    if values.get("dataset") == "cifar10":
        _check_cifar10(values, base)  # first: the files to fetch are the first thing a cifar10 user needs
        _check_cifar10_defenses(values)
    return values
