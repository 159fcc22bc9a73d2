"""Denoisers: the shared contract, EDM preconditioning, backbones and safe checkpoints."""

from ..core.choices import HEADS
from . import ddpmpp  # registers 'ddpmpp'
from .base import Denoiser
from .checkpoints import load_denoiser, read_checkpoint, save_checkpoint, save_denoiser
from .config import ARCHITECTURES, DenoiserConfig, build_denoiser, register_architecture
from .precond import EDMDenoiser
from .unet_small import SmallUNet

__all__ = [
    "ARCHITECTURES",
    "HEADS",
    "Denoiser",
    "DenoiserConfig",
    "EDMDenoiser",
    "SmallUNet",
    "build_denoiser",
    "load_denoiser",
    "read_checkpoint",
    "register_architecture",
    "save_checkpoint",
    "save_denoiser",
]
