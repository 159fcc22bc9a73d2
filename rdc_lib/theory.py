"""Measurements around the optimal diffusion classifier (rdc-spec.md section 6).

Data in, data out (no printing): notebook 05 and the report plot these.

- ``denoiser_error_by_sigma``: E ||D(x + sigma eps; sigma, y) - x||^2 per level (model space, mean over
  pixels and images), the quantity the diffusion loss integrates.
- ``gap_by_sigma``: the same curve for a learned and the optimal denoiser on the *same* eps, and their gap.
- ``nearest_neighbour_agreement``: how often a classifier's prediction equals the 1-NN (l2) rule.
- ``optimal_classifier``: a ``DiffusionClassifier`` over ``OptimalDenoiser``.

Caveat (memorization): on a training image x_i, D*(x_i + sigma eps; sigma, y_i) -> x_i as sigma -> 0, so
the optimal denoiser's error and the optimal DC's accuracy look perfect on training images. Measure on
held-out test images as well as on training images, and report both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .classifier import DiffusionClassifier
from .diffusion.schedules import NoiseGrid
from .models.base import Denoiser
from .models.optimal import OptimalDenoiser
from .utils import check_images, check_labels

__all__ = [
    "GapCurves",
    "NNAgreement",
    "denoiser_error_by_sigma",
    "gap_by_sigma",
    "nearest_neighbour_predict",
    "nearest_neighbour_agreement",
    "optimal_classifier",
]


@dataclass(frozen=True)
class GapCurves:
    """Per-level denoising errors (T,) of a learned and the optimal denoiser on the same eps."""

    sigmas: Tensor      # (T,) noise levels
    learned: Tensor     # (T,) mean squared error of the learned denoiser, model space
    optimal: Tensor     # (T,) same for the optimal denoiser
    gap: Tensor         # (T,) learned - optimal (may be < 0 on held-out images: D* is optimal on the training set)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in ("sigmas", "learned", "optimal", "gap")}


@dataclass(frozen=True)
class NNAgreement:
    """Agreement between a classifier's argmax and the 1-nearest-neighbour (l2) prediction."""

    agreement: float    # fraction of images where both predictions are equal
    dc_pred: Tensor     # (B,) argmax of the logits
    nn_pred: Tensor     # (B,) label of the nearest training image

    def to_dict(self) -> dict[str, object]:
        return {"agreement": self.agreement, "dc_pred": self.dc_pred.tolist(), "nn_pred": self.nn_pred.tolist()}


def _sigmas(sigmas: Tensor | NoiseGrid, like: Tensor) -> Tensor:
    s = sigmas.sigmas if isinstance(sigmas, NoiseGrid) else torch.as_tensor(sigmas)
    s = s.to(like.device, like.dtype).reshape(-1)
    if s.numel() == 0 or not torch.isfinite(s).all() or (s <= 0).any():
        raise ValueError(f"sigmas must be a non-empty 1-D set of finite levels > 0, got {s.tolist()}")
    return s


