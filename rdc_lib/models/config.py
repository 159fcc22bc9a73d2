"""Denoiser configuration (saved beside the weights) and the architecture registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from ..core.choices import HEADS
from .base import Denoiser
from .film import FILM_BACKBONE, FiLMNet
from .precond import EDMDenoiser
from .unet_small import SmallUNet


@dataclass(frozen=True)
class DenoiserConfig:
    arch: str = "unet_small"  # key of ARCHITECTURES
    num_classes: int = 10  # K (label K is the null label)
    img_channels: int = 1  # C
    img_resolution: int = 8  # H = W
    heads: str = "single"  # "single" (label is an input) | "multi" (K + 1 heads, one pass)
    sigma_data: float = 0.5  # EDM sigma_data
    backbone: dict = field(default_factory=dict)  # architecture-specific keyword arguments

    def __post_init__(self) -> None:
        if self.heads not in HEADS:
            raise ValueError(f"unknown heads {self.heads!r}; valid choices: {', '.join(HEADS)}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; valid choices: {', '.join(sorted(ARCHITECTURES))}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DenoiserConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**d)


def _head_layout(cfg: DenoiserConfig) -> dict[str, int]:
    """The backbone arguments the heads decide: a multi-head net outputs K + 1 images and takes no label;
    a single-head net outputs one image and takes the label (K classes + the null label)."""
    multi = cfg.heads == "multi"
    return {
        "in_channels": cfg.img_channels,
        "out_channels": cfg.img_channels * ((cfg.num_classes + 1) if multi else 1),
        "resolution": cfg.img_resolution,
        "label_dim": 0 if multi else cfg.num_classes + 1,
        "num_heads": cfg.num_classes + 1 if multi else 1,
    }


def _build_unet_small(cfg: DenoiserConfig) -> nn.Module:
    kwargs = dict(cfg.backbone)
    if "channel_mult" in kwargs:
        kwargs["channel_mult"] = tuple(kwargs["channel_mult"])
    return SmallUNet(**_head_layout(cfg), **kwargs)


def _build_film(cfg: DenoiserConfig) -> nn.Module:
    return FiLMNet(**_head_layout(cfg), **{**FILM_BACKBONE, **cfg.backbone})


# arch name -> function(config) -> backbone F(x_in, c_noise, labels)
ARCHITECTURES: dict[str, Callable[[DenoiserConfig], nn.Module]] = {"unet_small": _build_unet_small, "film": _build_film}
# arch name -> the backbone keyword arguments `rdc train` starts from (digits scale)
DEFAULT_BACKBONES: dict[str, dict] = {"film": FILM_BACKBONE}


def default_backbone(arch: str) -> dict:
    """A copy of the default backbone arguments of ``arch`` ({} where the builder has its own defaults)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid choices: {', '.join(sorted(ARCHITECTURES))}")
    return dict(DEFAULT_BACKBONES.get(arch, {}))


def register_architecture(name: str, builder: Callable[[DenoiserConfig], nn.Module]) -> None:
    """Add an architecture to the registry (used by the DDPM++ module)."""
    ARCHITECTURES[name] = builder


def build_denoiser(cfg: DenoiserConfig) -> Denoiser:
    """A freshly initialised EDM-preconditioned denoiser for ``cfg``."""
    backbone = ARCHITECTURES[cfg.arch](cfg)
    return EDMDenoiser(backbone, cfg.num_classes, cfg.img_channels, cfg.img_resolution, cfg.heads, cfg.sigma_data)
