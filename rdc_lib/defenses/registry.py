"""The defense registry: name -> builder plus the facts other code reads (CLI, evaluation, checks, notebooks).

A defense is added by one ``register_defense`` call in its own module (the shipped ones: ``builders.py``)::

    @register_defense("my-defense", needs_denoiser=False, stochastic=False, datasets=("digits",))
    def _build(spec: DefenseSpec, device: torch.device) -> nn.Module: ...

A builder gets the :class:`DefenseSpec` and a device and returns an ``nn.Module`` mapping images
(B, C, H, W) in [0, 1] to logits (B, K), in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core.choices import (
    DATASETS,
    GRAD_MODES,
    GRID_KIND,
    GRID_KINDS,
    GRID_SIGMA_MIN,
    HEADS,
    LM_ETA,
    LM_NORMS,
    LM_STEP_SIZE,
    LM_STEPS,
    NOISE_MODES,
    TIMESTEPS,
    check_choice,
)
from ..diffusion.schedules import check_grid_sigma_min
from ..models.diffusers_adapter import diffusers_files, is_diffusers_ref

__all__ = [
    "DefenseInfo",
    "DefenseSpec",
    "TRANSFER_SOURCE",
    "build_defense",
    "checkpoint_files",
    "defense_names",
    "get_defense",
    "register_defense",
]

# The defense the sanity checks' transfer attack is made on (rdc_lib.evaluation.checks).
TRANSFER_SOURCE = "cnn"


@dataclass(frozen=True)
class DefenseInfo:
    """One registered defense and the facts about it."""

    name: str
    builder: Callable[["DefenseSpec", torch.device], nn.Module]
    needs_denoiser: bool = False  # built on a diffusion model (spec.heads / denoiser_path)
    stochastic: bool = False  # has its own randomness (spec.noise_mode applies)
    datasets: tuple[str, ...] = ("digits",)
    grad_modes: tuple[str, ...] = ("exact",)  # "bpda": a purification stage whose backward can be replaced
    extra_args: tuple[str, ...] = ()  # DefenseSpec fields it reads besides name, seed, device
    checkpoints: Callable[["DefenseSpec"], list[Path]] | None = None  # files it reads (provenance hashes)
    description: str = ""
    # far costlier per attacked image than the others (every attack step differentiates through LM and the DC):
    # notebook 04 runs the defenses with this fact on its smaller image count (rdc_n_images)
    expensive: bool = False


_REGISTRY: dict[str, DefenseInfo] = {}


def register_defense(name: str, **facts: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(spec, device)`` as defense ``name`` with ``facts`` (fields of DefenseInfo)."""
    if name in _REGISTRY:
        raise ValueError(f"defense {name!r} is already registered; choose another name")
    for ds in facts.get("datasets", ()):
        check_choice("dataset", ds, DATASETS)
    for gm in facts.get("grad_modes", ()):
        check_choice("grad_mode", gm, GRAD_MODES)

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = DefenseInfo(name=name, builder=builder, **facts)
        return builder

    return deco


def defense_names(**facts: Any) -> tuple[str, ...]:
    """Registered defense names in registration order, optionally only those whose facts equal ``facts``
    (e.g. ``needs_denoiser=True``); a tuple-valued fact matches when it contains the given value."""

    def ok(info: DefenseInfo) -> bool:
        for k, v in facts.items():
            have = getattr(info, k)
            if (v not in have) if isinstance(have, tuple) else (have != v):
                return False
        return True

    return tuple(n for n, info in _REGISTRY.items() if ok(info))


def get_defense(name: str) -> DefenseInfo:
    """The registered defense ``name``; ValueError listing the valid names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown defense {name!r}; valid choices: {', '.join(defense_names())}")
    return _REGISTRY[name]


@dataclass(frozen=True)
class DefenseSpec:
    """Everything a builder may read. Defaults: rdc_lib.core.choices.

    Also the defense part of ``rdc_lib.evaluation.EvalConfig`` (its ``spec``): every field but ``denoiser_path``
    and ``ckpt_dir`` (filled in from the configuration's ``denoiser`` and ``ckpt_dir`` at build time) is a flat
    evaluation setting under its own name (``name`` as ``defense``), so a field added here reaches the builder from
    ``rdc eval``, sweeps and ``EvalConfig.from_params`` with no other edit.
    """

    name: str = "dc"
    heads: Literal["single", "multi"] = "multi"
    timesteps: int = TIMESTEPS  # T noise levels of the diffusion classifier
    grid: str = GRID_KIND
    grid_sigma_min: float = GRID_SIGMA_MIN  # the grid's smallest level (truncates the ELBO below it)
    noise_mode: Literal["stochastic", "fixed"] = "stochastic"
    grad_mode: Literal["exact", "bpda"] = "exact"  # gradient through RDC's LM / DiffPure's purification
    seed: int = 0
    lm_steps: int = LM_STEPS
    lm_eta: float = LM_ETA
    lm_step_size: float = LM_STEP_SIZE
    lm_norm: str = "linf"
    vote: int = 1
    denoiser_path: str | None = None  # override the shipped default of heads (DEFAULT_DENOISERS)
    preset: str = ""  # a named preset (rdc_lib.defenses.presets) for CIFAR-10
    ckpt_dir: str = ""  # CIFAR-10: folder of the imported EDM checkpoints

    def __post_init__(self) -> None:
        info = get_defense(self.name)
        check_choice("heads", self.heads, HEADS)
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        check_choice("grid", self.grid, GRID_KINDS)
        check_grid_sigma_min(self.grid_sigma_min, self.grid)
        check_choice("noise_mode", self.noise_mode, NOISE_MODES)
        check_choice("grad_mode", self.grad_mode, GRAD_MODES)
        check_choice("lm_norm", self.lm_norm, LM_NORMS)
        if self.grad_mode not in info.grad_modes:
            valid = ", ".join(defense_names(grad_modes=self.grad_mode))
            raise ValueError(
                f"grad_mode {self.grad_mode!r} replaces the backward pass of a purification stage; "
                f"defense {self.name!r} has none (valid choices with {self.grad_mode}: {valid})"
            )


def build_defense(spec: DefenseSpec, device: torch.device | str = "cpu") -> nn.Module:
    """The defense named by ``spec`` in eval mode on ``device``."""
    return get_defense(spec.name).builder(spec, torch.device(device)).eval()


def checkpoint_files(spec: DefenseSpec, *, transfer_source: bool = False) -> list[Path]:
    """The checkpoint files ``build_defense(spec)`` reads (for provenance hashes); with ``transfer_source``
    also those of :data:`TRANSFER_SOURCE`, the defense the sanity checks transfer from (digits only)."""
    info = get_defense(spec.name)
    files = list(info.checkpoints(spec)) if info.checkpoints is not None else []
    if transfer_source and not spec.ckpt_dir:
        files += checkpoint_files(DefenseSpec(name=TRANSFER_SOURCE))
    files = [f for ref in files for f in (diffusers_files(ref) if is_diffusers_ref(ref) else [Path(ref)])]
    return sorted(set(files))
