"""Per-level conditional diffusion losses: the (B, K, T) tensor behind the diffusion classifier.

term[b, k, t] = w_t * mean_pixels (D(x_b + sigma_t eps_{b,t}; sigma_t, y_k) - x_b)^2 in model space,
so -sum_t term[b, k, t] estimates log p(x_b | y_k) up to a constant shared by all classes
(docs/paper.md section 3). Every level of the grid is used with one eps each. With
``shared_noise=True`` every class sees the same eps (variance reduction of logit differences;
a multi-head network always shares it, since one pass serves all classes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.base import Denoiser
from .schedules import NoiseGrid


def draw_noise(
    batch: int,
    num_classes: int,
    timesteps: int,
    shape: tuple[int, ...],
    *,
    shared_noise: bool,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Standard normal eps: (B, 1, T, C, H, W) if shared across classes else (B, K, T, C, H, W)."""
    k = 1 if shared_noise else num_classes
    return torch.randn((batch, k, timesteps, *shape), generator=generator, device=device, dtype=dtype)


def levels_per_chunk(denoiser: Denoiser, batch: int, num_classes: int, shared: bool, chunk_size: int) -> int:
    """Noise levels per network call so that one call holds at most ``chunk_size`` (image, class, level) triples.

    A level costs ``batch`` x passes triples (passes: 1 for a multi-head network with shared eps, K otherwise).
    """
    passes = denoiser.passes_per_denoise_all(num_classes) if shared else num_classes
    return max(1, chunk_size // max(1, batch * passes))


def elbo_terms(
    denoiser: Denoiser,
    x: Tensor,  # (B, C, H, W) images in [0, 1]
    grid: NoiseGrid,  # T levels and weights
    *,
    classes: Tensor | None = None,  # (K,) labels to score; default all num_classes
    noise: Tensor | None = None,  # (B, 1 or K, T, C, H, W) eps; drawn from `generator` if None
    generator: torch.Generator | None = None,
    shared_noise: bool = True,
    chunk_size: int = 4096,  # max (image, class, level) triples per network call
) -> Tensor:  # (B, K, T) weighted per-level squared errors
    device, dtype = x.device, x.dtype
    if classes is None:
        classes = torch.arange(denoiser.num_classes, device=device)
    classes = classes.to(device)
    batch, k, T = x.shape[0], classes.numel(), len(grid)
    if denoiser.heads == "multi":
        shared_noise = True
    if noise is None:
        noise = draw_noise(
            batch, k, T, tuple(x.shape[1:]), shared_noise=shared_noise, generator=generator, device=device, dtype=dtype
        )
    elif noise.shape[0] != batch or noise.shape[2] != T or noise.shape[1] not in (1, k):
        raise ValueError(f"noise must have shape (B={batch}, 1 or K={k}, T={T}, C, H, W), got {tuple(noise.shape)}")
    shared = noise.shape[1] == 1
    x0 = x * 2 - 1
    sigmas, weights = grid.sigmas.to(device, dtype), grid.weights.to(device, dtype)

    per_chunk = levels_per_chunk(denoiser, batch, k, shared, chunk_size)
    out = []
    for start in range(0, T, per_chunk):
        sl = slice(start, min(start + per_chunk, T))
        out.append(_chunk_terms(denoiser, x0, sigmas[sl], noise[:, :, sl], classes, shared))
    terms = torch.cat(out, dim=2)  # (B, K, T)
    return terms * weights


def _chunk_terms(
    denoiser: Denoiser, x0: Tensor, sigmas: Tensor, noise: Tensor, classes: Tensor, shared: bool
) -> Tensor:
    """Unweighted mean-squared errors for a slice of levels: (B, K, Tc)."""
    batch, k, tc = x0.shape[0], classes.numel(), sigmas.numel()
    img = x0.shape[1:]
    s = sigmas.reshape(1, 1, tc, 1, 1, 1)
    x_noisy = x0.reshape(batch, 1, 1, *img) + s * noise  # (B, 1|K, Tc, C, H, W)
    if shared:
        flat = x_noisy.reshape(batch * tc, *img)
        sig = sigmas.repeat(batch)
        den = denoiser.denoise_all(flat, sig, classes).reshape(batch, tc, k, *img).transpose(1, 2)
    else:
        flat = x_noisy.reshape(batch * k * tc, *img)
        sig = sigmas.repeat(batch * k)
        lab = classes.reshape(1, k, 1).expand(batch, k, tc).reshape(-1)
        den = denoiser(flat, sig, lab).reshape(batch, k, tc, *img)
    return ((den - x0.reshape(batch, 1, 1, *img)) ** 2).flatten(3).mean(-1)


def elbo_row_terms(denoiser: Denoiser, x: Tensor, sigma: Tensor, weight: Tensor, labels: Tensor, eps: Tensor) -> Tensor:
    """Weighted losses of single (image, class, level) rows, the entries of :func:`elbo_terms` one by one.

    x (R, C, H, W) in [0, 1]; sigma, weight, labels (R,); eps (R, C, H, W) -> (R,):
    weight * mean_pixels (D(x' + sigma eps; sigma, label) - x')^2 with x' = 2x - 1 (the same arithmetic as
    :func:`elbo_terms`, so the same values).
    """
    x0 = x * 2 - 1
    den = denoiser(x0 + sigma.reshape(-1, 1, 1, 1) * eps, sigma, labels)
    return ((den - x0) ** 2).flatten(1).mean(-1) * weight
