"""APGD and APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", https://arxiv.org/abs/2003.01690), l_inf and l2.

Algorithm 1 of the paper, per example:

- z = P(x_k + eta * d(grad)),  x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})), momentum a = 0.75
  (no momentum on the first step); P projects onto the ball intersected with [0, 1].
- step size eta starts at 2 eps and is halved at checkpoints w_j = ceil(p_j N),
  p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), when either
  (1) the loss increased in fewer than rho (w_j - w_{j-1}) of the steps since w_{j-1} (rho = 0.75), or
  (2) eta was not reduced at w_{j-1} and the best loss has not changed since w_{j-1};
  on a reduction the iterate restarts from the best point found so far.

APGD-T runs the targeted DLR loss (eq. 6) once per target, the targets being the ``n_target_classes``
highest-scoring wrong classes on the clean input (target rule 'top-k'), each on the examples still robust.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import Attack, AttackContext, Model
from .losses import get_loss
from .projections import per_example_norm, project_ball, steepest_direction

__all__ = ["APGD", "APGD_LOSSES", "TARGET_RULES", "apgd_checkpoints"]

APGD_LOSSES = ("ce", "dlr")
TARGET_RULES = ("top-k",)


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations w_j = ceil(p_j * steps), j >= 1, at which the step-size conditions are checked."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = {math.ceil(round(pj * steps, 9)) for pj in p[1:]}
    return sorted(w for w in marks if 1 <= w <= steps)


class APGD(Attack):
    """Auto-PGD: step-size-free PGD with momentum (Croce & Hein 2020), untargeted or targeted.

    Distance Measure : Linf, L2

    Arguments:
        model, budget keywords (norm, eps, steps = 100, restarts, eot, verify, seed, generator): see :class:`Attack`.
        loss: 'ce' or 'dlr' (with ``targeted=True``: targeted CE or targeted DLR, APGD-T uses 'dlr').
        targeted: run one targeted attack per target class; needs ``target_rule``.
        target_rule: how targets are chosen; 'top-k': the ``n_target_classes`` highest wrong clean logits.
        n_target_classes: number of targets for 'top-k' (at most K - 1).
        rho: threshold of the oscillation condition (0.75).
        momentum: the weight a of the new step (0.75).

    Shape:
        - x: (B, C, H, W) in [0, 1]; y: (B,) int64.
        - output: (B, C, H, W) in [0, 1], within the eps-ball.

    Examples::
        >>> x_adv = APGD(model, norm="linf", eps=8 / 255, steps=100, loss="ce")(x, y)
        >>> apgd_t = APGD(model, norm="l2", eps=0.5, loss="dlr", targeted=True, target_rule="top-k")
    """

    default_steps = 100

    def __init__(
        self,
        model: Model,
        *,
        loss: str = "ce",
        targeted: bool = False,
        target_rule: str | None = None,
        n_target_classes: int = 9,
        rho: float = 0.75,
        momentum: float = 0.75,
        **budget: Any,
    ):
        super().__init__(model, **budget)
        if loss not in APGD_LOSSES:
            raise ValueError(f"unknown APGD loss {loss!r}; valid choices: {', '.join(APGD_LOSSES)}")
        if targeted and target_rule is None:
            raise ValueError(f"targeted APGD needs a target_rule; valid choices: {', '.join(TARGET_RULES)}")
        if target_rule is not None and target_rule not in TARGET_RULES:
            raise ValueError(f"unknown target_rule {target_rule!r}; valid choices: {', '.join(TARGET_RULES)}")
        if target_rule is not None and not targeted:
            raise ValueError("target_rule is only used by targeted APGD; pass targeted=True or target_rule=None")
        if isinstance(n_target_classes, bool) or not isinstance(n_target_classes, int) or n_target_classes < 1:
            raise ValueError(f"n_target_classes must be an int >= 1, got {n_target_classes!r}")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise ValueError(f"rho and momentum must be in (0, 1], got rho={rho}, momentum={momentum}")
        self.loss_name = loss
        self.targeted = bool(targeted)
        self.target_rule = target_rule
        self.n_target_classes = n_target_classes
        self.loss_fn = get_loss(f"{loss}-targeted" if targeted else loss)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.checkpoints = apgd_checkpoints(self.steps)

    @property
    def name(self) -> str:
        return f"APGD-T-{self.loss_name.upper()}" if self.targeted else f"APGD-{self.loss_name.upper()}"

    @property
    def max_queries(self) -> int:
        runs = self.restarts * (self.n_target_classes if self.targeted else 1)
        return 1 + runs * (self.steps + 1) * self.eot

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        if not self.targeted:
            self._restarts(ctx, idx, lambda open_idx: self._one_run(ctx, open_idx, None))
            return
        assert ctx.clean_logits is not None
        k = ctx.clean_logits.shape[1]
        if self.n_target_classes > k - 1:
            raise ValueError(f"n_target_classes = {self.n_target_classes} but the model has only {k - 1} wrong classes")
        wrong = ctx.clean_logits.scatter(1, ctx.y[:, None], float("-inf"))
        ranked = wrong.argsort(dim=1, descending=True)  # (B, K): best wrong class first
        for rank in range(self.n_target_classes):
            if not self._restarts(ctx, idx, lambda open_idx, r=rank: self._one_run(ctx, open_idx, ranked[open_idx, r])):
                return

    def _init_point(self, ctx: AttackContext, x: Tensor) -> Tensor:
        """Random point on the sphere of the ball (as in the reference implementation), clipped to [0, 1]."""
        if self.norm == "linf":
            t = 2 * ctx.rand(*x.shape) - 1
            delta = self.eps * t / (per_example_norm(t, "linf") + 1e-12)
        else:
            t = ctx.randn(*x.shape)
            delta = self.eps * t / (per_example_norm(t, "l2") + 1e-12)
        return project_ball(x + delta, x, self.norm, self.eps)

    def _one_run(self, ctx: AttackContext, idx: Tensor, target: Tensor | None) -> None:
        norm, eps, a = self.norm, self.eps, self.momentum
        x = ctx.x[idx]
        x_adv = self._init_point(ctx, x)
        loss, grad = ctx.loss_grad(idx, x_adv, self.loss_fn, target)
        n = idx.numel()
        s: dict[str, Tensor] = {
            "idx": idx,
            "x": x,
            "x_adv": x_adv,
            "x_prev": x_adv,
            "grad": grad,
            "x_max": x_adv,
            "grad_max": grad,
            "best": loss,
            "loss_prev": loss,
            "eta": torch.full((n, 1, 1, 1), 2 * eps, device=x.device, dtype=x.dtype),
            "count": torch.zeros(n, device=x.device, dtype=x.dtype),
        }
        if target is not None:
            s["target"] = target
        s["eta_ckpt"], s["best_ckpt"] = s["eta"].clone(), s["best"].clone()
        marks, last_mark = set(self.checkpoints), 0
        for k in range(self.steps):
            keep = ctx.open(s["idx"])
            if not keep.any():
                return
            if not keep.all():
                s = {key: value[keep] for key, value in s.items()}
            x, x_adv = s["x"], s["x_adv"]
            z = project_ball(x_adv + s["eta"] * steepest_direction(s["grad"], norm), x, norm, eps)
            if k > 0:
                z = project_ball(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - s["x_prev"]), x, norm, eps)
            s["x_prev"], s["x_adv"] = x_adv, z
            loss, s["grad"] = ctx.loss_grad(s["idx"], z, self.loss_fn, s.get("target"))
            s["count"] = s["count"] + (loss > s["loss_prev"]).to(x.dtype)
            s["loss_prev"] = loss
            better = loss > s["best"]
            b4 = better[:, None, None, None]
            s["x_max"] = torch.where(b4, z, s["x_max"])
            s["grad_max"] = torch.where(b4, s["grad"], s["grad_max"])
            s["best"] = torch.where(better, loss, s["best"])
            if k + 1 in marks:
                period, last_mark = k + 1 - last_mark, k + 1
                self._checkpoint(s, period)

    def _checkpoint(self, s: dict[str, Tensor], period: int) -> None:
        """Halve eta where condition (1) or (2) holds and restart those examples from their best point."""
        oscillating = s["count"] < self.rho * period
        stalled = (s["eta_ckpt"].flatten() == s["eta"].flatten()) & (s["best_ckpt"] == s["best"])
        reduce = oscillating | stalled
        r4 = reduce[:, None, None, None]
        s["eta"] = torch.where(r4, s["eta"] / 2, s["eta"])
        s["x_adv"] = torch.where(r4, s["x_max"], s["x_adv"])
        s["x_prev"] = torch.where(r4, s["x_max"], s["x_prev"])
        s["grad"] = torch.where(r4, s["grad_max"], s["grad"])
        s["loss_prev"] = torch.where(reduce, s["best"], s["loss_prev"])
        s["count"] = torch.zeros_like(s["count"])
        s["eta_ckpt"], s["best_ckpt"] = s["eta"].clone(), s["best"].clone()
