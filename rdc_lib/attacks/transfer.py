"""Transfer PGD: full-length PGD on a source model (no early stopping), whose examples are verified on another."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..core.utils import check_images
from .base import eval_mode
from .losses import get_loss
from .projections import project_ball, steepest_direction

__all__ = ["transfer_pgd"]


def transfer_pgd(
    source: Callable[[Tensor], Tensor],  # model x -> logits used to craft the examples (CNN, surrogate)
    x: Tensor,  # (B, C, H, W) in [0, 1]
    y: Tensor,  # (B,) labels
    *,
    norm: str = "linf",
    eps: float,
    steps: int = 20,
    loss: str = "margin",  # any name of rdc_lib.attacks.LOSSES that is untargeted
) -> Tensor:  # (B, C, H, W) in [0, 1] inside the eps-ball
    """PGD on ``source`` from x for all ``steps`` (no early stopping, so examples go past the source's
    decision boundary and transfer better); step size 2.5 eps / steps; deterministic."""
    check_images(x)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    loss_fn = get_loss(loss)
    step_size = 2.5 * eps / steps
    x_adv = x.detach().clone()
    y = y.to(x.device)
    with eval_mode(source):
        for _ in range(steps):
            with torch.enable_grad():
                xg = x_adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(loss_fn(source(xg), y, None).sum(), xg)
            x_adv = project_ball(x_adv.detach() + step_size * steepest_direction(grad, norm), x, norm, eps)
    return x_adv.detach()
