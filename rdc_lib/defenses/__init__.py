"""Defenses by name: the diffusion classifier (``classifier``), RDC (``rdc``), DiffPure (``purify``), the CNN
baselines (``baselines``), and the registry that builds them from a :class:`DefenseSpec` (``registry``;
the shipped registrations are in ``builders``). Every defense maps images (B, C, H, W) in [0, 1] to logits (B, K).
"""

from . import builders as _builders  # registers the shipped defenses
from . import registry as _registry
from .registry import (
    TRANSFER_SOURCE,
    DefenseInfo,
    DefenseSpec,
    build_defense,
    checkpoint_files,
    defense_names,
    get_defense,
    register_defense,
)

__all__ = list(_registry.__all__)  # the registry's names, re-exported
