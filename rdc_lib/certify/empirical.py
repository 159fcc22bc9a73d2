"""The smoothed classifier under attack: the empirical upper bound that a certificate must not exceed.

``SoftSmoothed`` is the differentiable surrogate of g (Salman et al. 2019): log of the mean softmax of
the base classifier over ``draws`` Gaussian draws x + sigma * delta. An l2 attack (PGD / APGD from
``rdc_lib.attacks``, with EOT over calls, i.e. through the smoothing noise) maximises its loss within
radius r; the adversarial image counts as broken when the Monte-Carlo prediction of g (majority of
``pred_draws`` base calls, ``sample_counts``) differs from the label.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attacks import build_attack
from ..core.utils import OwnedRandomness, check_images
from .smoothing import check_sigma, sample_counts


class SoftSmoothed(OwnedRandomness, nn.Module):
    """x (B, C, H, W) in [0, 1] -> log E_delta softmax f(x + sigma delta), (B, K); ``draws`` deltas per call."""

    def __init__(self, base: nn.Module, sigma: float, *, draws: int = 8, seed: int = 0):
        super().__init__()
        if not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be an int >= 1, got {draws!r}")
        self.base = base
        self.sigma = check_sigma(sigma)
        self.draws = draws
        self.seed = int(seed)
        self.noise_mode = "stochastic"
        self._generator: torch.Generator | None = None

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    def forward(self, x: Tensor) -> Tensor:
        check_images(x)
        b = x.shape[0]
        delta = torch.randn((self.draws, *x.shape), generator=self._gen(x.device), device=x.device, dtype=x.dtype)
        noisy = (x.unsqueeze(0) + self.sigma * delta).reshape(self.draws * b, *x.shape[1:])
        logp = torch.log_softmax(self.base(noisy), -1).reshape(self.draws, b, -1)
        return torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(self.draws)))


def attack_smoothed(
    base: nn.Module,
    x: Tensor,
    y: Tensor,
    sigma: float,
    radius: float,
    *,
    attack: str = "pgd",
    steps: int = 10,
    eot: int = 2,
    draws: int = 8,
    seed: int = 0,
) -> Tensor:
    """Adversarial images (B, C, H, W) within l2 ``radius`` of x against the soft smoothed classifier."""
    if radius <= 0:
        return x.clone()
    model = SoftSmoothed(base, sigma, draws=draws, seed=seed)
    atk = build_attack(attack, model, norm="l2", eps=float(radius), steps=steps, eot=eot, seed=seed)
    return atk(x, y).detach()


def smoothed_correct(
    base: nn.Module,
    x: Tensor,
    y: Tensor,
    sigma: float,
    *,
    pred_draws: int,
    generator: torch.Generator,
    draw_batch: int = 256,
) -> list[bool]:
    """Per image: is the Monte-Carlo prediction of g (majority of ``pred_draws`` calls) the label?"""
    return [
        int(sample_counts(base, x[i], sigma, pred_draws, generator=generator, draw_batch=draw_batch).argmax())
        == int(y[i])
        for i in range(x.shape[0])
    ]
