"""The closed-form optimal denoiser of a finite training set (docs/paper.md section 6).

For training images x_1..x_N (model space, x' = 2x - 1) with labels y_i, the minimiser of the
denoising loss E ||D(x_i + sigma eps; sigma, y_i) - x_i||^2 at noise level sigma is the posterior mean

    D*(x; sigma, y) = sum_{i: y_i = y} softmax_i(-||x - x_i||^2 / (2 sigma^2)) x_i,

a softmax-weighted average of the class-y training images with a Gaussian kernel; the null label
(unconditional model) takes the same average over all training images. Plugged into the diffusion
classifier it gives the *optimal* diffusion classifier, which behaves like a soft nearest-neighbour
rule. On a training image, D* at small sigma returns that image (memorization).

Implementation: the training set is sorted by class and padded to a (K, N_max, D) block, so one
distance matrix (B, K * N_max) per noisy batch serves every class (a masked, per-class softmax);
the null output is the mixture sum_y softmax_y(log Z_y) D*(x; sigma, y), which equals the softmax
over all images exactly. Everything is plain torch, hence differentiable in x.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.utils import check_images
from .base import Denoiser

__all__ = ["OptimalDenoiser"]


class OptimalDenoiser(Denoiser):
    """D*(x; sigma, y) of a finite training set; same contract as every denoiser (``heads='multi'``).

    Args:
        train_images: (N, C, H, W) training images in [0, 1] (H = W).
        train_labels: (N,) int64 labels in [0, num_classes).
        num_classes: K; default ``max(train_labels) + 1``. Label K is the null label.
        max_chunk_elements: bound on B_chunk * K * N_max entries of the kernel matrix per chunk.

    ``forward(x (B, C, H, W) in model space, sigma (B,) > 0, labels (B,) in [0, K] | None)``
    returns (B, C, H, W); ``denoise_all`` returns (B, K', C, H, W) from one distance matrix.
    """

    def __init__(
        self,
        train_images: Tensor,
        train_labels: Tensor,
        num_classes: int | None = None,
        *,
        max_chunk_elements: int = 2**20,
    ):
        super().__init__()
        images, labels, k = _validate_training_set(train_images, train_labels, num_classes)
        if max_chunk_elements < 1:
            raise ValueError(f"max_chunk_elements must be >= 1, got {max_chunk_elements}")
        self.num_classes = k
        self.img_channels = int(images.shape[1])
        self.img_resolution = int(images.shape[2])
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        self.heads = "multi"  # one distance computation serves all classes
        self.kind = "optimal"
        self.max_chunk_elements = int(max_chunk_elements)

        flat = (images * 2 - 1).reshape(images.shape[0], -1)  # model space, (N, D)
        counts = torch.bincount(labels, minlength=k)
        n_max = int(counts.max())
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        # position of each sorted image inside its class block
        rank = torch.arange(labels.numel()) - starts[labels[order]]
        slot = labels[order] * n_max + rank  # index into the (K * N_max) rows
        center = flat.mean(0)  # distances are shift-invariant;
        padded = torch.zeros(k * n_max, flat.shape[1], dtype=flat.dtype)  # centering limits cancellation
        padded[slot] = flat[order] - center
        mask = torch.zeros(k * n_max, dtype=torch.bool)
        mask[slot] = True
        self.register_buffer("train_flat", flat, persistent=False)  # (N, D) model space
        self.register_buffer("train_labels", labels.clone(), persistent=False)
        self.register_buffer("center", center, persistent=False)  # (D,)
        self.register_buffer("padded", padded, persistent=False)  # (K * N_max, D), centred
        self.register_buffer("padded_sq", (padded**2).sum(1), persistent=False)  # (K * N_max,)
        self.register_buffer("valid", mask, persistent=False)  # (K * N_max,)
        self.register_buffer("class_counts", counts, persistent=False)  # (K,)
        self.n_max = n_max

    # ---- validation -------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x has shape {got} but the optimal denoiser's training images have shape "
                f"(N, {', '.join(map(str, self.image_shape))}); expected x of shape "
                f"(B, {', '.join(map(str, self.image_shape))})"
            )
        if not x.dtype.is_floating_point:
            raise ValueError(f"x must be a floating-point tensor (float32/float64), got dtype {x.dtype}")

    def _check_sigma(self, sigma: Tensor) -> None:
        if not torch.isfinite(sigma).all() or (sigma <= 0).any():
            raise ValueError(
                f"sigma must be finite and > 0, got values in [{float(sigma.min()):.4g}, {float(sigma.max()):.4g}]"
            )

    def _check_classes(self, labels: Tensor, name: str) -> None:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor (int64), got dtype {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(
                f"{name} has values in [{int(labels.min())}, {int(labels.max())}], expected "
                f"labels in [0, {self.num_classes}] ({self.num_classes} = null label)"
            )

    # ---- core -------------------------------------------------------------------------------
    def _chunk_all(self, x: Tensor, sigma: Tensor) -> Tensor:
        """(B, D) flat model-space inputs, (B,) sigmas -> (B, K + 1, D); last row is the null label."""
        dtype, device = x.dtype, x.device
        padded = self.padded.to(device, dtype)
        padded_sq = self.padded_sq.to(device, dtype)
        xc = x - self.center.to(device, dtype)
        k, n_max = self.num_classes, self.n_max
        # squared distances ||x - x_i||^2 = |x|^2 + |x_i|^2 - 2 x.x_i, clamped at 0 against rounding
        dist = ((xc**2).sum(1, keepdim=True) + padded_sq - 2 * xc @ padded.T).clamp_min(0)
        # 1 / (2 sigma^2); sigma floored so that the scale stays finite in float32
        floor = 1e-15 if dtype != torch.float16 else 1e-3
        scale = 0.5 / sigma.clamp_min(floor).reshape(-1, 1) ** 2
        logits = (-dist * scale).masked_fill(~self.valid.to(device), float("-inf")).reshape(-1, k, n_max)
        weights = torch.softmax(logits, dim=-1)  # (B, K, N_max)
        per_class = torch.bmm(weights.transpose(0, 1), padded.reshape(k, n_max, -1)).transpose(0, 1)
        # unconditional posterior mean = mixture of class means with weights softmax_y(log Z_y)
        mix = torch.softmax(torch.logsumexp(logits, dim=-1), dim=-1)  # (B, K)
        null = (mix.unsqueeze(-1) * per_class).sum(1, keepdim=True)
        return torch.cat([per_class, null], dim=1) + self.center.to(device, dtype)

    def _all(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Every class plus null: (B, K + 1, C, H, W), chunked over the batch."""
        batch = x.shape[0]
        flat = x.reshape(batch, -1)
        per_chunk = max(1, self.max_chunk_elements // (self.num_classes * self.n_max))
        parts = [self._chunk_all(flat[i : i + per_chunk], sigma[i : i + per_chunk]) for i in range(0, batch, per_chunk)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
        return out.reshape(batch, self.num_classes + 1, *self.image_shape)

    # ---- contract ---------------------------------------------------------------------------
    def forward(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """D*(x; sigma, labels): x (B, C, H, W) noisy, model space; sigma (B,) > 0; labels (B,) in [0, K]."""
        self._check_input(x)
        batch = x.shape[0]
        sigma = self._sigma(sigma, batch, x)
        self._check_sigma(sigma)
        labels = self._labels(labels, batch, x.device)
        self._check_classes(labels, "labels")
        every = self._all(x, sigma)
        return every[torch.arange(batch, device=x.device), labels]

    def denoise_all(self, x: Tensor, sigma: Tensor | float, classes: Tensor | None = None) -> Tensor:
        """(B, K', C, H, W) for ``classes`` (default all K real classes; K selects the null label)."""
        self._check_input(x)
        sigma = self._sigma(sigma, x.shape[0], x)
        self._check_sigma(sigma)
        every = self._all(x, sigma)
        if classes is None:
            return every[:, : self.num_classes]
        classes = classes.to(x.device).reshape(-1)
        self._check_classes(classes, "classes")
        return every[:, classes]

    def passes_per_denoise_all(self, num_classes: int) -> int:
        return 1

    def extra_repr(self) -> str:
        return (
            f"num_train={self.train_flat.shape[0]}, num_classes={self.num_classes}, "
            f"image_shape={self.image_shape}, kind='optimal'"
        )


def _validate_training_set(images: Tensor, labels: Tensor, num_classes: int | None) -> tuple[Tensor, Tensor, int]:
    """Check the training set; returns (images float, labels int64 (N,), K)."""
    if isinstance(images, Tensor) and images.ndim >= 1 and images.shape[0] == 0:
        raise ValueError(
            "the training set is empty (train_images has 0 images); "
            "the optimal denoiser needs at least one image in each of at least two classes"
        )
    check_images(images, name="train_images")
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"train_images must be square (H = W), got shape {tuple(images.shape)}")
    if not isinstance(labels, Tensor) or labels.ndim != 1:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"train_labels must be a 1-D tensor of shape (N,) = ({images.shape[0]},), got {got}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"train_labels must be an integer tensor (int64), got dtype {labels.dtype}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"train_labels has {labels.shape[0]} labels but train_images has "
            f"{images.shape[0]} images (shape {tuple(images.shape)}); expected one label per image"
        )
    labels = labels.detach().to("cpu", torch.long)
    if int(labels.min()) < 0:
        raise ValueError(f"train_labels has a negative label {int(labels.min())}; expected labels in [0, K)")
    if torch.unique(labels).numel() < 2:
        raise ValueError(
            f"the training set has a single class ({int(labels[0])}); a classifier needs at least "
            "two classes with training images"
        )
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if k < 2:
        raise ValueError(f"num_classes must be >= 2, got {k}")
    if int(labels.max()) >= k:
        raise ValueError(
            f"train_labels has labels in [{int(labels.min())}, {int(labels.max())}], expected labels "
            f"in [0, {k - 1}] for num_classes={k}"
        )
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"classes {empty} have no training images; D*(x; sigma, y) is undefined for them "
            f"(pass num_classes = the number of classes present, or add images)"
        )
    return images.detach().to("cpu"), labels, k
