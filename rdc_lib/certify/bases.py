"""Base classifiers for randomized smoothing: noisy images (B, C, H, W), pixel space -> logits (B, K).

- ``NoisedDiffusionClassifier`` (the noised DC): the input x~ = x + s delta (pixel noise s, model-space
  level sigma_s = 2 s) is scored by the conditional diffusion ELBO of the *noised* data distribution
  p_{sigma_s}(x~ | y), which only involves levels sigma > sigma_s: the input is treated as already noised
  at sigma_s and receives only the extra noise tau = sqrt(sigma^2 - sigma_s^2). Per level,

      term_t(y) = w_t * mean_pixels (D(x~ + tau_t eps; sigma_t, y) - x~ + (sigma_s^2 / tau_t) eps)^2

  (derivation: docs/certified.md section "The noised diffusion classifier"). ``posterior='approx'`` drops
  the (sigma_s^2 / tau_t) eps correction (lower variance, biased). With sigma_s = 0 this is exactly the
  plain DC, which is how ``build_base('dc', ...)`` (the plain DC on noisy inputs) is made.
- ``DenoisedSmoothing``: one unconditional denoiser call at sigma_s, then an off-the-shelf classifier.

Every base owns its random stream (``seed``; the global RNG is never used) and counts its network passes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..core.choices import SMOOTHING_BASES as BASES
from ..core.utils import OwnedRandomness
from ..diffusion.schedules import NoiseGrid, make_grid
from ..models.base import Denoiser

POSTERIORS = ("exact", "approx")


def noised_grid(
    sigma_s: float, timesteps: int, *, kind: str = "paper", weighting: str = "edm", sigma_max: float = 3.0
) -> NoiseGrid:
    """``timesteps`` (T) levels strictly above sigma_s (model space) up to sigma_max, with the weights of ``make_grid``.

    Built as ``make_grid(timesteps + 1, kind, sigma_min=sigma_s)`` without its first level (sigma_s itself,
    where tau = 0 and the term carries no information).
    """
    if not 0 < sigma_s < sigma_max:
        raise ValueError(f"sigma_s (model-space corruption level) must be in (0, sigma_max={sigma_max}), got {sigma_s}")
    full = make_grid(timesteps + 1, kind, weighting=weighting, sigma_min=sigma_s, sigma_max=sigma_max)
    keep = full.sigmas > sigma_s * (1 + 1e-6)
    sig, w = full.sigmas[keep][:timesteps], full.weights[keep][:timesteps]
    return NoiseGrid(sig, w, kind, weighting)


class NoisedDiffusionClassifier(OwnedRandomness, nn.Module):
    """x~ (B, C, H, W) pixel space (unbounded) -> logits (B, K) ~ log p_{sigma_s}(x~ | y) + log p(y) + const.

    Args:
        denoiser: any ``Denoiser`` (multi-head: one pass per level serves all classes).
        sigma_s: the model-space noise level the input already carries (2 x the pixel smoothing sigma);
            0 gives the plain DC on noisy inputs.
        grid: levels and weights; every level must be > sigma_s.
        posterior: 'exact' (the derived ELBO) or 'approx' (no eps correction).
        seed: seeds the module's own generator for the ELBO's eps (shared across classes).
    """

    noise_mode = "stochastic"  # OwnedRandomness: one stream, advancing with every call

    def __init__(
        self,
        denoiser: Denoiser,
        sigma_s: float,
        grid: NoiseGrid,
        *,
        posterior: Literal["exact", "approx"] = "exact",
        seed: int = 0,
        chunk_size: int = 8192,
    ):
        super().__init__()
        if posterior not in POSTERIORS:
            raise ValueError(f"unknown posterior {posterior!r}; valid choices: {', '.join(POSTERIORS)}")
        if sigma_s < 0:
            raise ValueError(f"sigma_s must be >= 0, got {sigma_s}")
        if len(grid) < 1 or float(grid.sigmas.min()) <= sigma_s:
            raise ValueError(
                f"every level of the grid must be > sigma_s = {sigma_s}, got levels in "
                f"[{float(grid.sigmas.min()):.4g}, {float(grid.sigmas.max()):.4g}]"
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.denoiser = denoiser
        self.sigma_s = float(sigma_s)
        self.grid = grid
        self.posterior = posterior
        self.chunk_size = int(chunk_size)
        self.reseed(int(seed))  # OwnedRandomness: seed and a stream started at the first call

    @property
    def num_classes(self) -> int:
        return self.denoiser.num_classes

    def network_passes(self, batch: int) -> int:
        """Single-image network evaluations per forward of ``batch`` images."""
        return batch * len(self.grid) * self.denoiser.passes_per_denoise_all(self.num_classes)

    def terms(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """(B, K, T) weighted per-level terms; noise (B, T, C, H, W) standard normal or drawn."""
        batch, t_len = x.shape[0], len(self.grid)
        if noise is None:
            noise = torch.randn(
                (batch, t_len, *x.shape[1:]), generator=self._gen(x.device), device=x.device, dtype=x.dtype
            )
        x0 = (x * 2 - 1).unsqueeze(1)  # (B, 1, C, H, W), model space
        sig = self.grid.sigmas.to(x.device, x.dtype)
        tau = (sig**2 - self.sigma_s**2).sqrt()
        corr = self.sigma_s**2 / tau if self.posterior == "exact" else torch.zeros_like(tau)
        shape = (1, t_len) + (1,) * (x.ndim - 1)
        x_t = x0 + tau.reshape(shape) * noise  # (B, T, C, H, W)
        per_call = max(1, self.chunk_size // max(1, self.denoiser.passes_per_denoise_all(self.num_classes)))
        flat, sig_flat = x_t.reshape(-1, *x.shape[1:]), sig.repeat(batch)
        den = torch.cat(
            [
                self.denoiser.denoise_all(flat[i : i + per_call], sig_flat[i : i + per_call])
                for i in range(0, flat.shape[0], per_call)
            ]
        )
        den = den.reshape(batch, t_len, self.num_classes, *x.shape[1:]).transpose(1, 2)  # (B, K, T, C, H, W)
        target = (x0 - corr.reshape(shape) * noise).unsqueeze(1)  # (B, 1, T, C, H, W)
        err = ((den - target) ** 2).flatten(3).mean(-1)  # (B, K, T)
        return err * self.grid.weights.to(x.device, x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or not x.dtype.is_floating_point:
            raise ValueError(f"x must be a float tensor (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
        return -self.terms(x).sum(-1)


class DenoisedSmoothing(nn.Module):
    """x~ (B, C, H, W) pixel space -> classifier logits of the one-shot denoised image (Carlini et al. 2023).

    D(2 x~ - 1; sigma_s, null) with the unconditional (null-label) head, mapped back to [0, 1] and clamped.
    """

    def __init__(self, denoiser: Denoiser, classifier: nn.Module, sigma_s: float):
        super().__init__()
        if not sigma_s > 0:
            raise ValueError(f"sigma_s (model-space noise level) must be > 0, got {sigma_s}")
        self.denoiser = denoiser
        self.classifier = classifier
        self.sigma_s = float(sigma_s)

    @property
    def num_classes(self) -> int:
        return self.denoiser.num_classes

    def network_passes(self, batch: int) -> int:
        """Denoiser passes per forward (the CNN, ~100x cheaper on digits, is not counted)."""
        return batch

    def denoise(self, x: Tensor) -> Tensor:
        """Denoised images (B, C, H, W) in [0, 1]."""
        sigma = torch.full((x.shape[0],), self.sigma_s, device=x.device, dtype=x.dtype)
        return ((self.denoiser(x * 2 - 1, sigma, None) + 1) / 2).clamp(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.denoise(x))


def build_base(
    name: str,
    denoiser: Denoiser,
    sigma: float,
    *,
    timesteps: int = 4,
    classifier: nn.Module | None = None,
    posterior: Literal["exact", "approx"] = "exact",
    weighting: str = "edm",
    sigma_max: float = 3.0,
    seed: int = 0,
) -> nn.Module:
    """The base classifier ``name`` (one of BASES) for pixel smoothing noise ``sigma``, in eval mode.

    'noised-dc': ``timesteps`` levels above 2 sigma; 'dc': the plain DC (levels from 1e-4 up, input
    treated as clean) with the same number of levels; 'denoised': needs ``classifier``.
    """
    if name not in BASES:
        raise ValueError(f"unknown base classifier {name!r}; valid choices: {', '.join(BASES)}")
    if not sigma > 0:
        raise ValueError(f"sigma (smoothing noise std, pixel space) must be > 0, got {sigma}")
    sigma_s = 2 * float(sigma)
    if name == "denoised":
        if classifier is None:
            raise ValueError("base 'denoised' needs classifier= (e.g. the digits CNN)")
        return DenoisedSmoothing(denoiser, classifier, sigma_s).eval()
    if name == "noised-dc":
        grid = noised_grid(sigma_s, timesteps, weighting=weighting, sigma_max=sigma_max)
        return NoisedDiffusionClassifier(denoiser, sigma_s, grid, posterior=posterior, seed=seed).eval()
    grid = make_grid(timesteps, weighting=weighting, sigma_max=sigma_max)
    return NoisedDiffusionClassifier(denoiser, 0.0, grid, posterior=posterior, seed=seed).eval()
