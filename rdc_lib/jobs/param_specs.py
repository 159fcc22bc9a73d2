"""The rules of the notebook parameters: one :class:`ParamSpec` per name in :data:`PARAM_SPECS` (a name means the
same thing in every notebook), and the errors a bad value raises. rdc_lib.jobs.params applies them
(``validate_params``), with the checks that read several parameters at once and the files they point to.

Torch-free at import time: the lists of attack, defense and figure names are imported on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.choices import DATASETS, GRAD_MODES, HEADS, LM_OPTIMIZERS, NOISE_MODES, NORMS, SMOOTHING_BASES
from ..core.paths import default_denoisers_text

__all__ = [
    "CIFAR10_TEST_SIZE",
    "DIGITS_TEST_SIZE",
    "PARAM_SPECS",
    "MissingFilesError",
    "NotebookParameterError",
    "ParamSpec",
    "param_error",
]

DIGITS_TEST_SIZE = 360
CIFAR10_TEST_SIZE = 10_000


class NotebookParameterError(ValueError):
    """A notebook parameter has the wrong type or an impossible value; the message names it."""


class MissingFilesError(NotebookParameterError, FileNotFoundError):
    """A file a parameter points to (checkpoint, dataset) does not exist; the message says where to put it."""


# ---------------------------------------------------------------------------------------- one value


def param_error(name: str, value: Any, expected: str) -> NotebookParameterError:
    got = f"{value!r} ({type(value).__name__})"
    return NotebookParameterError(f"notebook parameter {name} = {got}: expected {expected}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and v == v  # NaN is not a valid setting


def _attack_names() -> tuple[str, ...]:
    from ..attacks.registry import attack_names  # on demand: importing this module stays torch-free

    return attack_names(ensemble=False, adaptive=False)


def _eval_attack_names() -> tuple[str, ...]:
    from ..evaluation.attacking import eval_attack_names  # on demand: importing this module stays torch-free

    return eval_attack_names()


def _figure_names() -> tuple[str, ...]:
    from ..findings.svg import FIGURES  # on demand: importing this module stays torch-free

    return tuple(name for figures in FIGURES.values() for name, _ in figures)


def _defense_names() -> tuple[str, ...]:
    from ..defenses import defense_names  # on demand: importing this module stays torch-free

    return defense_names()


@dataclass(frozen=True)
class ParamSpec:
    """How one notebook parameter is checked.

    kind: 'int' | 'float' | 'bool' | 'str' | 'list[float]' | 'list[int]' | 'list[str]' | 'path' | 'denoiser'
    (a path or a shipped name, where '' means the shipped default: :data:`rdc_lib.jobs.params.DENOISER_DEFAULT_HEADS`).
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
        base = {
            "int": "an int",
            "float": "a number",
            "bool": "True or False",
            "str": "a string",
            "path": "a file path (str)",
            "denoiser": "a shipped denoiser's name, a .safetensors path, or '' (the shipped default, "
            "rdc_lib.core.choices.DEFAULT_DENOISERS)",
            "list[float]": "a list of numbers",
            "list[int]": "a list of ints",
            "list[str]": "a list of strings",
        }[self.kind]
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
                raise param_error(
                    name,
                    value,
                    f"{self.expected()}; papermill -p passes strings, give lists with "
                    f"-y '{name}: [...]' or a -f parameters file",
                )
            if not isinstance(value, (list, tuple)) or len(value) < self.min_len:
                raise param_error(name, value, f"{self.expected()} (at least {self.min_len} element(s))")
            inner = ParamSpec(kind[5:-1], self.help, self.low, self.high, self.choices)
            out = [inner._scalar(f"{name}[{i}]", v) for i, v in enumerate(value)]
            if len(set(map(repr, out))) != len(out):
                raise param_error(name, value, f"{self.expected()} without repeated elements")
            return out
        return self._scalar(name, value)

    def _scalar(self, name: str, value: Any) -> Any:
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise param_error(name, value, "True or False (papermill: -p " + name + " True)")
            return value
        if kind == "int":
            if not _is_int(value):
                raise param_error(name, value, self.expected())
        elif kind == "float":
            if not _is_number(value):
                raise param_error(name, value, self.expected())
            value = float(value)
        elif kind in ("str", "path", "denoiser"):
            if not isinstance(value, str) or (kind == "path" and not value):
                raise param_error(name, value, self.expected())
            allowed = self.allowed()
            if allowed is not None and value not in allowed:
                raise param_error(name, value, f"one of: {', '.join(allowed)}")
            return value
        if self.low is not None and value < self.low:
            raise param_error(name, value, self.expected())
        if self.high is not None and value > self.high:
            raise param_error(name, value, self.expected())
        return value


