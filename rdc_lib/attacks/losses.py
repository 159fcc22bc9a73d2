"""Per-example attack objectives (higher = more adversarial), all (B, K) logits -> (B,).

Every loss has the signature ``loss(logits, y, target=None)``; the untargeted losses ignore ``target``,
the targeted ones require it.

- ``ce``: cross-entropy of the true class.
- ``dlr``: Difference of Logits Ratio (Croce & Hein 2020, eq. 5), shift and scale invariant:
  -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), pi = logits sorted in decreasing order (needs K >= 3).
- ``margin``: CW-style margin loss max_{i != y} z_i - z_y (> 0 iff misclassified).
- ``ce-targeted``: -CE(logits, target), pushes towards ``target``.
- ``dlr-targeted``: targeted DLR (Croce & Hein 2020, eq. 6):
  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) (needs K >= 4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from .projections import _TINY

__all__ = [
    "LOSSES",
    "TARGETED_LOSSES",
    "LossFn",
    "ce_loss",
    "dlr_loss",
    "margin",
    "margin_loss",
    "targeted_ce_loss",
    "targeted_dlr_loss",
    "get_loss",
    "is_targeted",
    "untargeted_loss",
]

LossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def _check(logits: Tensor, y: Tensor, min_classes: int, name: str) -> None:
    if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: expected logits (B, K) and labels (B,), got {tuple(logits.shape)} and {tuple(y.shape)}"
        )
    if logits.shape[1] < min_classes:
        raise ValueError(f"{name} needs at least {min_classes} classes, got logits with K = {logits.shape[1]}")


def _need_target(target: Tensor | None, y: Tensor, name: str) -> Tensor:
    if target is None:
        raise ValueError(f"{name} is a targeted loss: pass target (B,) class indices")
    if target.shape != y.shape:
        raise ValueError(f"{name}: target must have shape {tuple(y.shape)}, got {tuple(target.shape)}")
    return target


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{i != y} z_i per example (B,): negative iff some other class scores higher."""
    _check(logits, y, 2, "margin")
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.amax(dim=1)


def ce_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Cross-entropy of the true class, (B,)."""
    _check(logits, y, 2, "ce")
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """CW-style margin loss max_{i != y} z_i - z_y, (B,)."""
    return -margin(logits, y)


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Untargeted DLR loss (Croce & Hein 2020), (B,)."""
    _check(logits, y, 3, "dlr")
    z_sorted = logits.sort(dim=1, descending=True).values
    return -margin(logits, y) / (z_sorted[:, 0] - z_sorted[:, 2] + _TINY)


def targeted_ce_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """-CE(logits, target), (B,): maximising it raises the target class."""
    _check(logits, y, 2, "ce-targeted")
    target = _need_target(target, y, "ce-targeted")
    return -F.cross_entropy(logits, target, reduction="none")


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Targeted DLR loss (Croce & Hein 2020), (B,)."""
    _check(logits, y, 4, "dlr-targeted")
    target = _need_target(target, y, "dlr-targeted")
    z_sorted = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    scale = z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + _TINY
    return -(z_y - z_t) / scale


LOSSES: dict[str, LossFn] = {
    "ce": ce_loss,
    "dlr": dlr_loss,
    "margin": margin_loss,
    "ce-targeted": targeted_ce_loss,
    "dlr-targeted": targeted_dlr_loss,
}
TARGETED_LOSSES = ("ce-targeted", "dlr-targeted")


def get_loss(name: str) -> LossFn:
    """The loss function called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(LOSSES)}")
    return LOSSES[name]


def is_targeted(name: str) -> bool:
    """Whether loss ``name`` needs a target class."""
    get_loss(name)
    return name in TARGETED_LOSSES


def untargeted_loss(name: str, attack: str) -> tuple[str, LossFn]:
    """(``name``, its loss function) for an untargeted attack; ValueError for an unknown or a targeted loss."""
    if is_targeted(name):
        raise ValueError(f"{attack} is untargeted; loss {name!r} needs a target (use APGD with targeted=True)")
    return name, get_loss(name)
