"""Selective EOT: aggregate the EOT draws of a randomised defense by how close each draw is to failing.

Inspired by DiffHammer (Wang et al., "DiffHammer: Rethinking the Robustness of Diffusion-Based Adversarial
Purification", NeurIPS 2024), which observes that plain EOT averages the gradient over every realisation of
the defense's randomness, while the attacker only needs the realisations that *share a vulnerability*, and
attacks those selectively. This module implements its own, simpler rule (not DiffHammer's EM procedure):

Rule (per example, M = ``eot`` draws of the defense's randomness at the current point, losses L_1..L_M,
input gradients g_1..g_M, all from one batched forward/backward as in plain EOT):

1. if ``top_k`` is set, keep only the k draws with the highest loss (the others get weight 0);
2. weights w_d = softmax_d(L_d / T) over the kept draws, T = ``temperature`` (T = inf: uniform);
3. the gradient is sum_d w_d g_d and the objective is the soft maximum T (logsumexp_d(L_d / T) - log k);
   the gradient is the exact gradient of this objective (d/dx T logsumexp(L/T) = sum_d softmax_d(L/T) dL_d/dx);
4. the point is recorded (best point, success, early stopping) with the weighted logits sum_d w_d z_d.

T is in units of the loss and only matters relative to the spread of the per-draw losses: on the digits RDC
(nearly flat logits) the CE differs between draws by ~0.01, so T = 1 is practically plain EOT there and
T ~ 0.01, or the scale-free ``top_k``, is what makes the rule selective.

T -> inf (with no top_k) gives plain EOT (uniform weights, mean loss, mean logits); T -> 0 attacks only the
draw that is closest to failure. With the CE loss and T = 1 the weights are w_d ~ 1 / p_d(y): draws that give
the true class the lowest probability dominate. With M = 1 every rule reduces to plain PGD.

The draws are the EOT copies of the batch, so the defense must draw independent randomness per row (an RDC
or DC with ``noise_mode='stochastic'``); with ``noise_mode='fixed'`` all M copies coincide and every rule
gives plain PGD.

The uniform cases (``aggregation='mean'``, T = inf without top_k, M = 1) are delegated to the shared
:meth:`AttackContext.loss_grad`, so they reproduce plain EOT bit for bit. In the selective case, early stopping
means that the *weighted* logits are misclassified (close to "some of the M draws fail"); the ensemble's verification
forward (one fresh draw) and an N-evaluation (``n_eval`` in rdc_lib.evaluation) remain the judges of robustness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .apgd import APGD
from .base import AttackContext, Model
from .losses import LossFn
from .pgd import PGD

__all__ = [
    "EOT_AGGREGATIONS",
    "ContextView",
    "EOTAggregate",
    "SelectiveEOTAPGD",
    "SelectiveEOTPGD",
    "SelectiveEOTContext",
    "aggregate_eot",
]

EOT_AGGREGATIONS = ("mean", "selective")


class ContextView:
    """An :class:`AttackContext` seen through a view that replaces ``loss_grad`` (the attack objective).

    Every other attribute and method is the wrapped context's own, so queries, best points and early
    stopping are shared with it (the attack result is read from the wrapped context).
    """

    def __init__(self, base: AttackContext):
        self.base = base

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found on the view itself
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def loss_grad(
        self, idx: Tensor, x_cand: Tensor, loss_fn: LossFn, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.base.loss_grad(idx, x_cand, loss_fn, target)


@dataclass
class EOTAggregate:
    """Aggregated EOT draws of n examples (M draws each)."""

    objective: Tensor  # (n,) soft maximum of the per-draw losses (the mean for uniform weights)
    grad: Tensor  # (n, C, H, W) sum_d w_d g_d
    weights: Tensor  # (M, n) w_d per example, summing to 1 over the draws


def _check_aggregation(aggregation: str, temperature: float, top_k: int | None) -> None:
    if aggregation not in EOT_AGGREGATIONS:
        raise ValueError(f"unknown EOT aggregation {aggregation!r}; valid choices: {', '.join(EOT_AGGREGATIONS)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0 (math.inf for uniform weights), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1 (draws kept per example), got {top_k!r}")


def aggregate_eot(
    losses: Tensor, grads: Tensor, *, aggregation: str = "selective", temperature: float = 1.0, top_k: int | None = None
) -> EOTAggregate:
    """Aggregate M EOT draws: losses (M, n) and gradients (M, n, ...) -> :class:`EOTAggregate`.

    'mean': uniform weights (plain EOT). 'selective': the rule of the module docstring (top-k, then
    softmax(L / temperature)). ``top_k`` larger than M keeps every draw.
    """
    _check_aggregation(aggregation, temperature, top_k)
    if losses.ndim != 2 or grads.shape[:2] != losses.shape:
        raise ValueError(
            f"expected losses (M, n) and grads (M, n, ...), got {tuple(losses.shape)} and {tuple(grads.shape)}"
        )
    m = losses.shape[0]
    losses = losses.detach()
    keep = torch.ones_like(losses, dtype=torch.bool)
    if aggregation == "selective" and top_k is not None and top_k < m:
        top = losses.topk(top_k, dim=0).indices  # (k, n)
        keep = torch.zeros_like(keep).scatter(0, top, True)
    kept = keep.sum(0).to(losses.dtype)  # (n,)
    if aggregation == "mean" or math.isinf(temperature):
        weights = keep.to(losses.dtype) / kept
        objective = (weights * losses).sum(0)
    else:
        weights = (losses / temperature).masked_fill(~keep, -math.inf).softmax(dim=0)
        # T log mean_kept exp(L / T), written as l_max + T log1p(mean expm1(z)), z = (L - l_max) / T <= 0:
        # exact in the limit T -> inf (mean loss) where the plain logsumexp form cancels catastrophically
        l_max = losses.masked_fill(~keep, -math.inf).amax(dim=0)
        z = ((losses - l_max) / temperature).masked_fill(~keep, 0.0)
        objective = l_max + temperature * torch.log1p(torch.expm1(z).sum(dim=0) / kept)
    w = weights.reshape(*weights.shape, *([1] * (grads.ndim - 2)))
    return EOTAggregate(objective=objective, grad=(w * grads).sum(0), weights=weights)


class SelectiveEOTContext(ContextView):
    """A context whose ``loss_grad`` aggregates the EOT draws with :func:`aggregate_eot`."""

    def __init__(self, base: AttackContext, *, aggregation: str, temperature: float, top_k: int | None):
        super().__init__(base)
        _check_aggregation(aggregation, temperature, top_k)
        self.aggregation = aggregation
        self.temperature = float(temperature)
        self.top_k = top_k

    def _uniform(self) -> bool:
        m = self.base.eot
        return (
            self.aggregation == "mean"
            or m == 1
            or (math.isinf(self.temperature) and (self.top_k is None or self.top_k >= m))
        )

    def loss_grad(
        self, idx: Tensor, x_cand: Tensor, loss_fn: LossFn, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Objective (n,) and gradient (n, C, H, W) of the selective rule over ``eot`` batched draws."""
        if self._uniform():
            return self.base.loss_grad(idx, x_cand, loss_fn, target)
        ctx, n, m = self.base, x_cand.shape[0], self.base.eot
        logits, losses, grad = ctx.eot_draws(idx, x_cand, loss_fn, target)
        agg = aggregate_eot(
            losses.detach().reshape(m, n),
            grad.reshape(m, n, *x_cand.shape[1:]),
            aggregation="selective",
            temperature=self.temperature,
            top_k=self.top_k,
        )
        draws = logits.detach().reshape(m, n, -1)
        ctx.observe(idx, x_cand, (agg.weights[..., None] * draws).sum(0))
        ctx.history.append(float(agg.objective.mean()))
        return agg.objective, agg.grad


