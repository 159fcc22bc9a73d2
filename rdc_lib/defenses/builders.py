"""Registration of the shipped defenses (rdc_lib.defenses.registry): one ``register_defense`` per defense.

Digits defenses load the shipped checkpoints (data/checkpoints; without a ``denoiser_path`` the default of
``heads``, rdc_lib.core.choices.DEFAULT_DENOISERS); DC and RDC on CIFAR-10 load a named
preset's imported EDM checkpoints from ``spec.ckpt_dir``. Order is the order of the CLI's choices.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..core.choices import DATASETS, GRAD_MODES
from ..core.paths import checkpoint_path, default_denoiser
from ..data import load_dataset
from ..diffusion.lm import LMConfig
from ..diffusion.schedules import make_grid
from ..models.checkpoints import load_denoiser, require_trained_null_label
from ..models.edm_import import load_paired_denoiser
from ..models.optimal import OptimalDenoiser
from .baselines import load_classifier
from .classifier import DiffusionClassifier
from .presets import get_preset
from .purify import DiffPure
from .rdc import RobustDiffusionClassifier
from .registry import DefenseSpec, register_defense

_SPEC_DC = ("heads", "timesteps", "grid", "grid_sigma_min", "noise_mode", "denoiser_path", "preset", "ckpt_dir")
_SPEC_LM = ("lm_steps", "lm_eta", "lm_step_size", "lm_norm", "grad_mode", "vote")


def _grid(spec: DefenseSpec):
    """The digits DC's noise grid: T levels of kind ``spec.grid`` from ``spec.grid_sigma_min``."""
    return make_grid(spec.timesteps, spec.grid, sigma_min=spec.grid_sigma_min)


def _noise(spec: DefenseSpec) -> dict:
    """How a stochastic defense draws its noise: ``noise_mode`` and ``seed`` of the spec, as keywords."""
    return dict(noise_mode=spec.noise_mode, seed=spec.seed)


def _denoiser_file(spec: DefenseSpec) -> Path:
    """The digits denoiser: ``spec.denoiser_path``, else the shipped default of ``spec.heads``."""
    return Path(spec.denoiser_path) if spec.denoiser_path else checkpoint_path(default_denoiser(spec.heads))


def _denoiser_files(spec: DefenseSpec) -> list[Path]:
    if spec.ckpt_dir:
        p = get_preset(spec.preset or "cifar10-paper")
        return [Path(spec.ckpt_dir) / n for n in (p.checkpoints.classifier, p.checkpoints.lm) if n]
    return [_denoiser_file(spec)]


def _cnn_file(name: str) -> Path:
    return checkpoint_path("digits_cnn" if name == "cnn" else "digits_at_cnn")


@register_defense(
    "cnn", checkpoints=lambda spec: [_cnn_file("cnn")], description="the standard digits CNN (no defense)"
)
def _cnn(spec: DefenseSpec, device: torch.device) -> nn.Module:
    return load_classifier(_cnn_file("cnn"), device=device)


@register_defense(
    "at-cnn", checkpoints=lambda spec: [_cnn_file("at-cnn")], description="the PGD-adversarially-trained digits CNN"
)
def _at_cnn(spec: DefenseSpec, device: torch.device) -> nn.Module:
    return load_classifier(_cnn_file("at-cnn"), device=device)


def _preset_parts(spec: DefenseSpec, device: torch.device):
    """A named preset's (preset, denoiser, grid, DC kwargs) from the imported EDM checkpoints (CIFAR-10)."""
    p = get_preset(spec.preset or "cifar10-paper")
    ckpt = Path(spec.ckpt_dir)
    cond = ckpt / p.checkpoints.classifier
    if p.checkpoints.lm:
        denoiser = load_paired_denoiser(cond, ckpt / p.checkpoints.lm, device=device)
    else:
        denoiser = load_denoiser(cond, device=device)
    return p, denoiser, make_grid(**p.grid.kwargs()), {**p.dc.kwargs(), "seed": spec.seed}


@register_defense(
    "dc",
    needs_denoiser=True,
    stochastic=True,
    datasets=DATASETS,
    extra_args=_SPEC_DC,
    checkpoints=_denoiser_files,
    description="the diffusion classifier (Bayes' rule over ELBOs)",
)
def _dc(spec: DefenseSpec, device: torch.device) -> nn.Module:
    if spec.ckpt_dir:
        _, denoiser, grid, dc_kwargs = _preset_parts(spec, device)
        return DiffusionClassifier(denoiser, grid, **dc_kwargs)
    den = load_denoiser(_denoiser_file(spec), device=device)
    return DiffusionClassifier(den, _grid(spec), **_noise(spec))


@register_defense(
    "rdc",
    needs_denoiser=True,
    stochastic=True,
    datasets=DATASETS,
    grad_modes=GRAD_MODES,
    extra_args=_SPEC_DC + _SPEC_LM,
    checkpoints=_denoiser_files,
    description="the robust diffusion classifier: likelihood maximization, then the DC",
    expensive=True,
)
def _rdc(spec: DefenseSpec, device: torch.device) -> nn.Module:
    if spec.ckpt_dir:
        p, denoiser, grid, dc_kwargs = _preset_parts(spec, device)
        return RobustDiffusionClassifier(
            denoiser,
            DiffusionClassifier(denoiser, grid, **dc_kwargs),
            lm=p.lm,
            grad_mode=spec.grad_mode,
            noise_mode=p.dc.noise_mode,
            seed=spec.seed,
        )
    lm = LMConfig(steps=spec.lm_steps, eta=spec.lm_eta, step_size=spec.lm_step_size, norm=spec.lm_norm)
    if lm.steps > 0 and lm.eta > 0:
        require_trained_null_label(_denoiser_file(spec), "likelihood maximization")
    den = load_denoiser(_denoiser_file(spec), device=device)
    return RobustDiffusionClassifier(
        den, grid=_grid(spec), lm=lm, grad_mode=spec.grad_mode, vote=spec.vote, **_noise(spec)
    )


@register_defense(
    "diffpure",
    needs_denoiser=True,
    stochastic=True,
    grad_modes=GRAD_MODES,
    extra_args=("heads", "noise_mode", "grad_mode", "denoiser_path"),
    checkpoints=lambda spec: [_denoiser_file(spec), _cnn_file("cnn")],
    description="DiffPure: purify with the unconditional head, classify with the standard CNN",
)
def _diffpure(spec: DefenseSpec, device: torch.device) -> nn.Module:
    cnn = load_classifier(_cnn_file("cnn"), device=device)
    require_trained_null_label(_denoiser_file(spec), "DiffPure's purification")
    den = load_denoiser(_denoiser_file(spec), device=device)
    return DiffPure(den, cnn, grad_mode=spec.grad_mode, **_noise(spec))


@register_defense(
    "optimal-dc",
    stochastic=True,
    extra_args=("timesteps", "grid", "grid_sigma_min", "noise_mode"),
    checkpoints=lambda spec: [],
    description="the DC with the closed-form optimal denoiser of the digits training split",
)
def _optimal_dc(spec: DefenseSpec, device: torch.device) -> nn.Module:
    x_tr, y_tr = load_dataset("digits", "train")
    den = OptimalDenoiser(x_tr.to(device), y_tr.to(device))
    return DiffusionClassifier(den, _grid(spec), **_noise(spec))
