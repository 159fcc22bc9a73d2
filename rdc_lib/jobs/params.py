"""Validation of notebook parameters (the cell tagged ``parameters`` in notebooks/*.ipynb).

Every notebook's ``parameters`` cell holds annotated literals only; the next cell calls
``validate_params(name=value, ...)`` with every one of them, so a bad ``papermill -p`` fails in
that first cell with a message that names the parameter, the value received and what is
expected. The rules live here, one :class:`ParamSpec` per name in :data:`PARAM_SPECS`; the same
name means the same thing in every notebook.

This module imports no torch at import time (the check runs before the notebook's heavy imports);
the lists of attack and defense names and the CIFAR-10 file check are imported on demand.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.choices import DATASETS, GRAD_MODES, HEADS, LM_OPTIMIZERS, NOISE_MODES, NORMS, SMOOTHING_BASES
from ..core.paths import (
    CHECKPOINT_SUFFIX,
    NOTEBOOKS_DIR,
    data_dir,
    default_denoiser,
    default_denoisers_text,
    is_checkpoint_name,
    resolve_checkpoint,
    resolve_path,
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

DIGITS_TEST_SIZE = 360
CIFAR10_TEST_SIZE = 10_000


class NotebookParameterError(ValueError):
    """A notebook parameter has the wrong type or an impossible value; the message names it."""


class MissingFilesError(NotebookParameterError, FileNotFoundError):
    """A file a parameter points to (checkpoint, dataset) does not exist; the message says where to put it."""


# ----------------------------------------------------------------------------------------- checks

def _bad(name: str, value: Any, expected: str) -> NotebookParameterError:
    got = f"{value!r} ({type(value).__name__})"
    return NotebookParameterError(f"notebook parameter {name} = {got}: expected {expected}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and v == v  # NaN is not a valid setting


def _attack_names() -> tuple[str, ...]:
    from ..attacks.registry import attack_names

    return attack_names(ensemble=False, adaptive=False)


def _eval_attack_names() -> tuple[str, ...]:
    from ..evaluation.attacking import eval_attack_names

    return eval_attack_names()


def _figure_names() -> tuple[str, ...]:
    from ..findings.svg import FIGURES

    return tuple(name for figures in FIGURES.values() for name, _ in figures)


def _defense_names() -> tuple[str, ...]:
    from ..defenses import defense_names

    return defense_names()


@dataclass(frozen=True)
class ParamSpec:
    """How one notebook parameter is checked.

    kind: 'int' | 'float' | 'bool' | 'str' | 'list[float]' | 'list[int]' | 'list[str]' | 'path' | 'denoiser'
    (a path or a shipped name, where '' means the shipped default: :data:`DENOISER_DEFAULT_HEADS`).
    low/high: inclusive numeric bounds (for lists: of every element). choices: allowed strings, or a
    callable returning them (lazy imports). help: what the parameter does (used in messages).
    """

    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    min_len: int = 1

    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def expected(self) -> str:
        base = {"int": "an int", "float": "a number", "bool": "True or False", "str": "a string",
                "path": "a file path (str)",
                "denoiser": "a shipped denoiser's name, a .safetensors path, or '' (the shipped default, "
                            "rdc_lib.core.choices.DEFAULT_DENOISERS)",
                "list[float]": "a list of numbers", "list[int]": "a list of ints",
                "list[str]": "a list of strings"}[self.kind]
        bounds = []
        if self.low is not None:
            bounds.append(f">= {self.low:g}")
        if self.high is not None:
            bounds.append(f"<= {self.high:g}")
        if bounds:
            base += (" with every element " if self.kind.startswith("list") else " ") + " and ".join(bounds)
        allowed = self.allowed()
        if allowed:
            base += f" from: {', '.join(allowed)}"
        return base

    def check(self, name: str, value: Any) -> Any:
        """Return ``value`` normalised (floats as float); raise NotebookParameterError otherwise."""
        kind = self.kind
        if kind.startswith("list"):
            if isinstance(value, str):
                raise _bad(name, value, f"{self.expected()}; papermill -p passes strings, give lists with "
                                        f"-y '{name}: [...]' or a -f parameters file")
            if not isinstance(value, (list, tuple)) or len(value) < self.min_len:
                raise _bad(name, value, f"{self.expected()} (at least {self.min_len} element(s))")
            inner = ParamSpec(kind[5:-1], self.help, self.low, self.high, self.choices)
            out = [inner._scalar(f"{name}[{i}]", v) for i, v in enumerate(value)]
            if len(set(map(repr, out))) != len(out):
                raise _bad(name, value, f"{self.expected()} without repeated elements")
            return out
        return self._scalar(name, value)

    def _scalar(self, name: str, value: Any) -> Any:
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise _bad(name, value, "True or False (papermill: -p " + name + " True)")
            return value
        if kind == "int":
            if not _is_int(value):
                raise _bad(name, value, self.expected())
        elif kind == "float":
            if not _is_number(value):
                raise _bad(name, value, self.expected())
            value = float(value)
        elif kind in ("str", "path", "denoiser"):
            if not isinstance(value, str) or (kind == "path" and not value):
                raise _bad(name, value, self.expected())
            allowed = self.allowed()
            if allowed is not None and value not in allowed:
                raise _bad(name, value, f"one of: {', '.join(allowed)}")
            return value
        if self.low is not None and value < self.low:
            raise _bad(name, value, self.expected())
        if self.high is not None and value > self.high:
            raise _bad(name, value, self.expected())
        return value


PARAM_SPECS: dict[str, ParamSpec] = {
    # data and models
    "dataset": ParamSpec("str", "dataset: 'digits' runs here; 'cifar10' needs the files of the cifar10-paper preset",
                         choices=DATASETS),
    "data_root": ParamSpec("str", "folder of the CIFAR-10 python batches (dataset 'cifar10' only)"),
    "checkpoint": ParamSpec("denoiser", "denoiser checkpoint: a shipped name or a .safetensors path; '' = the shipped "
                                        "default of heads (multi without heads)"),
    "checkpoint_single": ParamSpec("denoiser", "single-head denoiser (shipped name or path; '' = the shipped single-head "
                                               "default), for the single- vs multi-head comparison"),
    "contrast_checkpoint": ParamSpec("path", "a second denoiser named on purpose for a contrast (shipped name or path)"),
    "diffusers_model": ParamSpec("path", "a local diffusers model folder (save_pretrained: unet/ + scheduler/, "
                                 "rdc_lib.models.diffusers_adapter); relative: the current folder, then notebooks/"),
    "check_timesteps": ParamSpec("int", "scheduler timesteps at which the adapter is checked", low=2, high=100_000),
    "purify_sigma": ParamSpec("float", "noise level (model space) of the purification", low=1e-4, high=100.0),
    "cnn_checkpoint": ParamSpec("path", "standard CNN (digits baseline): a shipped name (digits_cnn) or a path"),
    "ckpt_dir": ParamSpec("str", "folder of the imported EDM checkpoints (dataset 'cifar10')"),
    "heads": ParamSpec("str", f"which shipped denoiser the evaluation uses: {default_denoisers_text()}",
                       choices=HEADS),
    "n_images": ParamSpec("int", "number of test images", low=1, high=CIFAR10_TEST_SIZE),
    "rdc_n_images": ParamSpec("int", "number of test images for the (expensive) RDC", low=1, high=CIFAR10_TEST_SIZE),
    "n_variance_images": ParamSpec("int", "images used to measure the spread of logit differences", low=1,
                                   high=CIFAR10_TEST_SIZE),
    "n_cost_images": ParamSpec("int", "test images in the cost measurement (enough work for a stable timing)",
                               low=1, high=CIFAR10_TEST_SIZE),
    "n_draws": ParamSpec("int", "independent noise draws per measurement", low=2, high=10_000),
    "n_gap_images": ParamSpec("int", "test images of the class-gap measurement", low=1, high=CIFAR10_TEST_SIZE),
    "study_raw": ParamSpec("str", "raw rows of the denoiser study (docs/raw/denoiser_study.jsonl); missing = no bars"),
    "raw_dir": ParamSpec("str", "folder of the raw rows the docs are generated from (docs/raw)"),
    "figures": ParamSpec("list[str]", "findings figures to draw (names of the files under docs/figures)",
                         choices=_figure_names),
    "grid_raw": ParamSpec("str", "raw rows of the grid-level measurement (docs/raw/grid_levels.jsonl)"),
    "n_level_images": ParamSpec("int", "test images whose decisions the noise-level explorer shows", low=1, high=32),
    "n_reads": ParamSpec("int", "stochastic calls read on each adversarial example (the worst-of-N reading)", low=1,
                         high=1000),
    "attack_eot": ParamSpec("int", "EOT: noise draws averaged per attack gradient against the stochastic defense",
                            low=1, high=1000),
    # diffusion classifier
    "timesteps": ParamSpec("int", "number of noise levels T of the diffusion classifier", low=1, high=10_000),
    "timesteps_list": ParamSpec("list[int]", "numbers of noise levels compared", low=1, high=10_000),
    "prior_class": ParamSpec("int", "class favoured by the non-uniform prior", low=0, high=9),
    "prior_weight": ParamSpec("float", "how many times more prior mass prior_class gets than each other class",
                              low=1e-6, high=1e6),
    # likelihood maximization
    "lm_steps": ParamSpec("int", "LM gradient steps N", low=0, high=10_000),
    "lm_eta": ParamSpec("float", "LM ball radius in [0, 1] pixel units", low=0.0, high=1e3),
    "lm_step_size": ParamSpec("float", "LM step size (model-space units)", low=1e-12, high=1e3),
    "lm_norm": ParamSpec("str", "LM ball norm", choices=NORMS),
    "lm_optimizer": ParamSpec("str", "LM update rule ('sgd': normalised gradient steps)", choices=LM_OPTIMIZERS),
    "grad_mode": ParamSpec("str", "attacker's gradient through LM", choices=GRAD_MODES),
    "noise_mode": ParamSpec("str", "randomness of the diffusion defenses", choices=NOISE_MODES),
    # attacks
    "attack": ParamSpec("str", "attack name", choices=_attack_names),
    "attacks": ParamSpec("list[str]", "attacks of the sweep", choices=_eval_attack_names),
    "defenses": ParamSpec("list[str]", "defenses of the sweep", choices=_defense_names),
    "norm": ParamSpec("str", "threat model", choices=NORMS),
    "eps": ParamSpec("float", "attack budget on images in [0, 1]", low=0.0, high=1e3),
    "eps_list": ParamSpec("list[float]", "attack budgets on images in [0, 1]", low=0.0, high=1e3),
    "attack_steps": ParamSpec("int", "attack iterations", low=1, high=100_000),
    "square_queries": ParamSpec("int", "query budget of Square (attack 'square' and the black-box sanity check)",
                                low=1, high=1_000_000),
    "surface_points": ParamSpec("int", "grid points per axis of the loss surface", low=2, high=201),
    "surface_radius": ParamSpec("float", "half-width of the loss-surface grid (l_inf units)", low=1e-6, high=1.0),
    "check_samples": ParamSpec("int", "gradient samples / finite-difference directions of the masking checks",
                               low=2, high=1000),
    # randomized smoothing (notebook 06)
    "bases": ParamSpec("list[str]", "base classifiers that are smoothed (rdc_lib.certify.BASES)",
                       choices=SMOOTHING_BASES),
    "pixel_sigma_list": ParamSpec("list[float]", "smoothing noise levels (pixel space, > 0)", low=1e-6, high=10.0),
    "radii": ParamSpec("list[float]", "l2 radii (pixel space) at which accuracy is reported", low=0.0, high=100.0),
    "n_select": ParamSpec("int", "selection draws n0 of the certificate", low=1, high=10_000_000),
    "n_estimate": ParamSpec("int", "estimation draws N of the certificate", low=1, high=10_000_000),
    "alpha": ParamSpec("float", "failure probability of each certificate, in (0, 1)", low=1e-12, high=0.999999),
    "explore_index": ParamSpec("int", "test image shown in the one-image explorer", low=0, high=DIGITS_TEST_SIZE - 1),
    # run
    "seed": ParamSpec("int", "seed of every generator the notebook creates", low=0, high=2**63 - 1),
    "device": ParamSpec("str", "torch device: 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    "interactive": ParamSpec("bool", "build the ipywidgets explorer (batch runs set False)"),
    "result_dir": ParamSpec("str", "folder for results.json ('' = do not write; set by rdc run-notebooks / rdc sweep)"),
}


# ------------------------------------------------------------------------------ cross-parameter checks

def _check_norm_budget(values: dict[str, Any]) -> None:
    for budget, norm in (("eps", "norm"), ("eps_list", "norm"), ("lm_eta", "lm_norm")):
        if budget in values and values.get(norm, "linf") == "linf":
            bad = [v for v in (values[budget] if isinstance(values[budget], list) else [values[budget]]) if v > 1]
            if bad:
                raise _bad(budget, values[budget], f"an l_inf budget in [0, 1] for images in [0, 1] ({norm} = 'linf')")


def _check_device(value: str) -> None:
    kind = value.split(":", 1)[0]
    if kind not in ("cpu", "cuda", "mps") or (":" in value and not value.split(":", 1)[1].isdigit()):
        raise _bad("device", value, "'cpu', 'cuda', 'cuda:N' or 'mps'")
    if kind == "cpu":
        return
    import torch

    available = torch.cuda.is_available() if kind == "cuda" else torch.backends.mps.is_available()
    if not available:
        raise NotebookParameterError(f"notebook parameter device = {value!r}: no {kind} device on this machine; "
                                     "use device 'cpu'")


PATH_PARAMS = ("checkpoint", "checkpoint_single", "contrast_checkpoint", "cnn_checkpoint")  # a shipped name or a path
# '' for these means the shipped digits default of this heads (the one mapping: rdc_lib.core.choices.DEFAULT_DENOISERS);
# for "checkpoint" a notebook's own heads parameter, when it declares one, decides instead.
DENOISER_DEFAULT_HEADS = {"checkpoint": "multi", "checkpoint_single": "single"}
DIR_PARAMS = ("data_root", "ckpt_dir")                                # folders (dataset 'cifar10')
DATA_FILE_PARAMS = ("study_raw", "raw_dir", "grid_raw")               # data files / folders of the repository


def _default_denoisers(values: dict[str, Any]) -> None:
    """'' denoiser parameters -> the shipped default's name (digits) or the cifar10-paper preset's classifier."""
    for name, heads in DENOISER_DEFAULT_HEADS.items():
        if values.get(name) != "":
            continue
        if values.get("dataset", "digits") == "digits":
            values[name] = default_denoiser(values.get("heads", heads) if name == "checkpoint" else heads)
        elif name == "checkpoint":
            from ..defenses.presets import get_preset

            values[name] = str(data_dir() / "checkpoints" / get_preset("cifar10-paper").checkpoints.classifier)
        else:
            raise _bad(name, "", f"a checkpoint path with dataset {values['dataset']!r} (the shipped default is a "
                                 "digits denoiser)")


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
                values[name] = str(data_dir() / "checkpoints" / f"{values[name]}{CHECKPOINT_SUFFIX}"
                                   if is_checkpoint_name(values[name]) else resolve_path(values[name], base))
                continue
            raise MissingFilesError(f"notebook parameter {name} = {values[name]!r}: {exc}; the shipped checkpoints "
                                    "are in data/checkpoints/ (see data/README.md)") from None
    for name in DIR_PARAMS + DATA_FILE_PARAMS:
        if name in values and values[name]:
            values[name] = str(resolve_path(values[name], base))
    if "diffusers_model" in values:
        _check_diffusers_model(values, base)


def _check_diffusers_model(values: dict[str, Any], base: Path | None) -> None:
    """diffusers_model -> the absolute folder, checked against the digits (imported on demand)."""
    from ..models.diffusers_adapter import inspect_diffusers_folder

    value = values["diffusers_model"]
    folder = resolve_path(value.removeprefix("diffusers:"), base)
    try:
        inspect_diffusers_folder(folder)
    except FileNotFoundError as exc:
        raise MissingFilesError(f"notebook parameter diffusers_model = {value!r}: {exc}; the digits model is "
                                "data/diffusers_digits (see data/README.md)") from None
    except ValueError as exc:
        raise NotebookParameterError(f"notebook parameter diffusers_model = {value!r}: {exc}") from None
    values["diffusers_model"] = str(folder)


def _check_raw_dir(values: dict[str, Any]) -> None:
    """raw_dir must be a folder holding the headline rows (docs/raw/headline.jsonl)."""
    if "raw_dir" in values and not (Path(values["raw_dir"]) / "headline.jsonl").is_file():
        raise MissingFilesError(f"notebook parameter raw_dir = {values['raw_dir']!r}: expected a folder holding "
                                "headline.jsonl (the repository's docs/raw; relative paths are looked up in the "
                                f"current folder, then in {NOTEBOOKS_DIR})")


def _check_cifar10(values: dict[str, Any], base: Path | None) -> None:
    from ..defenses.presets import required_files

    root = Path(values["data_root"]) if values.get("data_root") else resolve_path("../data/cifar10", base)
    if values.get("ckpt_dir"):
        ckpt = Path(values["ckpt_dir"])
    elif "checkpoint" in values:
        ckpt = Path(values["checkpoint"]).parent
    else:
        ckpt = data_dir() / "checkpoints"
    req = required_files("cifar10-paper", root, ckpt)
    if not req.ok:
        raise MissingFilesError(f"notebook parameter dataset = 'cifar10' needs files that are missing "
                                f"(data_root = {values.get('data_root')!r}, checkpoint folder {ckpt}; relative "
                                f"paths are looked up in the current folder, then in {NOTEBOOKS_DIR}):\n"
                                f"{req.message}")


def _check_cifar10_defenses(values: dict[str, Any]) -> None:
    if values.get("dataset") == "cifar10" and "defenses" in values:
        from ..defenses import defense_names

        cifar = defense_names(datasets="cifar10")
        other = [d for d in values["defenses"] if d not in cifar]
        if other:
            raise _bad("defenses", values["defenses"], f"only {' and '.join(map(repr, cifar))} with dataset 'cifar10' "
                       "(EDM checkpoints; "
                       f"no CIFAR-10 baseline for {', '.join(other)})")


def _check_certify_draws(values: dict[str, Any]) -> None:
    """n_estimate must allow a non-zero radius at alpha (``rdc_lib.certify.min_draws``, imported on demand)."""
    if "n_estimate" in values and "alpha" in values:
        from ..certify.smoothing import min_draws

        need = min_draws(values["alpha"])
        if values["n_estimate"] < need:
            raise _bad("n_estimate", values["n_estimate"], f"an int >= {need}: fewer estimation draws can never "
                                                          f"certify a non-zero radius at alpha = {values['alpha']:g}")


def _check_sizes(values: dict[str, Any]) -> None:
    limit = DIGITS_TEST_SIZE if values.get("dataset", "digits") == "digits" else CIFAR10_TEST_SIZE
    for name in ("n_images", "rdc_n_images", "n_variance_images", "n_cost_images"):
        if name in values and values[name] > limit:
            split = f"the size of the {values.get('dataset', 'digits')} test split"
            raise _bad(name, values[name], f"at most {limit} ({split})")


# ------------------------------------------------------------------------------------------- API

# Parameters renamed in issue 38 (old name -> new): passing an old name is an error that names the new one.
RENAMED_PARAMS = {"T": "timesteps", "T_list": "timesteps_list", "sigma_list": "pixel_sigma_list"}


def validate_params(*, base_dir: str | Path | None = None, namespace: dict | None = None,
                    **params: Any) -> dict[str, Any]:
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
        raise NotebookParameterError(f"renamed notebook parameter(s): {text} (pass -p {RENAMED_PARAMS[renamed[0]]} ...)")
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
