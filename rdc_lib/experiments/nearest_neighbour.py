"""The 1-nearest-neighbour (l2) rule the optimal diffusion classifier approaches at small noise levels
(docs/paper.md section 6): its prediction, its agreement with a classifier, and a certified lower bound on
its robust radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.utils import check_images

__all__ = ["NNAgreement", "nearest_neighbour_agreement", "nearest_neighbour_predict", "nn_certified_radius"]


@dataclass(frozen=True)
class NNAgreement:
    """Agreement between a classifier's argmax and the 1-nearest-neighbour (l2) prediction."""

    agreement: float  # fraction of images where both predictions are equal
    dc_pred: Tensor  # (B,) argmax of the logits
    nn_pred: Tensor  # (B,) label of the nearest training image

    def to_dict(self) -> dict[str, object]:
        return {"agreement": self.agreement, "dc_pred": self.dc_pred.tolist(), "nn_pred": self.nn_pred.tolist()}


def nearest_neighbour_predict(
    x: Tensor,  # (B, C, H, W) images in [0, 1]
    train_x: Tensor,  # (N, C, H, W) training images in [0, 1]
    train_y: Tensor,  # (N,) labels
    *,
    exclude_exact: bool = False,  # ignore training images identical to x (leave-one-out on training images)
) -> Tensor:  # (B,) label of the nearest training image (l2)
    """1-NN rule in l2 (distances computed in float64 so ties are rare and reproducible)."""
    check_images(x, name="x")
    check_images(train_x, name="train_x")
    if tuple(x.shape[1:]) != tuple(train_x.shape[1:]):
        raise ValueError(f"x has image shape {tuple(x.shape[1:])} but train_x has {tuple(train_x.shape[1:])}")
    if not isinstance(train_y, Tensor) or train_y.ndim != 1 or train_y.shape[0] != train_x.shape[0]:
        got = tuple(train_y.shape) if isinstance(train_y, Tensor) else type(train_y).__name__
        raise ValueError(f"train_y must have shape ({train_x.shape[0]},), one label per training image, got {got}")
    a = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    b = train_x.detach().reshape(train_x.shape[0], -1).to(a.device, torch.float64)
    dist = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    if exclude_exact:
        dist = dist.masked_fill(dist == 0, float("inf"))
    return train_y.to(a.device)[dist.argmin(1)]


def nearest_neighbour_agreement(
    dc_logits: Tensor,  # (B, K) logits of a classifier on x
    x: Tensor,  # (B, C, H, W) the classified images in [0, 1]
    train_x: Tensor,  # (N, C, H, W)
    train_y: Tensor,  # (N,)
    *,
    exclude_exact: bool = False,
) -> NNAgreement:
    """How often argmax(dc_logits) equals the 1-NN (l2) prediction on the same images."""
    if dc_logits.ndim != 2 or dc_logits.shape[0] != x.shape[0]:
        raise ValueError(f"dc_logits must have shape (B={x.shape[0]}, K), got {tuple(dc_logits.shape)}")
    nn_pred = nearest_neighbour_predict(x, train_x, train_y, exclude_exact=exclude_exact).cpu()
    dc_pred = dc_logits.detach().argmax(1).cpu()
    return NNAgreement(agreement=float((dc_pred == nn_pred).double().mean()), dc_pred=dc_pred, nn_pred=nn_pred)


def nn_certified_radius(
    x: Tensor,  # (B, C, H, W) images in [0, 1]
    y: Tensor,  # (B,) their labels
    train_x: Tensor,  # (N, C, H, W) training images in [0, 1]
    train_y: Tensor,  # (N,)
    norm: str = "l2",  # threat model: 'l2' or 'linf'
) -> Tensor:  # (B,) float64 radius (0 where the 1-NN rule is wrong)
    """A certified lower bound on the 1-NN rule's robust radius around each x, in ``norm``.

    With x_s the nearest class-y training image (x itself if it is one), class y beats another class's
    image x_j as long as the point stays on x_s's side of their bisector hyperplane, whose distance is
    (||x - x_j||^2 - ||x - x_s||^2) / (2 ||x_j - x_s||_q) (q = 2 for l2, q = 1 for l_inf, the dual norm).
    The minimum over every other-class x_j certifies the 1-NN decision (x_s alone already wins); the
    [0, 1] box and the other class-y images can only make the true radius larger.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"unknown norm {norm!r}; valid choices: l2, linf")
    check_images(x, name="x")
    check_images(train_x, name="train_x")
    a = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    b = train_x.detach().reshape(train_x.shape[0], -1).to(a.device, torch.float64)
    ty, y = train_y.to(a.device), y.to(a.device)
    d2 = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2)  # (B, N)
    same = ty[None, :] == y[:, None]
    s_idx = d2.masked_fill(~same, float("inf")).argmin(1)  # (B,)
    d_same = d2.gather(1, s_idx[:, None])  # (B, 1)
    diff = b[None, :, :] - b[s_idx][:, None, :]  # (B, N, D)
    dual = diff.norm(p=2 if norm == "l2" else 1, dim=-1).clamp_min(1e-12)
    radius = ((d2 - d_same) / (2 * dual)).masked_fill(same, float("inf")).amin(1)
    return radius.clamp_min(0.0).cpu()
