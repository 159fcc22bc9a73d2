"""StAdv: spatially transformed adversarial examples (Xiao et al. 2018, https://arxiv.org/abs/1801.02612),
the unseen threat model of the RDC evaluation (docs/paper.md section 7: bound 0.05, 100 iterations).

Instead of adding a perturbation, StAdv moves pixels: a flow field f (B, 2, H, W) gives every output pixel
p the location p + f(p) at which the input is read with bilinear interpolation,

    x_adv = grid_sample(x, G + f),   G the identity sampling grid.

Conventions (all documented choices):

- **Units.** The flow is in the normalised coordinates of ``torch.nn.functional.grid_sample``: the image
  spans [-1, 1] along each axis, so one unit is half the width (height). The bound is per pixel and per
  component (l_inf): |f| <= ``bound``. Bound 0.05 therefore moves a pixel by at most 0.05 * W / 2 pixels:
  0.2 pixels on 8x8 digits, 0.8 pixels on 32x32 CIFAR-10. This follows the reference evaluation, whose
  StAdv (perceptual-advex's StAdvAttack over mister_ed's full spatial flow: l_inf bound 0.05, 100
  iterations) adds the flow to a grid_sample identity grid, i.e. the same normalised units (read from the
  structure of that code, not checked numerically against it).
- **Channels.** f[:, 0] moves along the width (x), f[:, 1] along the height (y), grid_sample's order.
- **align_corners=False**: pixel centres sit at (2i + 1) / W - 1. For power-of-two sizes (8, 32, ...) the
  identity grid and its un-normalisation are exact in floating point, so the zero flow reproduces the input
  bit for bit; for other sizes up to ~1e-6.
- **Padding** ``'border'`` (default): reading outside the image repeats the edge pixel, so a flow never
  invents intensities; ``'zeros'`` and ``'reflection'`` are available.
- **Optimiser.** PGD on the flow (not the original L-BFGS with a smoothness penalty, nor the reference's
  Adam with a small smoothness term): f <- clip(f + step_size sign(dL/df), -bound, bound), from a uniform random
  flow in the box (or zero), step_size = 2.5 bound / steps; the image gradient comes from the attack context
  (so EOT, query counting and early stopping per example work as for every attack) and is chained through
  the warp. Bilinear sampling of images in [0, 1] is a convex combination, so x_adv stays in [0, 1].
- **Threat model bookkeeping.** ``norm`` is ``'flow'`` and ``eps`` the flow bound; there is no lp ball, and
  an lp distance of the result to x is not bounded by eps (``run_ensemble`` does not check lp budgets).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import FLOW, Attack, AttackContext, AttackResult, Model, step_size_or_default
from .losses import untargeted_loss

__all__ = ["PADDING_MODES", "StAdv", "StAdvResult", "flow_warp", "identity_grid"]

PADDING_MODES = ("border", "zeros", "reflection")

# Where run_with_flow collects the best flow of the call in progress (per call, never on the instance).
_FLOW_SINK: ContextVar[dict | None] = ContextVar("rdc_stadv_flow_sink", default=None)


def identity_grid(
    height: int, width: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """The identity sampling grid (H, W, 2) of grid_sample with align_corners=False: pixel centres (x, y)."""
    ys = (2 * torch.arange(height, device=device, dtype=dtype) + 1) / height - 1
    xs = (2 * torch.arange(width, device=device, dtype=dtype) + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def flow_warp(x: Tensor, flow: Tensor, *, padding_mode: str = "border") -> Tensor:
    """Warp images x (B, C, H, W) by ``flow`` (B, 2, H, W) in normalised grid units (see module docstring).

    Returns (B, C, H, W); differentiable in x and flow; the zero flow returns x (exactly for sizes that are
    powers of two).
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}; valid choices: {', '.join(PADDING_MODES)}")
    if x.ndim != 4 or flow.ndim != 4 or flow.shape != (x.shape[0], 2, *x.shape[2:]):
        raise ValueError(
            f"flow must have shape (B, 2, H, W) = ({x.shape[0]}, 2, {', '.join(map(str, x.shape[2:]))}) "
            f"for images of shape {tuple(x.shape)}, got {tuple(flow.shape)}"
        )
    grid = identity_grid(x.shape[2], x.shape[3], device=x.device, dtype=x.dtype) + flow.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


@dataclass
class StAdvResult:
    """An :class:`AttackResult` with the flow field that produced each returned image."""

    result: AttackResult
    flow: Tensor  # (B, 2, H, W), |flow| <= bound; zero where the input was returned unchanged


