"""Measurements around the optimal diffusion classifier (docs/paper.md section 6).

Data in, data out (no printing): notebook 05 and the report plot these.

- ``denoiser_error_by_sigma``: E ||D(x + sigma eps; sigma, y) - x||^2 per level (model space, mean over
  pixels and images), the quantity the diffusion loss integrates.
- ``gap_by_sigma``: the same curve for a learned and the optimal denoiser on the *same* eps, and their gap.
- ``optimal_classifier``: a ``DiffusionClassifier`` over ``OptimalDenoiser``.

Added for notebook 05 and ``benchmarks/drivers/theory_report.py`` (issue 11):

- ``dominant_training_image``: which training image carries the largest softmax weight of D* at each level.
- ``margin_by_sigma``: the logit margin of a diffusion classifier split into per-level contributions.
- ``smoothed_surrogate``: the same classifier on levels sigma >= sigma_min only
  (``rdc_lib.diffusion.restrict_grid``), a smoother surrogate for gradient (BPDA-style) transfer when
  small levels saturate.
- (the protocol running every attack on one model lives in ``rdc_lib.evaluation.protocol``)

The 1-NN rule the optimal DC approaches lives in ``rdc_lib.experiments.nearest_neighbour``; the neighbour and transfer
attacks in ``rdc_lib.attacks``; the image grids of several denoisers across levels
(``denoise_across_sigmas``) in ``rdc_lib.experiments.analysis``.

Caveat (memorization): on a training image x_i, D*(x_i + sigma eps; sigma, y_i) -> x_i as sigma -> 0, so
the optimal denoiser's error and the optimal DC's accuracy look perfect on training images. Measure on
held-out test images as well as on training images, and report both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.utils import check_images, check_labels
from ..defenses.classifier import DiffusionClassifier
from ..diffusion.schedules import NoiseGrid, noise_levels, restrict_grid
from ..models.base import Denoiser
from ..models.optimal import OptimalDenoiser

__all__ = [
    "GapCurves",
    "denoiser_error_by_sigma",
    "gap_by_sigma",
    "optimal_classifier",
    "Dominance",
    "MarginBySigma",
    "dominant_training_image",
    "margin_by_sigma",
    "smoothed_surrogate",
]


@dataclass(frozen=True)
class GapCurves:
    """Per-level denoising errors (T,) of a learned and the optimal denoiser on the same eps."""

    sigmas: Tensor  # (T,) noise levels
    learned: Tensor  # (T,) mean squared error of the learned denoiser, model space
    optimal: Tensor  # (T,) same for the optimal denoiser
    gap: Tensor  # (T,) learned - optimal (may be < 0 on held-out images: D* is optimal on the training set)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in ("sigmas", "learned", "optimal", "gap")}


def denoiser_error_by_sigma(
    denoiser: Denoiser,
    x01: Tensor,  # (B, C, H, W) clean images in [0, 1]
    sigmas: Tensor | NoiseGrid,  # (T,) noise levels (or a grid)
    labels: Tensor | None = None,  # (B,) labels in [0, K]; None = null (unconditional)
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,  # (B, T, C, H, W) eps; drawn from `generator` if None
    chunk_size: int = 4096,  # max (image, level) pairs per denoiser call
) -> Tensor:  # (T,) mean squared error per level, model space [-1, 1]
    """Mean over images and pixels of (D(x' + sigma eps; sigma, y) - x')^2, x' = 2 x01 - 1, per level."""
    check_images(x01, channels=denoiser.img_channels, resolution=denoiser.img_resolution, name="x01")
    batch = x01.shape[0]
    s = noise_levels(sigmas, x01)
    t_len = s.numel()
    if labels is not None:
        check_labels(labels, denoiser.num_classes + 1, batch=batch, name="labels")
        labels = labels.to(x01.device)
    if noise is None:
        noise = torch.randn((batch, t_len, *x01.shape[1:]), generator=generator, device=x01.device, dtype=x01.dtype)
    elif tuple(noise.shape) != (batch, t_len, *x01.shape[1:]):
        raise ValueError(
            f"noise must have shape {(batch, t_len, *x01.shape[1:])} (B, T, C, H, W), got {tuple(noise.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x0 = (x01 * 2 - 1).unsqueeze(1)  # (B, 1, C, H, W)
    noisy = (x0 + s.reshape(1, -1, 1, 1, 1) * noise).flatten(0, 1)  # (B * T, C, H, W)
    sig = s.repeat(batch)
    lab = None if labels is None else labels.repeat_interleave(t_len)
    with torch.no_grad():
        outs = [
            denoiser(
                noisy[i : i + chunk_size], sig[i : i + chunk_size], None if lab is None else lab[i : i + chunk_size]
            )
            for i in range(0, noisy.shape[0], chunk_size)
        ]
    den = torch.cat(outs, 0).reshape(batch, t_len, *x01.shape[1:])
    return ((den - x0) ** 2).flatten(2).mean(-1).mean(0)


def gap_by_sigma(
    learned: Denoiser,
    optimal: Denoiser,
    x01: Tensor,  # (B, C, H, W) clean images in [0, 1]
    y: Tensor | None,  # (B,) class labels (None = null label for both)
    sigmas: Tensor | NoiseGrid,  # (T,)
    generator: torch.Generator | None = None,
    *,
    chunk_size: int = 4096,
) -> GapCurves:
    """Class-conditional denoising error of both denoisers per level on one shared eps draw (paired)."""
    check_images(x01, channels=learned.img_channels, resolution=learned.img_resolution, name="x01")
    if (optimal.img_channels, optimal.img_resolution) != (learned.img_channels, learned.img_resolution):
        raise ValueError(
            f"learned denoiser works on {learned.img_channels}x{learned.img_resolution}^2 images but the "
            f"optimal one on {optimal.img_channels}x{optimal.img_resolution}^2; expected the same shape"
        )
    s = noise_levels(sigmas, x01)
    noise = torch.randn(
        (x01.shape[0], s.numel(), *x01.shape[1:]), generator=generator, device=x01.device, dtype=x01.dtype
    )
    err_l = denoiser_error_by_sigma(learned, x01, s, y, noise=noise, chunk_size=chunk_size)
    err_o = denoiser_error_by_sigma(optimal, x01, s, y, noise=noise, chunk_size=chunk_size)
    return GapCurves(sigmas=s.detach().cpu(), learned=err_l.cpu(), optimal=err_o.cpu(), gap=(err_l - err_o).cpu())


def optimal_classifier(
    train_images: Tensor,  # (N, C, H, W) in [0, 1]
    train_labels: Tensor,  # (N,)
    grid: NoiseGrid | None = None,  # default: the DiffusionClassifier default (paper grid, T = 32)
    *,
    num_classes: int | None = None,
    **classifier_kwargs,  # forwarded to DiffusionClassifier (noise_mode, seed, backward_mode, ...)
) -> DiffusionClassifier:
    """The optimal diffusion classifier: ``DiffusionClassifier(OptimalDenoiser(train split), grid)``."""
    return DiffusionClassifier(OptimalDenoiser(train_images, train_labels, num_classes), grid, **classifier_kwargs)


# --------------------------------------------------------------------------------------------------
# Issue 11: what the optimal denoiser does per level, and a robustness protocol shared by notebook 05
# and benchmarks/drivers/theory_report.py.


@dataclass(frozen=True)
class Dominance:
    """Which training image carries the largest softmax weight of D*(x + sigma eps; sigma, y) per level."""

    sigmas: Tensor  # (T,)
    top_index: Tensor  # (B, T) int64 index into the training set (original order)
    top_weight: Tensor  # (B, T) its softmax weight in [0, 1] (1 = a hard nearest neighbour)
    effective_count: Tensor  # (B, T) 1 / sum_i w_i^2: how many training images effectively share the weight
    nn_index: Tensor  # (B,) nearest training image (l2) of the clean input, in the same pool

    @property
    def matches_nn(self) -> Tensor:
        """(B, T) bool: the dominant image is the clean input's nearest training image."""
        return self.top_index == self.nn_index[:, None]

    def to_dict(self) -> dict[str, list]:
        keys = ("sigmas", "top_index", "top_weight", "effective_count", "nn_index")
        out = {k: getattr(self, k).tolist() for k in keys}
        out["matches_nn"] = self.matches_nn.tolist()
        return out


def dominant_training_image(
    optimal: OptimalDenoiser,
    x01: Tensor,  # (B, C, H, W) clean images in [0, 1]
    sigmas: Tensor | NoiseGrid,  # (T,) noise levels
    labels: Tensor | None = None,  # (B,) class whose images form the pool (K = null = all); None = all
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,  # (B, T, C, H, W) eps; drawn from `generator` if None
) -> Dominance:
    """The softmax of D* over its pool of training images, summarised by its largest weight, per level.

    The pool is the class-``labels[b]`` training images (the whole set for the null label or None); the
    weights are softmax_i(-||x' + sigma eps - x_i||^2 / (2 sigma^2)) in model space, computed in float64
    (one (B * T, N) distance matrix: about 130 MB for B = 360, T = 32 on digits).
    """
    if not isinstance(optimal, OptimalDenoiser):
        raise ValueError(f"optimal must be an OptimalDenoiser, got {type(optimal).__name__}")
    check_images(x01, channels=optimal.img_channels, resolution=optimal.img_resolution, name="x01")
    batch = x01.shape[0]
    s = noise_levels(sigmas, x01).double()
    t_len = s.numel()
    if labels is not None:
        check_labels(labels, optimal.num_classes + 1, batch=batch, name="labels")
    if noise is None:
        noise = torch.randn((batch, t_len, *x01.shape[1:]), generator=generator, device=x01.device, dtype=x01.dtype)
    elif tuple(noise.shape) != (batch, t_len, *x01.shape[1:]):
        raise ValueError(
            f"noise must have shape {(batch, t_len, *x01.shape[1:])} (B, T, C, H, W), got {tuple(noise.shape)}"
        )
    train = optimal.train_flat.to(x01.device, torch.float64)  # (N, D) model space
    train_y = optimal.train_labels.to(x01.device)
    x0 = (x01.to(torch.float64) * 2 - 1).reshape(batch, -1)  # (B, D)
    pool = torch.ones(batch, train.shape[0], dtype=torch.bool, device=x01.device)
    if labels is not None:
        lab = labels.to(x01.device)
        pool = (train_y[None, :] == lab[:, None]) | (lab[:, None] == optimal.num_classes)
    with torch.no_grad():
        nn_index = torch.cdist(x0, train).masked_fill(~pool, float("inf")).argmin(1)
        noisy = x0[:, None] + s[None, :, None] * noise.to(torch.float64).reshape(batch, t_len, -1)  # (B, T, D)
        d2 = (
            torch.cdist(noisy.reshape(batch * t_len, -1), train, compute_mode="donot_use_mm_for_euclid_dist")
            .pow(2)
            .reshape(batch, t_len, -1)
        )  # (B, T, N)
        logits = (-d2 / (2 * s[None, :, None] ** 2)).masked_fill(~pool[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        top_weight, top_index = weights.max(dim=-1)
        effective = 1.0 / weights.pow(2).sum(-1)
    return Dominance(
        sigmas=s.cpu(),
        top_index=top_index.cpu(),
        top_weight=top_weight.cpu(),
        effective_count=effective.cpu(),
        nn_index=nn_index.cpu(),
    )


@dataclass(frozen=True)
class MarginBySigma:
    """The logit margin z_y - z_r (r = runner-up class) of a DC, split into per-level contributions."""

    sigmas: Tensor  # (T,)
    per_level: Tensor  # (B, T) w_t (err_t(r) - err_t(y)); sums over t to the margin (uniform prior)
    margin: Tensor  # (B,) z_y - z_r from the logits
    runner_up: Tensor  # (B,) r = argmax_{k != y} z_k

    @property
    def mean_per_level(self) -> Tensor:
        """(T,) mean over images."""
        return self.per_level.mean(0)

    def to_dict(self) -> dict[str, list]:
        return {
            "sigmas": self.sigmas.tolist(),
            "mean_per_level": self.mean_per_level.tolist(),
            "margin": self.margin.tolist(),
            "runner_up": self.runner_up.tolist(),
        }


def margin_by_sigma(
    classifier: DiffusionClassifier,
    x01: Tensor,  # (B, C, H, W) in [0, 1]
    y: Tensor,  # (B,) true labels
    *,
    noise: Tensor | None = None,  # eps as ``classifier.draw_noise`` returns it; drawn if None
) -> MarginBySigma:
    """Where the DC's decision comes from: each level's share of the margin against the runner-up class."""
    check_labels(y, classifier.num_classes, batch=x01.shape[0], name="y")
    with torch.no_grad():
        terms = classifier.elbo_terms(x01, noise)  # (B, K, T) weighted errors
    y = y.to(terms.device)
    logits = -terms.sum(-1) + classifier.log_prior.to(terms.device, terms.dtype)
    runner_up = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    rows = torch.arange(terms.shape[0], device=terms.device)
    per_level = terms[rows, runner_up] - terms[rows, y]
    margin = logits[rows, y] - logits[rows, runner_up]
    return MarginBySigma(
        sigmas=classifier.grid.sigmas.detach().cpu(),
        per_level=per_level.cpu(),
        margin=margin.cpu(),
        runner_up=runner_up.cpu(),
    )


def smoothed_surrogate(
    classifier: DiffusionClassifier,
    sigma_min: float,
    *,
    seed: int | None = None,
) -> DiffusionClassifier:
    """The same denoiser and settings on the levels sigma >= ``sigma_min`` only (a smoother surrogate).

    At small sigma the optimal denoiser's softmax is a hard nearest-neighbour choice, so the DC is a
    piecewise function of x there; dropping those levels leaves a smooth classifier whose gradients can
    be used to attack the full one (BPDA-style transfer).
    """
    return DiffusionClassifier(
        classifier.denoiser,
        restrict_grid(classifier.grid, sigma_min),
        prior=classifier.log_prior.exp().cpu(),
        shared_noise=classifier.shared_noise,
        noise_mode=classifier.noise_mode,
        seed=classifier.seed if seed is None else seed,
        backward_mode=classifier.backward_mode,
        chunk_size=classifier.chunk_size,
    ).eval()
