"""EDM training loss (Karras et al. 2022, docs/paper.md section 2), unreduced.

ln sigma ~ N(P_mean, P_std^2); weight lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2;
loss = lambda(sigma) * (D(x + sigma eps; sigma, y) - x)^2 per element. Labels are dropped to the
null label with probability ``label_dropout`` so one network also learns p(x). For a multi-head
network every example trains its class head *and* the null head from the same pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.base import Denoiser


def edm_loss(
    denoiser: Denoiser,
    x: Tensor,                      # (B, C, H, W) clean images in model space [-1, 1]
    labels: Tensor,                 # (B,) int64 in [0, K)
    *,
    generator: torch.Generator | None = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    label_dropout: float = 0.1,     # probability of training on the null label (single-head)
) -> Tensor:                        # (B, C, H, W) weighted squared errors (multi-head: summed over the two heads)
    batch = x.shape[0]
    rnd = torch.randn(batch, device=x.device, dtype=x.dtype, generator=generator)
    sigma = (rnd * P_std + P_mean).exp()
    sd = getattr(denoiser, "sigma_data", 0.5)
    weight = ((sigma**2 + sd**2) / (sigma * sd) ** 2).reshape(-1, 1, 1, 1)
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator) * sigma.reshape(-1, 1, 1, 1)
    if denoiser.heads == "multi":
        every = denoiser.denoise_all(x + noise, sigma, classes=torch.arange(denoiser.num_classes + 1, device=x.device))
        idx = torch.arange(batch, device=x.device)
        cond, uncond = every[idx, labels], every[:, -1]
        return weight * ((cond - x) ** 2 + (uncond - x) ** 2)
    drop = torch.rand(batch, device=x.device, generator=generator) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, denoiser.null_label), labels)
    return weight * (denoiser(x + noise, sigma, labels) - x) ** 2