class StAdv(Attack):
    """StAdv: PGD on a per-pixel flow field with an l_inf bound in normalised grid units.

    Distance Measure : flow (|f| <= bound per pixel and component; see the module docstring)

    Arguments:
        model, budget keywords (steps = 100, restarts, eot, verify, seed, generator): see :class:`Attack`.
        bound: flow bound in normalised grid units ([-1, 1] spans the image), >= 0 and <= 2 (the budget's eps,
            its norm 'flow').
        step_size: step size on the flow (default 2.5 * bound / steps).
        loss: untargeted loss name ('ce', 'dlr', 'margin'; default 'ce').
        random_start: start from a uniform random flow in the box (else the zero flow).
        padding_mode: grid_sample padding outside the image ('border', 'zeros', 'reflection').

    Shape:
        - x: (B, C, H, W) in [0, 1]; y: (B,) int64.
        - output: (B, C, H, W) in [0, 1]: x warped by a flow with |flow| <= bound.

    Examples::
        >>> x_adv = StAdv(model, bound=0.05, steps=100, seed=0)(x, y)
        >>> res = StAdv(model, bound=0.05).run_with_flow(x, y)   # res.flow (B, 2, H, W)
    """

    default_steps = 100
    norms = (FLOW,)

    def __init__(
        self,
        model: Model,
        *,
        bound: float = 0.05,
        step_size: float | None = None,
        loss: str = "ce",
        random_start: bool = True,
        padding_mode: str = "border",
        **budget: Any,
    ):
        super().__init__(model, norm=FLOW, eps=bound, **budget)
        self.loss_name, self.loss_fn = untargeted_loss(loss, self.name)
        self.step_size = step_size_or_default(step_size, self.eps, self.steps)
        self.random_start = bool(random_start)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"unknown padding_mode {padding_mode!r}; valid choices: {', '.join(PADDING_MODES)}")
        self.padding_mode = padding_mode

    @property
    def bound(self) -> float:
        return self.eps

    @property
    def max_queries(self) -> int:
        return 1 + self.restarts * (self.steps * self.eot + 1)

    def run_with_flow(self, x: Tensor, y: Tensor) -> StAdvResult:
        """Like :meth:`run`, also returning the flow (B, 2, H, W) behind every returned image."""
        sink: dict = {}
        token = _FLOW_SINK.set(sink)
        try:
            result = self.run(x, y)
        finally:
            _FLOW_SINK.reset(token)
        flow = sink.get("flow")
        if flow is None:  # nothing was attacked (all misclassified, or bound 0)
            flow = x.new_zeros((x.shape[0], 2, *x.shape[2:]))
        return StAdvResult(result=result, flow=flow)

    def _warp(self, x: Tensor, flow: Tensor) -> Tensor:
        return flow_warp(x, flow, padding_mode=self.padding_mode).clamp(0.0, 1.0)

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        x = ctx.x
        best_flow = x.new_zeros((x.shape[0], 2, *x.shape[2:]))
        self._restarts(ctx, idx, lambda open_idx: self._one_run(ctx, open_idx, best_flow))
        sink = _FLOW_SINK.get()
        if sink is not None:
            sink["flow"] = best_flow

    @staticmethod
    def _track(ctx: AttackContext, idx: Tensor, x_adv: Tensor, flow: Tensor, best_flow: Tensor) -> None:
        """Remember the flow of every example whose recorded best point is now ``x_adv``."""
        hit = (ctx.x_best[idx] == x_adv.detach()).flatten(1).all(1)
        best_flow[idx[hit]] = flow.detach()[hit]

    def _one_run(self, ctx: AttackContext, idx: Tensor, best_flow: Tensor) -> None:
        x, b = ctx.x[idx], self.eps
        shape = (idx.numel(), 2, *x.shape[2:])
        flow = (2 * ctx.rand(*shape) - 1) * b if self.random_start else x.new_zeros(shape)
        for _ in range(self.steps):
            with torch.enable_grad():
                f = flow.detach().requires_grad_(True)
                x_adv = self._warp(x, f)
                _, g_img = ctx.loss_grad(idx, x_adv.detach(), self.loss_fn)
                (g_flow,) = torch.autograd.grad(x_adv, f, g_img)
            self._track(ctx, idx, x_adv, flow, best_flow)
            keep = ctx.open(idx)
            if not keep.any():
                return
            idx, x, flow, g_flow = idx[keep], x[keep], flow[keep], g_flow[keep]
            flow = (flow + self.step_size * g_flow.sign()).clamp(-b, b)
        x_adv = self._warp(x, flow)
        ctx.evaluate(idx, x_adv)
        self._track(ctx, idx, x_adv, flow, best_flow)

    def __repr__(self) -> str:
        return (
            f"{self.name}(bound={self.eps:g}, steps={self.steps}, restarts={self.restarts}, eot={self.eot}, "
            f"loss={self.loss_name!r}, padding_mode={self.padding_mode!r}, seed={self.seed})"
        )
