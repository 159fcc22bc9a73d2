"""Square Attack (Andriushchenko et al. 2020, https://arxiv.org/abs/1912.00049): score-based random search.

No gradients: each iteration proposes one change inside a random square window and keeps it if the margin
loss z_y - max_{i != y} z_i went down. The window side follows the fraction schedule p (share of pixels
changed), halved at fixed fractions of the query budget.

- l_inf (Algorithm 2): start from vertical stripes of +-eps; a proposal sets a random s x s window to
  x + eps * (random sign per channel).
- l2 (Algorithm 3): start from a grid of "meta pseudo-Gaussian" blocks scaled to norm eps; a proposal moves
  the perturbation mass of a second window into the first one, adding a new pseudo-Gaussian bump, and
  rescales the whole perturbation to norm eps.

Against a stochastic model (``eot`` > 1) every score is the margin of the logits averaged over ``eot`` draws
(the ensemble's score-based member for randomised defenses: EOT on scores, as the gradient attacks average
gradients).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import Attack, AttackContext, Model
from .losses import margin
from .projections import clip01, normalize, per_example_norm, project_ball

__all__ = ["Square", "p_schedule", "pseudo_gaussian", "meta_pseudo_gaussian"]

# (fraction of the budget reached, divisor of p_init) from the reference schedule for a 10000-query budget
_P_SCHEDULE = (
    (0.001, 1),
    (0.005, 2),
    (0.02, 4),
    (0.05, 8),
    (0.1, 16),
    (0.2, 32),
    (0.4, 64),
    (0.6, 128),
    (0.8, 256),
    (1.0, 512),
)


def p_schedule(p_init: float, it: int, n_queries: int) -> float:
    """Fraction of pixels to change at iteration ``it`` of ``n_queries``: p_init halved at fixed fractions."""
    frac = it / max(1, n_queries)
    for limit, divisor in _P_SCHEDULE:
        if frac <= limit:
            return p_init / divisor
    return p_init / _P_SCHEDULE[-1][1]


def pseudo_gaussian(rows: int, cols: int, *, device=None, dtype=torch.float32) -> Tensor:
    """(rows, cols) block of nested rectangles around the centre, ring r weighted 1/(r+1)^2, unit l2 norm."""
    i = torch.arange(rows, device=device, dtype=dtype)[:, None] - rows // 2
    j = torch.arange(cols, device=device, dtype=dtype)[None, :] - cols // 2
    ring = torch.maximum(i.abs(), j.abs())
    top = int(ring.max())
    weights = torch.tensor([1.0 / (r + 1) ** 2 for r in range(top + 1)], device=device, dtype=dtype)
    value = weights.flip(0).cumsum(0).flip(0)[ring.long()]  # sum over the rings that contain the pixel
    return value / value.norm()


def meta_pseudo_gaussian(s: int, transpose: bool, *, device=None, dtype=torch.float32) -> Tensor:
    """(s, s) block: +pseudo-Gaussian on the top half and - on the bottom half (optionally transposed)."""
    block = torch.zeros(s, s, device=device, dtype=dtype)
    half = s // 2
    if half:
        block[:half] = pseudo_gaussian(half, s, device=device, dtype=dtype)
    block[half:] = -pseudo_gaussian(s - half, s, device=device, dtype=dtype)
    block = block / block.norm()
    return block.t() if transpose else block


class Square(Attack):
    """Square Attack: score-based black-box attack with the margin loss, l_inf or l2.

    Distance Measure : Linf, L2

    Arguments:
        model, budget keywords (norm, eps, restarts, verify, seed, generator): see :class:`Attack`.
        steps: query budget per restart (iterations; default and the reference's 5000).
        p_init: initial fraction of pixels changed per proposal (0.8).
        eot: against a stochastic model, every score (margin) is the mean of the logits over ``eot`` draws in
            one batched forward, so a proposal is accepted on the averaged scores, not on one lucky draw (each
            iteration costs ``eot`` queries); 1 for a deterministic model.

    Shape:
        - x: (B, C, H, W) in [0, 1]; y: (B,) int64.
        - output: (B, C, H, W) in [0, 1], within the eps-ball.

    Examples::
        >>> x_adv = Square(model, norm="linf", eps=0.1, steps=1000, seed=0)(x, y)
    """

    default_steps = 5000

    def __init__(self, model: Model, *, p_init: float = 0.8, **budget: Any):
        super().__init__(model, **budget)
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
        self.p_init = float(p_init)

    @property
    def max_queries(self) -> int:
        return 1 + self.restarts * (self.steps + 1) * self.eot

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        with torch.no_grad():
            self._restarts(ctx, idx, lambda open_idx: self._one_run(ctx, open_idx))

    def _one_run(self, ctx: AttackContext, idx: Tensor) -> None:
        x = ctx.x[idx]
        x_cur = self._init_linf(ctx, x) if self.norm == "linf" else self._init_l2(ctx, x)
        m_cur = margin(ctx.evaluate(idx, x_cur, self.eot), ctx.y[idx])
        for it in range(self.steps):
            keep = ctx.open(idx)
            if not keep.any():
                return
            idx, x, x_cur, m_cur = idx[keep], x[keep], x_cur[keep], m_cur[keep]
            side = self._side(p_schedule(self.p_init, it, self.steps), x)
            propose = self._propose_linf if self.norm == "linf" else self._propose_l2
            x_new = propose(ctx, x, x_cur, side)
            m_new = margin(ctx.evaluate(idx, x_new, self.eot), ctx.y[idx])
            accept = m_new < m_cur
            x_cur = torch.where(accept[:, None, None, None], x_new, x_cur)
            m_cur = torch.where(accept, m_new, m_cur)
            ctx.history.append(float(m_cur.mean()))

    def _side(self, p: float, x: Tensor) -> int:
        """Window side s = round(sqrt(p * H * W)), clipped to [1, H - 1] (l_inf) or odd in [3, H] (l2)."""
        h = min(x.shape[-2], x.shape[-1])
        s = int(round(math.sqrt(p * x.shape[-2] * x.shape[-1])))
        if self.norm == "linf":
            return max(1, min(s, h - 1))
        s = max(s, 3)
        s = s + 1 if s % 2 == 0 else s
        return min(s, h)

    def _window(self, ctx: AttackContext, x: Tensor, s: int) -> tuple[slice, slice]:
        vh, vw = ctx.randint(x.shape[-2] - s + 1), ctx.randint(x.shape[-1] - s + 1)
        return slice(vh, vh + s), slice(vw, vw + s)

    # -- l_inf --
    def _init_linf(self, ctx: AttackContext, x: Tensor) -> Tensor:
        stripes = self.eps * ctx.signs(x.shape[0], x.shape[1], 1, x.shape[3])
        return clip01(x + stripes)

    def _propose_linf(self, ctx: AttackContext, x: Tensor, x_cur: Tensor, s: int) -> Tensor:
        rows, cols = self._window(ctx, x, s)
        x_new = x_cur.clone()
        todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(10):  # resample the signs where the window would not change at all
            signs = self.eps * ctx.signs(x.shape[0], x.shape[1], 1, 1)
            window = clip01(x[..., rows, cols] + signs)
            x_new[..., rows, cols] = torch.where(todo[:, None, None, None], window, x_new[..., rows, cols])
            todo = (x_new[..., rows, cols] == x_cur[..., rows, cols]).flatten(1).all(dim=1)
            if not todo.any():
                break
        return x_new

    # -- l2 --
    def _init_l2(self, ctx: AttackContext, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s = max(1, min(h, w) // 5)
        delta = torch.zeros_like(x)
        for top in range(0, h, s):
            for left in range(0, w, s):
                rows, cols = slice(top, min(top + s, h)), slice(left, min(left + s, w))
                bump = meta_pseudo_gaussian(s, False, device=x.device, dtype=x.dtype)[
                    : rows.stop - top, : cols.stop - left
                ]
                delta[..., rows, cols] = bump * ctx.signs(b, c, 1, 1)
        return clip01(x + self.eps * normalize(delta))

    def _propose_l2(self, ctx: AttackContext, x: Tensor, x_cur: Tensor, s: int) -> Tensor:
        b, c = x.shape[:2]
        delta = x_cur - x
        (r1, c1), (r2, c2) = self._window(ctx, x, s), self._window(ctx, x, s)
        union = torch.zeros_like(x[:1, :1])
        union[..., r1, c1] = 1.0
        union[..., r2, c2] = 1.0

        def chan_norm(t: Tensor) -> Tensor:  # l2 norm per (example, channel), shape (b, c, 1, 1)
            return t.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()

        old = delta[..., r1, c1]
        budget_left = (self.eps**2 - per_example_norm(delta, "l2") ** 2).clamp(min=0) / c
        target_norm = (budget_left + chan_norm(delta * union) ** 2).sqrt()
        bump = meta_pseudo_gaussian(s, ctx.rand(1).item() < 0.5, device=x.device, dtype=x.dtype)
        new = bump * ctx.signs(b, c, 1, 1) + old / (chan_norm(old) + 1e-12)
        new = new / (chan_norm(new) + 1e-12) * target_norm
        delta_new = delta.clone()
        delta_new[..., r2, c2] = 0.0
        delta_new[..., r1, c1] = new
        x_new = clip01(x + self.eps * normalize(delta_new))
        return project_ball(x_new, x, "l2", self.eps)