class _SelectiveEOT:
    """Mixin over PGD or APGD: the attack runs on a :class:`SelectiveEOTContext` of the call's context."""

    def __init__(
        self,
        model: Model,
        *,
        aggregation: str = "selective",
        temperature: float = 1.0,
        top_k: int | None = None,
        **attack_kwargs: Any,
    ):
        super().__init__(model, **attack_kwargs)  # type: ignore[call-arg]  # the PGD or APGD of the class
        _check_aggregation(aggregation, temperature, top_k)
        self.aggregation, self.temperature, self.top_k = aggregation, float(temperature), top_k

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        view = SelectiveEOTContext(ctx, aggregation=self.aggregation, temperature=self.temperature, top_k=self.top_k)
        super()._perturb(view, idx)  # type: ignore[misc]  # a view quacks like an AttackContext

    def _repr_extra(self) -> str:
        return f", aggregation={self.aggregation!r}, temperature={self.temperature:g}, top_k={self.top_k}"


class SelectiveEOTPGD(_SelectiveEOT, PGD):
    """PGD whose EOT gradient weights the draws of the defense's randomness (selective EOT, see module doc).

    Distance Measure : Linf, L2

    Arguments, besides those of :class:`PGD` (the budget's ``eot`` is M, the number of draws per gradient;
    selective EOT needs M > 1 to differ from PGD):
        aggregation: 'selective' (default) or 'mean' (plain EOT, identical to :class:`PGD`).
        temperature: T of the softmax over the draws' losses (> 0, in loss units: compare it with the spread of
            the losses across draws; ``math.inf`` = uniform weights).
        top_k: keep only the k highest-loss draws per example (None: all draws).

    Shape:
        - x: (B, C, H, W) in [0, 1]; y: (B,) int64.
        - output: (B, C, H, W) in [0, 1], within the eps-ball.

    Examples::
        >>> x_adv = SelectiveEOTPGD(rdc, eps=0.1, steps=20, eot=8, temperature=1.0, seed=0)(x, y)
    """


class SelectiveEOTAPGD(_SelectiveEOT, APGD):
    """APGD (Croce & Hein 2020) with the selective EOT rule; arguments as :class:`APGD` plus
    ``aggregation``, ``temperature`` and ``top_k`` (see :class:`SelectiveEOTPGD`).

    APGD's step-size control then follows the soft-maximum objective of the draws.

    Examples::
        >>> x_adv = SelectiveEOTAPGD(rdc, eps=0.1, steps=50, eot=8, loss="dlr", seed=0)(x, y)
    """

    @property
    def name(self) -> str:
        return f"SelectiveEOT-{super().name}"
