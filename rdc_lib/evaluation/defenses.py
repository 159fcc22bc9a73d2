"""Build the defences the evaluation compares, by name, from the shipped digits checkpoints.

Every defence is an ``nn.Module`` mapping images (B, C, H, W) in [0, 1] to logits (B, K).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..choices import (GRAD_MODES, GRID_KIND, GRID_LEVELS, HEADS, LM_ETA, LM_STEP_SIZE, LM_STEPS,
                       check_choice)
from ..classifier import DiffusionClassifier
from ..diffusion.schedules import make_grid
from ..models.checkpoints import load_denoiser
from ..paths import checkpoint_path

DEFENSES = ("cnn", "at-cnn", "diffpure", "dc", "rdc", "optimal-dc")


@dataclass(frozen=True)
class DefenseSpec:
    name: str = "dc"
    heads: Literal["single", "multi"] = "multi"
    timesteps: int = GRID_LEVELS
    grid: str = GRID_KIND
    noise_mode: Literal["stochastic", "fixed"] = "stochastic"
    grad_mode: Literal["exact", "bpda"] = "exact"   # gradient through RDC's LM / DiffPure's purification
    seed: int = 0
    lm_steps: int = LM_STEPS
    lm_eta: float = LM_ETA
    lm_step_size: float = LM_STEP_SIZE
    lm_norm: str = "linf"
    vote: int = 1
    denoiser_path: str | None = None               # override the shipped checkpoint
    preset: str = ""                                # a named preset (rdc_lib.presets) for CIFAR-10
    ckpt_dir: str = ""                              # CIFAR-10: folder of the imported EDM checkpoints

    def __post_init__(self) -> None:
        if self.name not in DEFENSES:
            raise ValueError(f"unknown defense {self.name!r}; valid choices: {', '.join(DEFENSES)}")
        check_choice("heads", self.heads, HEADS)
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        check_choice("grad_mode", self.grad_mode, GRAD_MODES)
        if self.grad_mode == "bpda" and self.name not in ("rdc", "diffpure"):
            raise ValueError(f"grad_mode 'bpda' replaces the backward pass of a purification stage; defence "
                             f"{self.name!r} has none (valid choices with bpda: rdc, diffpure)")


def _denoiser(spec: DefenseSpec, device: torch.device):
    path = spec.denoiser_path or checkpoint_path(f"digits_{spec.heads}")
    return load_denoiser(path, device=device)


def build_defense(spec: DefenseSpec, device: torch.device | str = "cpu") -> nn.Module:
    """The defence named by ``spec`` in eval mode on ``device``."""
    device = torch.device(device)
    if spec.ckpt_dir:
        return _build_from_preset(spec, device)
    if spec.name in ("cnn", "at-cnn"):
        from ..baselines import load_classifier

        return load_classifier(checkpoint_path("digits_cnn" if spec.name == "cnn" else "digits_at_cnn"), device=device)
    grid = make_grid(spec.timesteps, spec.grid)
    if spec.name == "dc":
        return DiffusionClassifier(_denoiser(spec, device), grid, noise_mode=spec.noise_mode, seed=spec.seed).eval()
    if spec.name == "optimal-dc":
        from ..data import load_dataset
        from ..models.optimal import OptimalDenoiser

        x_tr, y_tr = load_dataset("digits", "train")
        den = OptimalDenoiser(x_tr.to(device), y_tr.to(device))
        return DiffusionClassifier(den, grid, noise_mode=spec.noise_mode, seed=spec.seed).eval()
    if spec.name == "rdc":
        from ..lm import LMConfig
        from ..rdc import RobustDiffusionClassifier

        lm = LMConfig(steps=spec.lm_steps, eta=spec.lm_eta, step_size=spec.lm_step_size, norm=spec.lm_norm)
        return RobustDiffusionClassifier(
            _denoiser(spec, device), grid=grid, lm=lm, grad_mode=spec.grad_mode, noise_mode=spec.noise_mode,
            seed=spec.seed, vote=spec.vote,
        ).eval()
    # diffpure: purify with the unconditional head, classify with the standard CNN
    from ..baselines import load_classifier
    from ..purify import DiffPure

    cnn = load_classifier(checkpoint_path("digits_cnn"), device=device)
    return DiffPure(_denoiser(spec, device), cnn, noise_mode=spec.noise_mode, seed=spec.seed,
                    grad_mode=spec.grad_mode).eval()


def _build_from_preset(spec: DefenseSpec, device: torch.device) -> nn.Module:
    """DC / RDC at a named preset's settings from imported EDM checkpoints (CIFAR-10)."""
    from pathlib import Path

    from ..lm import LMConfig
    from ..models.edm_import import load_paired_denoiser
    from ..presets import get_preset
    from ..rdc import RobustDiffusionClassifier

    p = get_preset(spec.preset or "cifar10-paper")
    ckpt = Path(spec.ckpt_dir)
    cond = ckpt / p.checkpoints.classifier
    if p.checkpoints.lm:
        denoiser = load_paired_denoiser(cond, ckpt / p.checkpoints.lm, device=device)
    else:
        denoiser = load_denoiser(cond, device=device)
    grid = make_grid(**p.grid.kwargs())
    dc_kwargs = {**p.dc.kwargs(), "seed": spec.seed}
    if spec.name == "dc":
        return DiffusionClassifier(denoiser, grid, **dc_kwargs).eval()
    dc = DiffusionClassifier(denoiser, grid, **dc_kwargs)
    lm_kw = p.lm.kwargs()
    lm = LMConfig(**{k: lm_kw[k] for k in ("steps", "step_size", "eta", "norm", "sigma_range", "optimizer")})
    return RobustDiffusionClassifier(denoiser, dc, lm=lm, grad_mode=spec.grad_mode,
                                     noise_mode=p.dc.noise_mode, seed=spec.seed).eval()


def checkpoint_files(spec: DefenseSpec, *, transfer_source: bool = False) -> list["Path"]:
    """The checkpoint files ``build_defense(spec)`` reads (for provenance hashes); with ``transfer_source``
    also the standard CNN the sanity checks transfer from (rdc_lib.evaluation.checks)."""
    from pathlib import Path

    files: list[Path] = []
    if spec.ckpt_dir:
        from ..presets import get_preset

        p = get_preset(spec.preset or "cifar10-paper")
        files += [Path(spec.ckpt_dir) / n for n in (p.checkpoints.classifier, p.checkpoints.lm) if n]
    elif spec.name in ("cnn", "at-cnn"):
        files.append(checkpoint_path("digits_cnn" if spec.name == "cnn" else "digits_at_cnn"))
    elif spec.name != "optimal-dc":
        files.append(Path(spec.denoiser_path) if spec.denoiser_path else checkpoint_path(f"digits_{spec.heads}"))
        if spec.name == "diffpure":
            files.append(checkpoint_path("digits_cnn"))
    if transfer_source and not spec.ckpt_dir:
        files.append(checkpoint_path("digits_cnn"))
    return sorted(set(files))