PARAM_SPECS: dict[str, ParamSpec] = {
    # data and models
    "dataset": ParamSpec(
        "str", "dataset: 'digits' runs here; 'cifar10' needs the files of the cifar10-paper preset", choices=DATASETS
    ),
    "data_root": ParamSpec("str", "folder of the CIFAR-10 python batches (dataset 'cifar10' only)"),
    "checkpoint": ParamSpec(
        "denoiser",
        "denoiser checkpoint: a shipped name or a .safetensors path; '' = the shipped "
        "default of heads (multi without heads)",
    ),
    "checkpoint_single": ParamSpec(
        "denoiser",
        "single-head denoiser (shipped name or path; '' = the shipped single-head "
        "default), for the single- vs multi-head comparison",
    ),
    "contrast_checkpoint": ParamSpec(
        "path", "a second denoiser named on purpose for a contrast (shipped name or path)"
    ),
    "diffusers_model": ParamSpec(
        "path",
        "a local diffusers model folder (save_pretrained: unet/ + scheduler/, "
        "rdc_lib.models.diffusers_adapter); relative: the current folder, then notebooks/",
    ),
    "check_timesteps": ParamSpec("int", "scheduler timesteps at which the adapter is checked", low=2, high=100_000),
    "purify_sigma": ParamSpec("float", "noise level (model space) of the purification", low=1e-4, high=100.0),
    "cnn_checkpoint": ParamSpec("path", "standard CNN (digits baseline): a shipped name (digits_cnn) or a path"),
    "ckpt_dir": ParamSpec("str", "folder of the imported EDM checkpoints (dataset 'cifar10')"),
    "heads": ParamSpec("str", f"which shipped denoiser the evaluation uses: {default_denoisers_text()}", choices=HEADS),
    "n_images": ParamSpec("int", "number of test images", low=1, high=CIFAR10_TEST_SIZE),
    "rdc_n_images": ParamSpec("int", "number of test images for the (expensive) RDC", low=1, high=CIFAR10_TEST_SIZE),
    "n_variance_images": ParamSpec(
        "int", "images used to measure the spread of logit differences", low=1, high=CIFAR10_TEST_SIZE
    ),
    "n_cost_images": ParamSpec(
        "int", "test images in the cost measurement (enough work for a stable timing)", low=1, high=CIFAR10_TEST_SIZE
    ),
    "n_draws": ParamSpec("int", "independent noise draws per measurement", low=2, high=10_000),
    "n_gap_images": ParamSpec("int", "test images of the class-gap measurement", low=1, high=CIFAR10_TEST_SIZE),
    "study_raw": ParamSpec("str", "raw rows of the denoiser study (docs/raw/denoiser_study.jsonl); missing = no bars"),
    "raw_dir": ParamSpec("str", "folder of the raw rows the docs are generated from (docs/raw)"),
    "figures": ParamSpec(
        "list[str]", "findings figures to draw (names of the files under docs/figures)", choices=_figure_names
    ),
    "grid_raw": ParamSpec("str", "raw rows of the grid-level measurement (docs/raw/grid_levels.jsonl)"),
    "n_level_images": ParamSpec("int", "test images whose decisions the noise-level explorer shows", low=1, high=32),
    "n_reads": ParamSpec(
        "int", "stochastic calls read on each adversarial example (the worst-of-N reading)", low=1, high=1000
    ),
    "attack_eot": ParamSpec(
        "int", "EOT: noise draws averaged per attack gradient against the stochastic defense", low=1, high=1000
    ),
    # diffusion classifier
    "timesteps": ParamSpec("int", "number of noise levels T of the diffusion classifier", low=1, high=10_000),
    "timesteps_list": ParamSpec("list[int]", "numbers of noise levels compared", low=1, high=10_000),
    "prior_class": ParamSpec("int", "class favoured by the non-uniform prior", low=0, high=9),
    "prior_weight": ParamSpec(
        "float", "how many times more prior mass prior_class gets than each other class", low=1e-6, high=1e6
    ),
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
    "square_queries": ParamSpec(
        "int", "query budget of Square (attack 'square' and the black-box sanity check)", low=1, high=1_000_000
    ),
    "surface_points": ParamSpec("int", "grid points per axis of the loss surface", low=2, high=201),
    "surface_radius": ParamSpec("float", "half-width of the loss-surface grid (l_inf units)", low=1e-6, high=1.0),
    "check_samples": ParamSpec(
        "int", "gradient samples / finite-difference directions of the masking checks", low=2, high=1000
    ),
    # randomized smoothing (notebook 06)
    "bases": ParamSpec(
        "list[str]", "base classifiers that are smoothed (rdc_lib.certify.BASES)", choices=SMOOTHING_BASES
    ),
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
