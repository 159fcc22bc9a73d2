"""Measurements around the optimal diffusion classifier (docs/paper.md section 6).

Data in, data out (no printing): notebook 05 and the report plot these.

- ``denoiser_error_by_sigma``: E ||D(x + sigma eps; sigma, y) - x||^2 per level (model space, mean over
  pixels and images), the quantity the diffusion loss integrates.
- ``gap_by_sigma``: the same curve for a learned and the optimal denoiser on the *same* eps, and their gap.
- ``nearest_neighbour_agreement``: how often a classifier's prediction equals the 1-NN (l2) rule.
- ``optimal_classifier``: a ``DiffusionClassifier`` over ``OptimalDenoiser``.

Added for notebook 05 and ``benchmarks/theory_report.py`` (issue 11):

- ``dominant_training_image``: which training image carries the largest softmax weight of D* at each level.
- ``denoise_across_sigmas``: several denoisers on one image and one eps per level (image grids).
- ``margin_by_sigma``: the logit margin of a diffusion classifier split into per-level contributions.
- ``restrict_grid`` / ``smoothed_surrogate``: the same classifier on levels sigma >= sigma_min only, a
  smoother surrogate for gradient (BPDA-style) transfer when small levels saturate.
- ``NeighbourAttack``: a closed-form attack on nearest-neighbour-like classifiers (steps towards the
  nearest training images of other classes); ``transfer_pgd``: PGD without early stopping, for transfer.
- (the protocol running every attack on one model moved to ``rdc_lib.evaluation.protocol``)
- ``nn_certified_radius``: a certified lower bound on the 1-NN rule's robust radius (l2 or l_inf).

Caveat (memorization): on a training image x_i, D*(x_i + sigma eps; sigma, y_i) -> x_i as sigma -> 0, so
the optimal denoiser's error and the optimal DC's accuracy look perfect on training images. Measure on
held-out test images as well as on training images, and report both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .attacks.base import Attack, AttackContext, eval_mode
from .attacks.losses import get_loss
from .attacks.projections import project_ball, steepest_direction
from .defenses.classifier import DiffusionClassifier
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
    "nn_certified_radius",
    "Dominance",
    "MarginBySigma",
    "NeighbourAttack",
    "denoise_across_sigmas",
    "dominant_training_image",
    "margin_by_sigma",
    "restrict_grid",
    "smoothed_surrogate",
    "transfer_pgd",
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


def nn_certified_radius(
    x: Tensor,                          # (B, C, H, W) images in [0, 1]
    y: Tensor,                          # (B,) their labels
    train_x: Tensor,                    # (N, C, H, W) training images in [0, 1]
    train_y: Tensor,                    # (N,)
    norm: str = "l2",                   # threat model: 'l2' or 'linf'
) -> Tensor:                            # (B,) float64 radius (0 where the 1-NN rule is wrong)
    """A certified lower bound on the 1-NN rule's robust radius around each x, in ``norm``.

    With x_s the nearest class-y training image (x itself if it is one), class y beats another class's
    image x_j as long as the point stays on x_s's side of their bisector hyperplane, whose distance is
    (||x - x_j||^2 - ||x - x_s||^2) / (2 ||x_j - x_s||_q) (q = 2 for l2, q = 1 for l_inf, the dual norm).
    The minimum over every other-class x_j certifies the 1-NN decision (x_s alone already wins); the
    [0, 1] box and the other class-y images can only make the true radius larger.
    """
    if norm not in ("l2", "linf"):
        raise ValueError(f"unknown norm {norm!r}; valid choices: l2, linf")
    check_images(x, name="x")
    check_images(train_x, name="train_x")
    a = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    b = train_x.detach().reshape(train_x.shape[0], -1).to(a.device, torch.float64)
    ty, y = train_y.to(a.device), y.to(a.device)
    d2 = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2)     # (B, N)
    same = ty[None, :] == y[:, None]
    s_idx = d2.masked_fill(~same, float("inf")).argmin(1)                           # (B,)
    d_same = d2.gather(1, s_idx[:, None])                                           # (B, 1)
    diff = b[None, :, :] - b[s_idx][:, None, :]                                     # (B, N, D)
    dual = diff.norm(p=2 if norm == "l2" else 1, dim=-1).clamp_min(1e-12)
    radius = ((d2 - d_same) / (2 * dual)).masked_fill(same, float("inf")).amin(1)
    return radius.clamp_min(0.0).cpu()


def optimal_classifier(
    train_images: Tensor,               # (N, C, H, W) in [0, 1]
    train_labels: Tensor,               # (N,)
    grid: NoiseGrid | None = None,      # default: the DiffusionClassifier default (paper grid, T = 32)
    *,
    num_classes: int | None = None,
    **classifier_kwargs,                # forwarded to DiffusionClassifier (noise_mode, seed, backward_mode, ...)
) -> DiffusionClassifier:
    """The optimal diffusion classifier: ``DiffusionClassifier(OptimalDenoiser(train split), grid)``."""
    return DiffusionClassifier(OptimalDenoiser(train_images, train_labels, num_classes), grid, **classifier_kwargs)


# --------------------------------------------------------------------------------------------------
# Issue 11: what the optimal denoiser does per level, and a robustness protocol shared by notebook 05
# and benchmarks/theory_report.py.


@dataclass(frozen=True)
class Dominance:
    """Which training image carries the largest softmax weight of D*(x + sigma eps; sigma, y) per level."""

    sigmas: Tensor            # (T,)
    top_index: Tensor         # (B, T) int64 index into the training set (original order)
    top_weight: Tensor        # (B, T) its softmax weight in [0, 1] (1 = a hard nearest neighbour)
    effective_count: Tensor   # (B, T) 1 / sum_i w_i^2: how many training images effectively share the weight
    nn_index: Tensor          # (B,) nearest training image (l2) of the clean input, in the same pool

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
    x01: Tensor,                        # (B, C, H, W) clean images in [0, 1]
    sigmas: Tensor | NoiseGrid,         # (T,) noise levels
    labels: Tensor | None = None,       # (B,) class whose images form the pool (K = null = all); None = all
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,        # (B, T, C, H, W) eps; drawn from `generator` if None
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
    s = _sigmas(sigmas, x01).double()
    t_len = s.numel()
    if labels is not None:
        check_labels(labels, optimal.num_classes + 1, batch=batch, name="labels")
    if noise is None:
        noise = torch.randn((batch, t_len, *x01.shape[1:]), generator=generator, device=x01.device, dtype=x01.dtype)
    elif tuple(noise.shape) != (batch, t_len, *x01.shape[1:]):
        raise ValueError(f"noise must have shape {(batch, t_len, *x01.shape[1:])} (B, T, C, H, W), "
                         f"got {tuple(noise.shape)}")
    train = optimal.train_flat.to(x01.device, torch.float64)                  # (N, D) model space
    train_y = optimal.train_labels.to(x01.device)
    x0 = (x01.to(torch.float64) * 2 - 1).reshape(batch, -1)                    # (B, D)
    pool = torch.ones(batch, train.shape[0], dtype=torch.bool, device=x01.device)
    if labels is not None:
        lab = labels.to(x01.device)
        pool = (train_y[None, :] == lab[:, None]) | (lab[:, None] == optimal.num_classes)
    with torch.no_grad():
        nn_index = torch.cdist(x0, train).masked_fill(~pool, float("inf")).argmin(1)
        noisy = x0[:, None] + s[None, :, None] * noise.to(torch.float64).reshape(batch, t_len, -1)  # (B, T, D)
        d2 = torch.cdist(noisy.reshape(batch * t_len, -1), train,
                         compute_mode="donot_use_mm_for_euclid_dist").pow(2).reshape(batch, t_len, -1)  # (B, T, N)
        logits = (-d2 / (2 * s[None, :, None] ** 2)).masked_fill(~pool[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        top_weight, top_index = weights.max(dim=-1)
        effective = 1.0 / weights.pow(2).sum(-1)
    return Dominance(sigmas=s.cpu(), top_index=top_index.cpu(), top_weight=top_weight.cpu(),
                     effective_count=effective.cpu(), nn_index=nn_index.cpu())


def denoise_across_sigmas(
    denoisers: dict[str, Denoiser],     # name -> denoiser (all on the same image shape)
    x01: Tensor,                        # (C, H, W) or (1, C, H, W) one clean image in [0, 1]
    label: int | None,                  # class to condition on; None = null (unconditional)
    sigmas: Tensor | NoiseGrid,         # (T,)
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,        # (T, C, H, W) eps; drawn from `generator` if None
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
    s = _sigmas(sigmas, img)
    t_len = s.numel()
    if noise is None:
        noise = torch.randn((t_len, *img.shape[1:]), generator=generator, device=img.device, dtype=img.dtype)
    elif tuple(noise.shape) != (t_len, *img.shape[1:]):
        raise ValueError(f"noise must have shape {(t_len, *img.shape[1:])} (T, C, H, W), got {tuple(noise.shape)}")
    noisy = (img * 2 - 1) + s.reshape(-1, 1, 1, 1) * noise                    # (T, C, H, W) model space
    out = {"noisy": ((noisy + 1) / 2).clamp(0, 1)}
    with torch.no_grad():
        for name, den in denoisers.items():
            k = den.num_classes if label is None else int(label)
            lab = torch.full((t_len,), k, dtype=torch.long, device=img.device)
            out[name] = ((den(noisy, s, lab) + 1) / 2).clamp(0, 1)
    return out


@dataclass(frozen=True)
class MarginBySigma:
    """The logit margin z_y - z_r (r = runner-up class) of a DC, split into per-level contributions."""

    sigmas: Tensor            # (T,)
    per_level: Tensor         # (B, T) w_t (err_t(r) - err_t(y)); sums over t to the margin (uniform prior)
    margin: Tensor            # (B,) z_y - z_r from the logits
    runner_up: Tensor         # (B,) r = argmax_{k != y} z_k

    @property
    def mean_per_level(self) -> Tensor:
        """(T,) mean over images."""
        return self.per_level.mean(0)

    def to_dict(self) -> dict[str, list]:
        return {"sigmas": self.sigmas.tolist(), "mean_per_level": self.mean_per_level.tolist(),
                "margin": self.margin.tolist(), "runner_up": self.runner_up.tolist()}


def margin_by_sigma(
    classifier: DiffusionClassifier,
    x01: Tensor,                        # (B, C, H, W) in [0, 1]
    y: Tensor,                          # (B,) true labels
    *,
    noise: Tensor | None = None,        # eps as ``classifier.draw_noise`` returns it; drawn if None
) -> MarginBySigma:
    """Where the DC's decision comes from: each level's share of the margin against the runner-up class."""
    check_labels(y, classifier.num_classes, batch=x01.shape[0], name="y")
    with torch.no_grad():
        terms = classifier.elbo_terms(x01, noise)                              # (B, K, T) weighted errors
    y = y.to(terms.device)
    logits = -terms.sum(-1) + classifier.log_prior.to(terms.device, terms.dtype)
    runner_up = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    rows = torch.arange(terms.shape[0], device=terms.device)
    per_level = terms[rows, runner_up] - terms[rows, y]
    margin = logits[rows, y] - logits[rows, runner_up]
    return MarginBySigma(sigmas=classifier.grid.sigmas.detach().cpu(), per_level=per_level.cpu(),
                         margin=margin.cpu(), runner_up=runner_up.cpu())


def restrict_grid(grid: NoiseGrid, sigma_min: float) -> NoiseGrid:
    """The levels of ``grid`` with sigma >= ``sigma_min``, with their original weights."""
    keep = grid.sigmas >= sigma_min
    if not bool(keep.any()):
        raise ValueError(f"sigma_min = {sigma_min} removes every level; the grid's largest sigma is "
                         f"{float(grid.sigmas.max()):.4g}")
    return NoiseGrid(grid.sigmas[keep], grid.weights[keep], grid.kind, grid.weighting)


def smoothed_surrogate(
    classifier: DiffusionClassifier, sigma_min: float, *, seed: int | None = None,
) -> DiffusionClassifier:
    """The same denoiser and settings on the levels sigma >= ``sigma_min`` only (a smoother surrogate).

    At small sigma the optimal denoiser's softmax is a hard nearest-neighbour choice, so the DC is a
    piecewise function of x there; dropping those levels leaves a smooth classifier whose gradients can
    be used to attack the full one (BPDA-style transfer).
    """
    return DiffusionClassifier(
        classifier.denoiser, restrict_grid(classifier.grid, sigma_min), prior=classifier.log_prior.exp().cpu(),
        shared_noise=classifier.shared_noise, noise_mode=classifier.noise_mode,
        seed=classifier.seed if seed is None else seed, backward_mode=classifier.backward_mode,
        chunk_size=classifier.chunk_size,
    ).eval()


class NeighbourAttack(Attack):
    """Closed-form attack on nearest-neighbour-like classifiers (the optimal DC at small sigma).

    Distance Measure : Linf, L2

    For each of the ``n_neighbours`` nearest training images x_j of another class it tries two steps of
    full budget: along x_j - x_s (x_s the nearest same-class training image other than x itself; the
    steepest direction for ||x' - x_s||^2 - ||x' - x_j||^2, the 1-NN margin) and along x_j - x (straight
    towards x_j), as sign(.) for l_inf and normalised for l2, projected onto the ball and [0, 1]. No
    gradients, 2 * n_neighbours queries per example; it stops at the first candidate that fools the model.

    Arguments:
        model, norm, eps, seed: see :class:`rdc_lib.attacks.Attack`.
        train_x: (N, C, H, W) training images in [0, 1]; train_y: (N,) labels.
        n_neighbours: other-class training images tried per example.

    Examples::
        >>> x_adv = NeighbourAttack(optimal_dc, x_tr, y_tr, norm="linf", eps=0.1)(x, y)
    """

    def __init__(self, model, train_x: Tensor, train_y: Tensor, *, norm: str = "linf", eps: float,
                 n_neighbours: int = 8, seed: int | None = None):
        super().__init__(model, norm=norm, eps=eps, steps=max(1, n_neighbours), restarts=1, eot=1, seed=seed)
        check_images(train_x, name="train_x")
        if not isinstance(train_y, Tensor) or train_y.ndim != 1 or train_y.shape[0] != train_x.shape[0]:
            raise ValueError(f"train_y must be a ({train_x.shape[0]},) tensor of labels, one per training image")
        if isinstance(n_neighbours, bool) or not isinstance(n_neighbours, int) or n_neighbours < 1:
            raise ValueError(f"n_neighbours must be an int >= 1, got {n_neighbours!r}")
        self.train_x, self.train_y, self.n_neighbours = train_x.detach(), train_y.detach(), n_neighbours

    @property
    def max_queries(self) -> int:
        return 1 + 2 * self.n_neighbours

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        x, y = ctx.x[idx], ctx.y[idx]
        train_x = self.train_x.to(x.device, x.dtype)
        train_y = self.train_y.to(x.device)
        dist = torch.cdist(x.flatten(1).double(), train_x.flatten(1).double(),
                           compute_mode="donot_use_mm_for_euclid_dist")
        same = train_y[None, :] == y[:, None]
        same_dist = dist.masked_fill(~same | (dist == 0), float("inf"))   # x itself excluded
        x_same = train_x[same_dist.argmin(1)]
        m = min(self.n_neighbours, int((~same).sum(1).min()))
        others = dist.masked_fill(same, float("inf")).topk(m, dim=1, largest=False).indices  # (n, m)
        with torch.no_grad():
            for j in range(m):
                x_j = train_x[others[:, j]]
                for anchor in (x_same, x):
                    open_ = ctx.open(idx)
                    if not open_.any():
                        return
                    d = (x_j - anchor)[open_]
                    if self.norm == "linf":
                        step = d.sign()
                    else:
                        step = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
                    x_o = x[open_]
                    ctx.evaluate(idx[open_], project_ball(x_o + self.eps * step, x_o, self.norm, self.eps))


def transfer_pgd(
    source: Callable[[Tensor], Tensor],  # model x -> logits used to craft the examples (CNN, surrogate)
    x: Tensor,                           # (B, C, H, W) in [0, 1]
    y: Tensor,                           # (B,) labels
    *,
    norm: str = "linf",
    eps: float,
    steps: int = 20,
    loss: str = "margin",                # any name of rdc_lib.attacks.LOSSES that is untargeted
) -> Tensor:                             # (B, C, H, W) in [0, 1] inside the eps-ball
    """PGD on ``source`` from x for all ``steps`` (no early stopping, so examples go past the source's
    decision boundary and transfer better); step size 2.5 eps / steps; deterministic."""
    check_images(x)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    loss_fn = get_loss(loss)
    alpha = 2.5 * eps / steps
    x_adv = x.detach().clone()
    y = y.to(x.device)
    with eval_mode(source):
        for _ in range(steps):
            with torch.enable_grad():
                xg = x_adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(loss_fn(source(xg), y, None).sum(), xg)
            x_adv = project_ball(x_adv.detach() + alpha * steepest_direction(grad, norm), x, norm, eps)
    return x_adv.detach()
