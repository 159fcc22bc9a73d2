"""The one denoiser contract every part of rdc_lib speaks (EDM / k-diffusion style).

A denoiser maps a noisy image x (B, C, H, W), its noise level sigma (B,) and class labels (B,)
to an estimate of the clean image D(x; sigma, y) (B, C, H, W). Images live in the model space
[-1, 1] (x' = 2x - 1, docs/paper.md section 2). Label ``num_classes`` is the *null* label: it
selects the unconditional model p(x) used by likelihood maximization; ``labels=None`` means null.

``denoise_all`` returns the denoised image for several classes at once (B, K', C, H, W). A
multi-head network does that in one pass (docs/paper.md section 5); a single-head network batches
K' passes into one call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Denoiser(nn.Module):
    """Base class: subclasses implement ``forward``; ``denoise_all`` has a batched default."""

    num_classes: int
    img_channels: int
    img_resolution: int
    heads: str = "single"

    @property
    def null_label(self) -> int:
        """Index of the unconditional (null) label."""
        return self.num_classes

    def _labels(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if labels is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        return labels.to(device=device, dtype=torch.long).expand(batch) if labels.ndim == 0 else labels

    @staticmethod
    def _sigma(sigma: Tensor | float, batch: int, like: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
        return sigma.expand(batch) if sigma.ndim == 0 else sigma.reshape(batch)

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def denoise_all(self, x: Tensor, sigma: Tensor, classes: Tensor | None = None) -> Tensor:
        """Denoised images for every class in ``classes`` (default: all K), shape (B, K', C, H, W)."""
        batch = x.shape[0]
        if classes is None:
            classes = torch.arange(self.num_classes, device=x.device)
        k = classes.numel()
        sigma = self._sigma(sigma, batch, x)
        x_rep = x.unsqueeze(1).expand(batch, k, *x.shape[1:]).reshape(batch * k, *x.shape[1:])
        s_rep = sigma.unsqueeze(1).expand(batch, k).reshape(-1)
        y_rep = classes.to(x.device).unsqueeze(0).expand(batch, k).reshape(-1)
        return self(x_rep, s_rep, y_rep).reshape(batch, k, *x.shape[1:])

    def passes_per_denoise_all(self, num_classes: int) -> int:
        """How many single-image network evaluations ``denoise_all`` costs per image."""
        return num_classes
