"""PGD (Madry et al. 2018, https://arxiv.org/abs/1706.06083) with random start, restarts, any loss and EOT."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import Attack, AttackContext, Model, step_size_or_default
from .losses import untargeted_loss
from .projections import per_example_norm, project_ball, steepest_direction

__all__ = ["PGD", "random_start"]


def random_start(ctx: AttackContext, x: Tensor, norm: str, eps: float) -> Tensor:
    """A uniform random point of the ``norm`` ball of radius ``eps`` around ``x``, clipped to [0, 1]."""
    b = x.shape[0]
    if norm == "linf":
        delta = (2 * ctx.rand(*x.shape) - 1) * eps
    else:
        # uniform in the l2 ball: Gaussian direction, radius eps * U^(1/d)
        direction = ctx.randn(*x.shape)
        direction = direction / (per_example_norm(direction, "l2") + 1e-12)
        d = x[0].numel()
        radius = eps * ctx.rand(b).pow(1.0 / d).reshape(b, *([1] * (x.ndim - 1)))
        delta = direction * radius
    return project_ball(x + delta, x, norm, eps)


class PGD(Attack):
    """Projected gradient ascent on a per-example loss, keeping the most adversarial iterate per example.

    Distance Measure : Linf, L2

    Each of ``restarts`` runs starts at a random point of the ball (or at x with ``random_start=False``),
    takes ``steps`` steps x <- Proj(x + step_size * d(grad)) (d = sign for l_inf, g / ||g||_2 for l2) and
    evaluates the last iterate. Every iterate is checked: an example stops as soon as it is misclassified.

    Arguments:
        model, budget keywords (norm, eps, steps = 10, restarts, eot, verify, seed, generator): see :class:`Attack`.
        step_size: step size (default 2.5 * eps / steps, Madry et al.).
        loss: untargeted loss name ('ce', 'dlr', 'margin'; default 'ce').
        random_start: start from a uniform random point of the ball.

    Shape:
        - x: (B, C, H, W) in [0, 1]; y: (B,) int64.
        - output: (B, C, H, W) in [0, 1], within the eps-ball.

    Examples::
        >>> x_adv = PGD(model, norm="l2", eps=0.5, steps=50, restarts=2, seed=0)(x, y)
    """

    def __init__(
        self,
        model: Model,
        *,
        step_size: float | None = None,
        loss: str = "ce",
        random_start: bool = True,
        **budget: Any,
    ):
        super().__init__(model, **budget)
        self.loss_name, self.loss_fn = untargeted_loss(loss, self.name)
        self.step_size = step_size_or_default(step_size, self.eps, self.steps)
        self.random_start = bool(random_start)

    @property
    def max_queries(self) -> int:
        return 1 + self.restarts * (self.steps * self.eot + 1)

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        self._restarts(ctx, idx, lambda open_idx: self._one_run(ctx, open_idx))

    def _one_run(self, ctx: AttackContext, idx: Tensor) -> None:
        x = ctx.x[idx]
        x_adv = random_start(ctx, x, self.norm, self.eps) if self.random_start else x.clone()
        for _ in range(self.steps):
            _, grad = ctx.loss_grad(idx, x_adv, self.loss_fn)
            keep = ctx.open(idx)
            if not keep.any():
                return
            idx, x, x_adv, grad = idx[keep], x[keep], x_adv[keep], grad[keep]
            x_adv = project_ball(x_adv + self.step_size * steepest_direction(grad, self.norm), x, self.norm, self.eps)
        ctx.evaluate(idx, x_adv)
