"""A closed-form attack on nearest-neighbour-like classifiers (the optimal DC at small sigma; docs/paper.md
section 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.utils import check_images
from .base import Attack, AttackContext
from .projections import project_ball

__all__ = ["NeighbourAttack"]


class NeighbourAttack(Attack):
    """Closed-form attack on nearest-neighbour-like classifiers (the optimal DC at small sigma).

    Distance Measure : Linf, L2

    For each of the ``n_neighbours`` nearest training images x_j of another class it tries two steps of
    full budget: along x_j - x_s (x_s the nearest same-class training image other than x itself; the
    steepest direction for ||x' - x_s||^2 - ||x' - x_j||^2, the 1-NN margin) and along x_j - x (straight
    towards x_j), as sign(.) for l_inf and normalised for l2, projected onto the ball and [0, 1]. No
    gradients, 2 * n_neighbours queries per example; it stops at the first candidate that fools the model.

    Arguments:
        model, norm, eps, seed: see :class:`rdc_lib.attacks.Attack`.
        train_x: (N, C, H, W) training images in [0, 1]; train_y: (N,) labels.
        n_neighbours: other-class training images tried per example.

    Examples::
        >>> x_adv = NeighbourAttack(optimal_dc, x_tr, y_tr, norm="linf", eps=0.1)(x, y)
    """

    def __init__(
        self,
        model,
        train_x: Tensor,
        train_y: Tensor,
        *,
        norm: str = "linf",
        eps: float,
        n_neighbours: int = 8,
        seed: int | None = None,
    ):
        super().__init__(model, norm=norm, eps=eps, steps=max(1, n_neighbours), restarts=1, eot=1, seed=seed)
        check_images(train_x, name="train_x")
        if not isinstance(train_y, Tensor) or train_y.ndim != 1 or train_y.shape[0] != train_x.shape[0]:
            raise ValueError(f"train_y must be a ({train_x.shape[0]},) tensor of labels, one per training image")
        if isinstance(n_neighbours, bool) or not isinstance(n_neighbours, int) or n_neighbours < 1:
            raise ValueError(f"n_neighbours must be an int >= 1, got {n_neighbours!r}")
        self.train_x, self.train_y, self.n_neighbours = train_x.detach(), train_y.detach(), n_neighbours

    @property
    def max_queries(self) -> int:
        return 1 + 2 * self.n_neighbours

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        x, y = ctx.x[idx], ctx.y[idx]
        train_x = self.train_x.to(x.device, x.dtype)
        train_y = self.train_y.to(x.device)
        dist = torch.cdist(
            x.flatten(1).double(), train_x.flatten(1).double(), compute_mode="donot_use_mm_for_euclid_dist"
        )
        same = train_y[None, :] == y[:, None]
        same_dist = dist.masked_fill(~same | (dist == 0), float("inf"))  # x itself excluded
        x_same = train_x[same_dist.argmin(1)]
        m = min(self.n_neighbours, int((~same).sum(1).min()))
        others = dist.masked_fill(same, float("inf")).topk(m, dim=1, largest=False).indices  # (n, m)
        with torch.no_grad():
            for j in range(m):
                x_j = train_x[others[:, j]]
                for anchor in (x_same, x):
                    open_ = ctx.open(idx)
                    if not open_.any():
                        return
                    d = (x_j - anchor)[open_]
                    if self.norm == "linf":
                        step = d.sign()
                    else:
                        step = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
                    x_o = x[open_]
                    ctx.evaluate(idx[open_], project_ball(x_o + self.eps * step, x_o, self.norm, self.eps))
