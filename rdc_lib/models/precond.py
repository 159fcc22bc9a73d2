"""EDM preconditioning around any backbone (Karras et al. 2022, docs/paper.md section 2).

D(x; sigma, y) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), y) with
sigma_data = 0.5. ``heads='single'``: the label is an input of F. ``heads='multi'``: F takes no
label and returns (K + 1) * C channels, one denoised image per class plus the null (unconditional)
head, so a single pass serves every class (the paper's multi-head diffusion).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..core.choices import HEADS
from .base import Denoiser


class EDMDenoiser(Denoiser):
    def __init__(
        self,
        backbone: nn.Module,  # F(x_in (B,C,H,W), c_noise (B,), labels (B,) | None) -> (B, C_out, H, W)
        num_classes: int,  # K; label K is the null label
        img_channels: int,  # C
        img_resolution: int,  # H = W
        heads: Literal["single", "multi"] = "single",
        sigma_data: float = 0.5,  # EDM sigma_data
    ):
        super().__init__()
        if heads not in HEADS:
            raise ValueError(f"unknown heads {heads!r}; valid choices: {', '.join(HEADS)}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.img_channels = int(img_channels)
        self.img_resolution = int(img_resolution)
        self.heads = heads
        self.sigma_data = float(sigma_data)
        # fast path switch (rdc_lib.fast_paths): single-head denoise_all shares the label-independent layers
        self.share_prefix = True

    def _coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sd = self.sigma_data
        sigma4 = sigma.reshape(-1, 1, 1, 1)
        c_skip = sd**2 / (sigma4**2 + sd**2)
        c_out = sigma4 * sd / (sigma4**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma4**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def _all_heads(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Multi-head pass: (B, K + 1, C, H, W), last head is the null (unconditional) model."""
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        f_x = self.backbone(c_in * x, c_noise, None)
        f_x = f_x.reshape(x.shape[0], self.num_classes + 1, *x.shape[1:]).to(x.dtype)
        return c_skip.unsqueeze(1) * x.unsqueeze(1) + c_out.unsqueeze(1) * f_x

    def forward(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """D(x; sigma, labels): x (B, C, H, W) noisy in model space, sigma (B,) > 0, labels (B,) in [0, K]."""
        batch = x.shape[0]
        sigma = self._sigma(sigma, batch, x)
        labels = self._labels(labels, batch, x.device)
        if self.heads == "multi":
            every = self._all_heads(x, sigma)
            return every[torch.arange(batch, device=x.device), labels]
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        f_x = self.backbone(c_in * x, c_noise, labels).to(x.dtype)
        return c_skip * x + c_out * f_x

    def denoise_all(self, x: Tensor, sigma: Tensor, classes: Tensor | None = None) -> Tensor:
        if self.heads == "single":
            if not self.shares_prefix():
                return super().denoise_all(x, sigma, classes)
            return self.denoise_classes(x, sigma, torch.arange(self.num_classes) if classes is None else classes)
        every = self._all_heads(x, self._sigma(sigma, x.shape[0], x))
        return every[:, : self.num_classes] if classes is None else every[:, classes.to(x.device)]

    def passes_per_denoise_all(self, num_classes: int) -> int:
        return 1 if self.heads == "multi" else num_classes

    def denoise_classes(self, x: Tensor, sigma: Tensor, classes: Tensor) -> Tensor:
        """Single-head ``denoise_all`` through the backbone's ``forward_classes`` (needs :meth:`shares_prefix`):
        x (B, C, H, W), sigma (B,), classes (K',) for every image or (B, K') per image -> (B, K', C, H, W)."""
        if not self.shares_prefix():
            raise ValueError(
                "denoise_classes needs a single-head denoiser in eval mode whose backbone has "
                "forward_classes, with share_prefix on"
            )
        c_skip, c_out, c_in, c_noise = self._coefficients(self._sigma(sigma, x.shape[0], x))
        f_x = self.backbone.forward_classes(c_in * x, c_noise, classes.to(x.device)).to(x.dtype)
        return c_skip.unsqueeze(1) * x.unsqueeze(1) + c_out.unsqueeze(1) * f_x

    def shares_prefix(self) -> bool:
        """Whether the single-head ``denoise_all`` computes the label-independent start of the backbone once
        per image for all classes (``share_prefix`` on, a backbone with ``forward_classes``, eval mode)."""
        return (
            self.share_prefix
            and self.heads == "single"
            and not self.backbone.training
            and callable(getattr(self.backbone, "forward_classes", None))
        )
