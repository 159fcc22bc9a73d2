"""The small experiments behind the notebooks' figures: tensors in, dataclasses of tensors out.

Each function measures one thing the notebooks plot (docs/paper.md sections 3, 4 and 7):

- :func:`repeated_logits`, :func:`logit_difference_std`, :func:`logit_spread_vs_timesteps`: the spread of
  logit differences over noise draws, against the number of levels T and shared/independent noise;
- :func:`loss_surface`: the loss on a 2-D grid spanned by the gradient-sign direction and a random
  sign direction around one image;
- :func:`denoise_across_sigmas`: several denoisers on one image and one eps per level (image grids).

The cost of a call (seconds, network passes) is measured in rdc_lib.experiments.timing; LM iterates and an
attack's queries, step by step, in rdc_lib.experiments.trajectories.
Randomness comes only from the generators and seeds passed in; no function prints or displays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.utils import check_images, check_labels
from ..defenses.classifier import DiffusionClassifier
from ..diffusion.schedules import NoiseGrid, make_grid, noise_levels
from ..models.base import Denoiser

__all__ = [
    "LossSurface",
    "NoiseSpread",
    "denoise_across_sigmas",
    "logit_difference_std",
    "logit_spread_vs_timesteps",
    "loss_surface",
    "repeated_logits",
]


# --------------------------------------------------------------------------- noise of a stochastic DC


@torch.no_grad()
def repeated_logits(classifier: Callable[[Tensor], Tensor], x: Tensor, n_draws: int) -> Tensor:
    """Logits (n_draws, B, K) of ``n_draws`` calls; a stochastic classifier draws fresh noise per call."""
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    return torch.stack([classifier(x) for _ in range(n_draws)])


def logit_difference_std(logits: Tensor, y: Tensor) -> Tensor:
    """Per-image spread (B,) of z_y - z_j over draws: std over the D draws, averaged over j != y.

    logits (D, B, K), y (B,). Only differences matter for the posterior (softmax is shift invariant),
    so this is the noise that can flip a decision (docs/paper.md section 3).
    """
    if logits.ndim != 3 or logits.shape[0] < 2:
        raise ValueError(f"logits must have shape (D >= 2, B, K), got {tuple(logits.shape)}")
    check_labels(y, logits.shape[2], batch=logits.shape[1])
    true = logits.gather(2, y.reshape(1, -1, 1).expand(logits.shape[0], -1, 1))
    diff = true - logits  # (D, B, K); column y is identically 0
    std = diff.std(dim=0, unbiased=True)  # (B, K)
    mask = torch.ones_like(std, dtype=torch.bool).scatter(1, y.reshape(-1, 1), False)
    return (std * mask).sum(1) / mask.sum(1)


@dataclass
class NoiseSpread:
    """Mean std of logit differences (over images) per setting and T: ``std[setting][i]`` for ``timesteps_list[i]``."""

    timesteps_list: list[int]
    std: dict[str, list[float]]
    n_draws: int
    n_images: int


def logit_spread_vs_timesteps(
    settings: dict[str, tuple[Denoiser, bool]],  # name -> (denoiser, shared_noise)
    x: Tensor,
    y: Tensor,
    timesteps_list: Sequence[int],
    n_draws: int,
    *,
    seed: int = 0,
) -> NoiseSpread:
    """For every setting and T: a stochastic DC (paper grid, seeded) called n_draws times; mean spread."""
    out: dict[str, list[float]] = {}
    for name, (denoiser, shared) in settings.items():
        row = []
        for t in timesteps_list:
            dc = DiffusionClassifier(
                denoiser, make_grid(int(t)), shared_noise=shared, noise_mode="stochastic", seed=seed
            ).eval()
            row.append(float(logit_difference_std(repeated_logits(dc, x, n_draws), y).mean()))
        out[name] = row
    return NoiseSpread([int(t) for t in timesteps_list], out, n_draws, x.shape[0])


# ---------------------------------------------------------------------------------- loss surface


@dataclass
class LossSurface:
    """Cross-entropy on the grid x + a d_grad + b d_rand (clipped to [0, 1]); loss[i, j] at (a_i, b_j)."""

    a: Tensor  # (P,) offsets along the gradient-sign direction (l_inf units)
    b: Tensor  # (P,) offsets along the random sign direction
    loss: Tensor  # (P, P)
    correct: Tensor  # (P, P) bool: still classified as the label


def loss_surface(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: int,
    *,
    radius: float,
    points: int,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> LossSurface:
    """Loss landscape around one image x (1, C, H, W) in [0, 1] with label y (Athalye et al. 2018 style).

    d_grad = sign(dL/dx) and d_rand = random signs both have l_inf norm 1, so the axes are l_inf
    distances; a smooth, rising surface along d_grad means the gradient points where the loss
    grows; a flat or jagged one is a sign of masked gradients.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, C, H, W), got shape {tuple(x.shape)}")
    if points < 2 or not radius > 0:
        raise ValueError(f"need points >= 2 and radius > 0, got {points} and {radius}")
    label = torch.tensor([int(y)], device=x.device)
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), label), xg)
    d_grad = g.sign()
    d_rand = torch.where(torch.rand(x.shape, generator=generator, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
    a = torch.linspace(-radius, radius, points, device=x.device, dtype=x.dtype)
    aa, bb = torch.meshgrid(a, a, indexing="ij")
    grid = (x + aa.reshape(-1, 1, 1, 1) * d_grad + bb.reshape(-1, 1, 1, 1) * d_rand).clamp(0.0, 1.0)
    losses, correct = [], []
    with torch.no_grad():
        for start in range(0, grid.shape[0], batch_size):
            logits = model(grid[start : start + batch_size])
            lab = label.expand(logits.shape[0])
            losses.append(F.cross_entropy(logits, lab, reduction="none"))
            correct.append(logits.argmax(1) == lab)
    shape = (points, points)
    loss, ok = torch.cat(losses).reshape(shape).cpu(), torch.cat(correct).reshape(shape).cpu()
    return LossSurface(a.cpu(), a.cpu(), loss, ok)


def denoise_across_sigmas(
    denoisers: dict[str, Denoiser],  # name -> denoiser (all on the same image shape)
    x01: Tensor,  # (C, H, W) or (1, C, H, W) one clean image in [0, 1]
    label: int | None,  # class to condition on; None = null (unconditional)
    sigmas: Tensor | NoiseGrid,  # (T,)
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,  # (T, C, H, W) eps; drawn from `generator` if None
) -> dict[str, Tensor]:
    """Every denoiser on the same noisy copies of one image: {'noisy', *names} -> (T, C, H, W) in [0, 1].

    Outputs are mapped back from model space ((d + 1) / 2) and clipped to [0, 1] for display.
    """
    if not denoisers:
        raise ValueError("denoisers is empty; pass a dict name -> Denoiser")
    img = x01.unsqueeze(0) if x01.ndim == 3 else x01
    first = next(iter(denoisers.values()))
    check_images(img, channels=first.img_channels, resolution=first.img_resolution, name="x01")
    if img.shape[0] != 1:
        raise ValueError(f"x01 must be one image (C, H, W) or (1, C, H, W), got shape {tuple(x01.shape)}")
    s = noise_levels(sigmas, img)
    t_len = s.numel()
    if noise is None:
        noise = torch.randn((t_len, *img.shape[1:]), generator=generator, device=img.device, dtype=img.dtype)
    elif tuple(noise.shape) != (t_len, *img.shape[1:]):
        raise ValueError(f"noise must have shape {(t_len, *img.shape[1:])} (T, C, H, W), got {tuple(noise.shape)}")
    noisy = (img * 2 - 1) + s.reshape(-1, 1, 1, 1) * noise  # (T, C, H, W) model space
    out = {"noisy": ((noisy + 1) / 2).clamp(0, 1)}
    with torch.no_grad():
        for name, den in denoisers.items():
            k = den.num_classes if label is None else int(label)
            lab = torch.full((t_len,), k, dtype=torch.long, device=img.device)
            out[name] = ((den(noisy, s, lab) + 1) / 2).clamp(0, 1)
    return out
