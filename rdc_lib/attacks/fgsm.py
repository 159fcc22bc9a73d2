"""FGSM (Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572): one full-size steepest ascent step."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import Attack, AttackContext, Model
from .losses import untargeted_loss
from .projections import project_ball, steepest_direction

__all__ = ["FGSM"]


class FGSM(Attack):
    """x_adv = Proj(x + eps * d(grad)), d = sign for l_inf and g / ||g||_2 for l2.

    Distance Measure : Linf, L2

    Arguments:
        model, budget keywords (norm, eps, eot, verify, seed, generator): see :class:`Attack` (``steps`` and
            ``restarts`` are 1).
        loss: an untargeted loss name from :data:`~rdc_lib.attacks.losses.LOSSES` (default 'ce').

    Shape:
        - x: (B, C, H, W) in [0, 1]; y: (B,) int64.
        - output: (B, C, H, W) in [0, 1], within the eps-ball.

    Examples::
        >>> x_adv = FGSM(model, norm="linf", eps=0.1)(x, y)
    """

    def __init__(self, model: Model, *, loss: str = "ce", **budget: Any):
        super().__init__(model, steps=1, restarts=1, **budget)
        self.loss_name, self.loss_fn = untargeted_loss(loss, self.name)

    @property
    def max_queries(self) -> int:
        return 1 + self.eot + 1

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        x = ctx.x[idx]
        _, grad = ctx.loss_grad(idx, x, self.loss_fn)
        keep = ctx.open(idx)
        if keep.any():
            x, grad, idx = x[keep], grad[keep], idx[keep]
            ctx.evaluate(idx, project_ball(x + self.eps * steepest_direction(grad, self.norm), x, self.norm, self.eps))