def denoiser_error_by_sigma(
    denoiser: Denoiser,
    x01: Tensor,                        # (B, C, H, W) clean images in [0, 1]
    sigmas: Tensor | NoiseGrid,         # (T,) noise levels (or a grid)
    labels: Tensor | None = None,       # (B,) labels in [0, K]; None = null (unconditional)
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,        # (B, T, C, H, W) eps; drawn from `generator` if None
    chunk_size: int = 4096,             # max (image, level) pairs per denoiser call
) -> Tensor:                            # (T,) mean squared error per level, model space [-1, 1]
    """Mean over images and pixels of (D(x' + sigma eps; sigma, y) - x')^2, x' = 2 x01 - 1, per level."""
    check_images(x01, channels=denoiser.img_channels, resolution=denoiser.img_resolution, name="x01")
    batch = x01.shape[0]
    s = _sigmas(sigmas, x01)
    t_len = s.numel()
    if labels is not None:
        check_labels(labels, denoiser.num_classes + 1, batch=batch, name="labels")
        labels = labels.to(x01.device)
    if noise is None:
        noise = torch.randn((batch, t_len, *x01.shape[1:]), generator=generator, device=x01.device, dtype=x01.dtype)
    elif tuple(noise.shape) != (batch, t_len, *x01.shape[1:]):
        raise ValueError(f"noise must have shape {(batch, t_len, *x01.shape[1:])} (B, T, C, H, W), "
                         f"got {tuple(noise.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x0 = (x01 * 2 - 1).unsqueeze(1)                                  # (B, 1, C, H, W)
    noisy = (x0 + s.reshape(1, -1, 1, 1, 1) * noise).flatten(0, 1)  # (B * T, C, H, W)
    sig = s.repeat(batch)
    lab = None if labels is None else labels.repeat_interleave(t_len)
    with torch.no_grad():
        outs = [denoiser(noisy[i:i + chunk_size], sig[i:i + chunk_size],
                         None if lab is None else lab[i:i + chunk_size])
                for i in range(0, noisy.shape[0], chunk_size)]
    den = torch.cat(outs, 0).reshape(batch, t_len, *x01.shape[1:])
    return ((den - x0) ** 2).flatten(2).mean(-1).mean(0)


def gap_by_sigma(
    learned: Denoiser,
    optimal: Denoiser,
    x01: Tensor,                        # (B, C, H, W) clean images in [0, 1]
    y: Tensor | None,                   # (B,) class labels (None = null label for both)
    sigmas: Tensor | NoiseGrid,         # (T,)
    generator: torch.Generator | None = None,
    *,
    chunk_size: int = 4096,
) -> GapCurves:
    """Class-conditional denoising error of both denoisers per level on one shared eps draw (paired)."""
    check_images(x01, channels=learned.img_channels, resolution=learned.img_resolution, name="x01")
    if (optimal.img_channels, optimal.img_resolution) != (learned.img_channels, learned.img_resolution):
        raise ValueError(f"learned denoiser works on {learned.img_channels}x{learned.img_resolution}^2 images but the "
                         f"optimal one on {optimal.img_channels}x{optimal.img_resolution}^2; expected the same shape")
    s = _sigmas(sigmas, x01)
    noise = torch.randn((x01.shape[0], s.numel(), *x01.shape[1:]), generator=generator,
                        device=x01.device, dtype=x01.dtype)
    err_l = denoiser_error_by_sigma(learned, x01, s, y, noise=noise, chunk_size=chunk_size)
    err_o = denoiser_error_by_sigma(optimal, x01, s, y, noise=noise, chunk_size=chunk_size)
    return GapCurves(sigmas=s.detach().cpu(), learned=err_l.cpu(), optimal=err_o.cpu(), gap=(err_l - err_o).cpu())


def nearest_neighbour_predict(
    x: Tensor,                          # (B, C, H, W) images in [0, 1]
    train_x: Tensor,                    # (N, C, H, W) training images in [0, 1]
    train_y: Tensor,                    # (N,) labels
    *,
    exclude_exact: bool = False,        # ignore training images identical to x (leave-one-out on training images)
) -> Tensor:                            # (B,) label of the nearest training image (l2)
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
    dc_logits: Tensor,                  # (B, K) logits of a classifier on x
    x: Tensor,                          # (B, C, H, W) the classified images in [0, 1]
    train_x: Tensor,                    # (N, C, H, W)
    train_y: Tensor,                    # (N,)
    *,
    exclude_exact: bool = False,
) -> NNAgreement:
    """How often argmax(dc_logits) equals the 1-NN (l2) prediction on the same images."""
    if dc_logits.ndim != 2 or dc_logits.shape[0] != x.shape[0]:
        raise ValueError(f"dc_logits must have shape (B={x.shape[0]}, K), got {tuple(dc_logits.shape)}")
    nn_pred = nearest_neighbour_predict(x, train_x, train_y, exclude_exact=exclude_exact).cpu()
    dc_pred = dc_logits.detach().argmax(1).cpu()
    return NNAgreement(agreement=float((dc_pred == nn_pred).double().mean()), dc_pred=dc_pred, nn_pred=nn_pred)


def optimal_classifier(
    train_images: Tensor,               # (N, C, H, W) in [0, 1]
    train_labels: Tensor,               # (N,)
    grid: NoiseGrid | None = None,      # default: the DiffusionClassifier default (paper grid, T = 32)
    *,
    num_classes: int | None = None,
    **classifier_kwargs,                # forwarded to DiffusionClassifier (noise_mode, seed, grad_mode, ...)
) -> DiffusionClassifier:
    """The optimal diffusion classifier: ``DiffusionClassifier(OptimalDenoiser(train split), grid)``."""
    return DiffusionClassifier(OptimalDenoiser(train_images, train_labels, num_classes), grid, **classifier_kwargs)
