"""A plain convolutional FiLM denoiser backbone (no attention, no normalisation): the cheap alternative
to the small U-Net.

The noise level c_noise (B,) is embedded (sinusoidal features + MLP) and the class label, when the
network is conditional, adds a learned embedding to it. Every block is conv3x3 -> FiLM (per-channel
scale and shift from the embedding) -> SiLU -> dropout -> conv3x3 with a residual connection.
Levels: full resolution (8x8 on digits) and half (4x4), one skip connection by concatenation.
With the default width 32 it has about 0.2M parameters on digits (the U-Net: 1.07M).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet_small import PositionalEmbedding, add_residual_layers, conditioning, output_conv

FILM_BACKBONE = {"model_channels": 32, "num_blocks": 1, "dropout": 0.1}


class FiLMBlock(nn.Module):
    """x (B, in_ch, H, W), emb (B, E) -> (B, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        add_residual_layers(self, in_ch, out_ch, emb_dim, dropout, modulation="film")
        # fast path switch (rdc_lib.fast_paths): fewer elementwise passes and buffers (modulate, residual)
        self.fused = True

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.film(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return self.residual(self.out_conv(self.modulate(self.conv0(x), scale, shift)), self.skip(x))

    def modulate(self, h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """silu(h * (scale + 1) + shift), scale and shift broadcast against h (fused: one multiply-add pass)."""
        if self.fused:
            return F.silu(torch.addcmul(shift, h, scale + 1))
        return F.silu(h * (scale + 1) + shift)

    def out_conv(self, h: Tensor) -> Tensor:
        """conv1(dropout(h))."""
        return self.conv1(self.dropout(h))

    def residual(self, h: Tensor, skip: Tensor) -> Tensor:
        """(h + skip) / sqrt(2) (fused: the division in place, no second buffer; the same values)."""
        if self.fused:
            return torch.add(h, skip).div_(math.sqrt(2))
        return (h + skip) / math.sqrt(2)

    def forward_split(self, low: Tensor, high: Tensor, emb: Tensor) -> Tensor:
        """``forward(cat([up(low), high], 1), emb)`` without the concatenation: low (B, c_low, H/2, W/2), high
        (B, c_high, H, W), up = nearest 2x. Both convolutions are split along their input channels (the same
        sum); the upsampled part is convolved at low resolution (:func:`conv3x3_upsampled`) and its 1x1 skip too
        (it commutes with nearest upsampling)."""
        if isinstance(self.skip, nn.Identity):
            raise ValueError("forward_split needs a block with a 1x1 skip convolution (in_ch != out_ch)")
        cl = low.shape[1]
        scale, shift = self.film(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        w, sw = self.conv0.weight, self.skip.weight
        h = self._sum(conv3x3_upsampled(low, w[:, :cl]), F.conv2d(high, w[:, cl:], self.conv0.bias, padding=1))
        h = self.out_conv(self.modulate(h, scale, shift))
        skip = self._sum(upsample2(F.conv2d(low, sw[:, :cl])), conv1x1(high, sw[:, cl:], self.skip.bias))
        return self.residual(h, skip)

    def _sum(self, a: Tensor, b: Tensor) -> Tensor:
        """a + b of two fresh tensors of the same shape (fused: into b's buffer; the same values)."""
        return b.add_(a) if self.fused else a + b


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 kernel (O, C, 1, 1); a channels-last x (B, C, H, W) goes through a
    matrix product over its channels (faster than the convolution there; the same sums)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias)


def upsample2(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling (B, C, H, W) -> (B, C, 2H, 2W) (F.interpolate: an expand-and-copy is faster
    forward, but its backward, a sum over strided dimensions, costs more than interpolate's whole round trip)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def conv3x3_upsampled(low: Tensor, weight: Tensor) -> Tensor:
    """``F.conv2d(upsample2(low), weight, padding=1)`` computed at low resolution: (B, C, h, w) -> (B, O, 2h, 2w).

    Over a nearest-upsampled input a 3x3 kernel sees only 2x2 low-resolution pixels, with summed taps that depend
    on the output pixel's parity: even rows read low rows (i - 1, i) with kernel rows (0, 1 + 2), odd rows read
    (i, i + 1) with (0 + 1, 2); the same for columns. That is one transposed convolution (stride 2, padding 1) with
    a 4x4 kernel of summed taps (rows 2, 1 + 2, 0 + 1, 0; columns alike): no upsampled copy of the input and 4 of
    the 9 multiply-adds per output pixel and channel (same sums, another order).
    """
    return F.conv_transpose2d(low, upsampled_kernel(weight), stride=2, padding=1)


def upsampled_kernel(weight: Tensor) -> Tensor:
    """The 4x4 transposed-convolution kernel (C, O, 4, 4) of :func:`conv3x3_upsampled` from a 3x3 one (O, C, 3, 3)."""
    w = weight
    rows = torch.stack([w[:, :, 2], w[:, :, 1] + w[:, :, 2], w[:, :, 0] + w[:, :, 1], w[:, :, 0]], 2)  # (O, C, 4, 3)
    r = rows
    k = torch.stack([r[..., 2], r[..., 1] + r[..., 2], r[..., 0] + r[..., 1], r[..., 0]], -1)  # (O, C, 4, 4)
    return k.transpose(0, 1)


class FiLMNet(nn.Module):
    """F(x_in, c_noise, labels) -> (B, out_channels, H, W); ``label_dim = 0``: unconditional (multi-head)."""

    def __init__(
        self,
        in_channels: int = 1,  # C of the input image
        out_channels: int = 1,  # C, or (K + 1) * C for a multi-head model
        resolution: int = 8,  # H = W, even
        label_dim: int = 11,  # label embeddings (K + 1 with the null label); 0 = none
        model_channels: int = 32,  # width at full resolution (twice that at half resolution)
        num_blocks: int = 1,  # FiLM blocks per level and direction, >= 1
        dropout: float = 0.1,  # dropout inside the blocks, in [0, 1)
        num_heads: int = 1,  # output heads (K + 1 for a multi-head model)
        head_channels: int = 0,  # > 0: every head gets its own hidden conv layer of this width
    ):
        super().__init__()
        if resolution % 2:
            raise ValueError(f"FiLMNet needs an even resolution (it works at H and H/2), got {resolution}")
        if model_channels < 1 or num_blocks < 1 or head_channels < 0:
            raise ValueError(
                f"need model_channels >= 1, num_blocks >= 1, head_channels >= 0; got "
                f"{model_channels}, {num_blocks}, {head_channels}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        c, emb_dim = model_channels, 4 * model_channels
        self.noise_embed = PositionalEmbedding(c)
        self.label_embed = nn.Embedding(label_dim, emb_dim) if label_dim > 0 else None
        self.emb_mlp = nn.Sequential(nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, c, 3, padding=1)
        self.enc = nn.ModuleList([FiLMBlock(c, c, emb_dim, dropout) for _ in range(num_blocks)])
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([FiLMBlock(2 * c, 2 * c, emb_dim, dropout) for _ in range(num_blocks)])
        self.dec = nn.ModuleList([FiLMBlock(3 * c if i == 0 else c, c, emb_dim, dropout) for i in range(num_blocks)])
        self.conv_out = output_conv(c, out_channels, num_heads, head_channels)
        # fast path switch (rdc_lib.fast_paths): the first decoder block without the concatenation (forward_split)
        self.split_decoder = True
        # fast path switch (rdc_lib.fast_paths): feature maps in channels-last memory format
        self.channels_last = True

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = conditioning(self, c_noise, labels)
        h = self._layout(self.conv_in(x))
        for block in self.enc:
            h = block(h, emb)
        return self._after_encoder(h, emb)

    def forward_classes(self, x: Tensor, c_noise: Tensor, classes: Tensor) -> Tensor:
        """F for several classes at once: x (N, C, H, W), c_noise (N,), classes (K,) for every image or (N, K) per
        image -> (N, K, out_channels, H, W).

        The same values as ``forward`` on every (image, class) row, with the label-independent start computed
        once per image instead of once per class: the input convolution, the first block's first convolution
        and its skip path (the label enters only through the FiLM scale and shift). The noise MLP also runs
        once per image. Eval mode only (dropout would draw differently); conditional networks only.
        """
        if self.label_embed is None:
            raise ValueError("forward_classes needs a class-conditional backbone (label_dim > 0)")
        n, k = x.shape[0], classes.shape[-1]
        noise_emb = self.emb_mlp(self.noise_embed(c_noise))  # (N, E)
        label_emb = self.label_embed(classes)  # (K, E) or (N, K, E)
        emb = F.silu(noise_emb.unsqueeze(1) + label_emb).reshape(n * k, -1)
        h0 = self._layout(self.conv_in(x))  # (N, c, H, W)
        first = self.enc[0]
        scale, shift = first.film(emb).reshape(n, k, -1, 1, 1).chunk(2, dim=2)  # (N, K, c, 1, 1) each
        h = first.modulate(first.conv0(h0).unsqueeze(1), scale, shift)  # (N, K, c, H, W)
        h = first.out_conv(h.reshape(n * k, *h.shape[2:]))
        h = first.residual(h.reshape(n, k, *h.shape[1:]), first.skip(h0).unsqueeze(1))
        h = h.reshape(n * k, *h.shape[2:])
        for block in self.enc[1:]:
            h = block(h, emb)
        out = self._after_encoder(h, emb)
        return out.reshape(n, k, *out.shape[1:])

    def _layout(self, h: Tensor) -> Tensor:
        return h.contiguous(memory_format=torch.channels_last) if self.channels_last else h

    def _after_encoder(self, h: Tensor, emb: Tensor) -> Tensor:
        skip = h
        h = self.down(h)
        for block in self.mid:
            h = block(h, emb)
        if self.split_decoder:
            h = self.dec[0].forward_split(h, skip, emb)
        else:
            h = self.dec[0](torch.cat([upsample2(h), skip], dim=1), emb)
        for block in self.dec[1:]:
            h = block(h, emb)
        return self.conv_out(F.silu(h))
