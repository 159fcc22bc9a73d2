"""DiffPure-style baseline: diffuse, denoise with the unconditional model, classify (docs/paper.md sections 1, 7).

x (B, C, H, W) in [0, 1] -> x' = 2x - 1 -> x_t = x' + sigma* z -> reverse diffusion from sigma* to 0
with the null-label denoiser (ODE: EDM Heun; SDE: Euler-Maruyama) -> (x_0 + 1) / 2 clipped to
[0, 1] -> any classifier returning logits. The whole pipeline is differentiable and gradients are
exact (the paper attacks DiffPure with exact gradients and gradient checkpointing, PGD-200, EOT 32);
``checkpoint=True`` recomputes each solver step in the backward pass, so memory does not grow with
the number of steps.

Digits defaults: sigma* = 0.5 in model space (DiffPure's CIFAR-10 t* = 0.1 is sigma ~ 0.35 in VE
terms; 8x8 digits are coarser, and 0.5 is where the LM noise range sits), 10 solver steps on EDM's
rho = 7 schedule from sigma* down to sigma_min = 0.002. Randomness as in the RDC module: 'stochastic'
(own generator, fresh per call) or 'fixed' (re-seeded every call, shared by the batch).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..attacks.wrappers import bpda
from ..core.choices import GRAD_MODES, NOISE_MODES, PURIFY_MODES
from ..core.utils import OwnedRandomness, check_images
from ..diffusion.sampling import euler_sde, heun_ode, karras_sigmas, sde_noise_shape
from ..models.base import Denoiser

__all__ = ["DiffPure", "PURIFY_MODES"]


class DiffPure(OwnedRandomness, nn.Module):
    """Purify-then-classify defense: x (B, C, H, W) in [0, 1] -> logits (B, K) of ``classifier``.

    Shape:
        input (B, C, H, W) in [0, 1]; output whatever ``classifier`` returns, (B, K) logits.

    Examples:
        >>> defense = DiffPure(denoiser, cnn, t_star_sigma=0.5, steps=10, mode="ode")
        >>> logits = defense(x); x_pur = defense.purify(x)
    """

    def __init__(
        self,
        denoiser: Denoiser,  # null label = unconditional model
        classifier: nn.Module,  # [0, 1] images -> logits
        *,
        t_star_sigma: float = 0.5,  # sigma* in model space
        steps: int = 10,  # solver steps from sigma* to 0
        mode: Literal["ode", "sde"] = "ode",
        sigma_min: float = 0.002,  # last positive level of the schedule
        rho: float = 7.0,  # EDM schedule exponent
        noise_mode: Literal["stochastic", "fixed"] = "stochastic",
        seed: int = 0,
        checkpoint: bool = False,  # per-step gradient checkpointing
        grad_mode: Literal["exact", "bpda"] = "exact",  # bpda: identity backward through purification
    ):
        super().__init__()
        if mode not in PURIFY_MODES:
            raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(PURIFY_MODES)}")
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"unknown grad_mode {grad_mode!r}; valid choices: {', '.join(GRAD_MODES)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; valid choices: {', '.join(NOISE_MODES)}")
        if not t_star_sigma > 0:
            raise ValueError(f"t_star_sigma must be > 0, got {t_star_sigma}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not 0 < sigma_min <= t_star_sigma:
            raise ValueError(f"sigma_min must be in (0, t_star_sigma={t_star_sigma}], got {sigma_min}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.denoiser = denoiser
        self.classifier = classifier
        self.t_star_sigma = float(t_star_sigma)
        self.steps = steps
        self.mode = mode
        self.sigma_min = float(sigma_min)
        self.rho = float(rho)
        self.noise_mode = noise_mode
        self.seed = seed
        self.checkpoint = bool(checkpoint)
        self.grad_mode = grad_mode
        self._generator: torch.Generator | None = None
        self.eval()  # dropout in train mode would draw from the global RNG

    def sigmas(self, device: torch.device | str = "cpu") -> Tensor:
        """The solver schedule (steps + 1,): sigma* ... sigma_min, 0."""
        return karras_sigmas(self.steps, self.sigma_min, self.t_star_sigma, self.rho, device=device)

    def network_passes(self, batch: int) -> int:
        """Denoiser evaluations per call (ODE Heun: 2n - 1; SDE Euler: n), times the batch."""
        return batch * (2 * self.steps - 1 if self.mode == "ode" else self.steps)

    def purify(self, x: Tensor) -> Tensor:
        """Purified images (B, C, H, W) in [0, 1] (differentiable)."""
        check_images(x, channels=self.denoiser.img_channels, resolution=self.denoiser.img_resolution)
        gen = self._gen(x.device)
        batch = 1 if self.noise_mode == "fixed" else x.shape[0]
        sigmas = self.sigmas(x.device)
        z0 = torch.randn((batch, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
        x_t = (x * 2 - 1) + self.t_star_sigma * z0
        if self.mode == "ode":
            out = heun_ode(self.denoiser, x_t, sigmas, None, checkpoint=self.checkpoint)
        else:
            n, *_ = sde_noise_shape(x_t, sigmas)
            z = torch.randn((n, batch, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
            out = euler_sde(self.denoiser, x_t, sigmas, None, noise=z.expand(n, *x.shape), checkpoint=self.checkpoint)
        return ((out + 1) / 2).clamp(0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K); with ``grad_mode='bpda'`` the purification's backward pass is the identity."""
        if self.grad_mode == "bpda":
            return self.classifier(bpda(x, self.purify))
        return self.classifier(self.purify(x))
