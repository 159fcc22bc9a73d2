"""EDM training loss (Karras et al. 2022, docs/paper.md section 2), unreduced.

ln sigma ~ N(P_mean, P_std^2); weight lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2;
loss = lambda(sigma) * (D(x + sigma eps; sigma, y) - x)^2 per element. Labels are dropped to the
null label with probability ``label_dropout`` so one network also learns p(x). For a multi-head
network every example trains its class head *and* the null head from the same pass.
"""

from __future__ import annotations

from typing import TypedDict, Unpack

import torch
from torch import Tensor

from ..models.base import Denoiser


class NoiseDraw(TypedDict, total=False):
    """How both losses draw the training noise: ``generator`` (None: the global stream) and the log-normal
    density ln sigma ~ N(P_mean, P_std^2) of the noise levels (defaults -1.2 and 1.2, EDM's; see ``_noisy``)."""

    generator: torch.Generator | None
    P_mean: float
    P_std: float


def edm_loss(
    denoiser: Denoiser,
    x: Tensor,  # (B, C, H, W) clean images in model space [-1, 1]
    labels: Tensor,  # (B,) int64 in [0, K)
    *,
    label_dropout: float = 0.1,  # probability of training on the null label (single-head)
    **noise: Unpack[NoiseDraw],
) -> Tensor:  # (B, C, H, W) weighted squared errors (multi-head: summed over the two heads)
    sigma, weight, x_noisy = _noisy(denoiser, x, **noise)
    if denoiser.heads == "multi":
        return _own_and_null_heads(denoiser, x, x_noisy, sigma, labels, weight)[1]
    drop = torch.rand(x.shape[0], device=x.device, generator=noise.get("generator")) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, denoiser.null_label), labels)
    return weight * (denoiser(x_noisy, sigma, labels) - x) ** 2


def edm_distill_loss(
    student: Denoiser,
    teacher: Denoiser,
    x: Tensor,  # (B, C, H, W) clean images in model space [-1, 1]
    labels: Tensor,  # (B,) int64 in [0, K)
    *,
    wrong_classes: int = 1,  # wrong classes per example matched to the teacher, in [1, K - 1]
    weight: float = 1.0,  # weight of the teacher term relative to the EDM terms
    **noise: Unpack[NoiseDraw],
) -> Tensor:  # (B, C, H, W) weighted squared errors summed over the trained heads
    """EDM loss of a multi-head student plus a match to a teacher on random *wrong* classes.

    The plain multi-head loss trains a head only on images of its own class (and the null head on
    all), so nothing teaches head k what to do with an image of another class. Here every example
    also trains ``wrong_classes`` random heads k != y towards the teacher's D_teacher(x_noisy; sigma, k)
    on the same noisy input (``wrong_classes`` teacher passes per example, no gradient through the
    teacher). Same sigma density and weight lambda(sigma) as ``edm_loss``.
    """
    if student.heads != "multi":
        raise ValueError(f"distillation trains a multi-head student, got heads={student.heads!r}")
    k = student.num_classes
    if teacher.num_classes != k:
        raise ValueError(f"teacher has {teacher.num_classes} classes, the student {k}")
    if not 1 <= wrong_classes <= k - 1:
        raise ValueError(f"wrong_classes must be in [1, {k - 1}], got {wrong_classes}")
    batch = x.shape[0]
    sigma, lam, x_noisy = _noisy(student, x, **noise)
    every, loss = _own_and_null_heads(student, x, x_noisy, sigma, labels, lam)
    idx = torch.arange(batch, device=x.device)
    # wrong classes without repetition: y + offset mod K, offsets a random subset of 1..K-1
    offsets = (
        torch.rand(batch, k - 1, device=x.device, generator=noise.get("generator")).argsort(dim=1)[:, :wrong_classes]
        + 1
    )
    for j in range(wrong_classes):
        wrong = (labels + offsets[:, j]) % k
        with torch.no_grad():
            target = teacher(x_noisy, sigma, wrong)
        loss = loss + weight * lam * (every[idx, wrong] - target) ** 2
    return loss


def _noisy(
    denoiser: Denoiser,
    x: Tensor,
    generator: torch.Generator | None = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
) -> tuple[Tensor, Tensor, Tensor]:
    """sigma (B,) with ln sigma ~ N(P_mean, P_std^2), the weight lambda(sigma) (B, 1, 1, 1) and the noisy images
    x + sigma eps (B, C, H, W); sigma is drawn from ``generator`` before eps."""
    rnd = torch.randn(x.shape[0], device=x.device, dtype=x.dtype, generator=generator)
    sigma = (rnd * P_std + P_mean).exp()
    sd = getattr(denoiser, "sigma_data", 0.5)
    weight = ((sigma**2 + sd**2) / (sigma * sd) ** 2).reshape(-1, 1, 1, 1)
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * sigma.reshape(-1, 1, 1, 1)
    return sigma, weight, x + noise


def _own_and_null_heads(
    denoiser: Denoiser, x: Tensor, x_noisy: Tensor, sigma: Tensor, labels: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor]:
    """A multi-head network's outputs (B, K + 1, C, H, W) of every head, and the weighted squared errors
    (B, C, H, W) of each example's class head plus the null head."""
    every = denoiser.denoise_all(x_noisy, sigma, classes=torch.arange(denoiser.num_classes + 1, device=x.device))
    idx = torch.arange(x.shape[0], device=x.device)
    return every, weight * ((every[idx, labels] - x) ** 2 + (every[:, -1] - x) ** 2)
