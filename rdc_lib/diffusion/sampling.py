"""Samplers for EDM denoisers as pure functions (k-diffusion style), used by the DiffPure baseline.

All work in model space ([-1, 1] images) on a decreasing noise schedule ``sigmas`` (n + 1,) that ends
at 0, call ``denoiser(x, sigma (B,), labels)`` (labels None = the null/unconditional model) and
report progress through ``callback({'i', 'x', 'sigma', 'sigma_next', 'denoised'})``. They build an
ordinary autograd graph, so gradients through them are exact; ``checkpoint=True`` recomputes each
solver step in the backward pass instead of storing its activations (memory independent of n).

- :func:`heun_ode`: the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma with EDM's Heun
  (2nd order) steps, Euler on the last step to sigma = 0 (Karras et al. 2022, Algorithm 1).
- :func:`euler_sde`: Euler-Maruyama on the reverse-time VE SDE: from sigma to sigma' < sigma,
  x <- x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z with score = (D - x) / sigma^2;
  the last step to sigma = 0 returns D(x; sigma) without noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..models.base import Denoiser

__all__ = ["euler_sde", "heun_ode", "karras_sigmas", "sde_noise_shape"]

Callback = Callable[[dict], None] | None


def karras_sigmas(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """EDM's schedule: n levels from sigma_max down to sigma_min (rho-spaced), then 0: shape (n + 1,)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if n == 1:
        ramp = torch.zeros(1, dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)]).to(device=device, dtype=dtype)


def _check_sigmas(sigmas: Tensor) -> None:
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of length >= 2, got shape {tuple(sigmas.shape)}")
    if not (sigmas[:-1] > 0).all() or not (sigmas[1:] <= sigmas[:-1]).all() or sigmas[-1] < 0:
        raise ValueError("sigmas must be positive and non-increasing, optionally ending at 0")


def _denoise(denoiser: Denoiser, x: Tensor, sigma: float, labels: Tensor | None) -> Tensor:
    return denoiser(x, x.new_full((x.shape[0],), sigma), labels)


def _heun_step(x: Tensor, s: float, s_next: float, denoiser: Denoiser, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    den = _denoise(denoiser, x, s, labels)
    d = (x - den) / s
    x_next = x + (s_next - s) * d
    if s_next > 0:
        d2 = (x_next - _denoise(denoiser, x_next, s_next, labels)) / s_next
        x_next = x + (s_next - s) * (d + d2) / 2
    return x_next, den


def _sde_step(
    x: Tensor, s: float, s_next: float, z: Tensor, denoiser: Denoiser, labels: Tensor | None
) -> tuple[Tensor, Tensor]:
    den = _denoise(denoiser, x, s, labels)
    if s_next == 0:
        return den, den
    var = s**2 - s_next**2
    return x + var * (den - x) / s**2 + var**0.5 * z, den


def _maybe_checkpoint(fn, use: bool, *args):
    if use and torch.is_grad_enabled():
        return _checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def heun_ode(
    denoiser: Denoiser,
    x_t: Tensor,
    sigmas: Tensor,
    labels: Tensor | None = None,
    *,
    callback: Callback = None,
    checkpoint: bool = False,
) -> Tensor:
    """Solve the probability-flow ODE from x_t (B, C, H, W) at sigmas[0] to sigmas[-1]; deterministic.

    Costs 2n - 1 denoiser calls for n steps ending at 0.
    """
    _check_sigmas(sigmas)
    x = x_t
    for i in range(sigmas.numel() - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x_new, den = _maybe_checkpoint(
            lambda a, s=s, s_next=s_next: _heun_step(a, s, s_next, denoiser, labels), checkpoint, x
        )
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": den})
        x = x_new
    return x


def sde_noise_shape(x_t: Tensor, sigmas: Tensor) -> tuple[int, ...]:
    """Shape of the explicit ``noise`` for :func:`euler_sde`: (n, B, C, H, W), n = len(sigmas) - 1."""
    return (sigmas.numel() - 1, *x_t.shape)


def euler_sde(
    denoiser: Denoiser,
    x_t: Tensor,
    sigmas: Tensor,
    labels: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    callback: Callback = None,
    checkpoint: bool = False,
) -> Tensor:
    """Reverse-time SDE from x_t (B, C, H, W) at sigmas[0]; n denoiser calls for n steps.

    The per-step z comes from ``noise`` (shape :func:`sde_noise_shape`) or is drawn from
    ``generator`` up front (so a checkpointed backward replays the same draw).
    """
    _check_sigmas(sigmas)
    shape = sde_noise_shape(x_t, sigmas)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape} (steps, B, C, H, W), got {tuple(noise.shape)}")
    x = x_t
    for i in range(sigmas.numel() - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x_new, den = _maybe_checkpoint(
            lambda a, z, s=s, s_next=s_next: _sde_step(a, s, s_next, z, denoiser, labels), checkpoint, x, noise[i]
        )
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": den})
        x = x_new
    return x
