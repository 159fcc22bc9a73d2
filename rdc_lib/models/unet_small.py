"""A small U-Net backbone for low-resolution images (8x8 digits; works for any power-of-two size).

Residual blocks with GroupNorm, SiLU and a noise/label embedding that scales and shifts the
features (as in EDM's DDPM++ UNetBlock), self-attention at the lowest resolution, skip
connections by concatenation. The output layer is zero-initialised, so an untrained network
denoises with c_skip alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def output_conv(in_channels: int, out_channels: int, num_heads: int, head_channels: int) -> nn.Module:
    """The last layer (zero-initialised): a 3x3 conv, or with ``head_channels`` > 0 a per-head hidden layer
    (a grouped conv keeps the heads' parameters separate) before it. Shared by every small backbone."""
    if head_channels > 0:
        hidden = num_heads * head_channels
        last = nn.Conv2d(hidden, out_channels, 3, padding=1, groups=num_heads)
        out: nn.Module = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU(), last)
    else:
        last = out = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return out


def conditioning(net: nn.Module, c_noise: Tensor, labels: Tensor | None) -> Tensor:
    """The embedding (B, E) that conditions every block: noise embedding (+ label embedding), SiLU.

    ``net`` has ``noise_embed``, ``emb_mlp`` and ``label_embed`` (None for an unconditional or multi-head net).
    """
    emb = net.emb_mlp(net.noise_embed(c_noise))
    if net.label_embed is not None:
        if labels is None:
            raise ValueError("this backbone is class-conditional: labels (B,) are required")
        emb = emb + net.label_embed(labels)
    return F.silu(emb)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar per example: (B,) -> (B, dim)."""

    def __init__(self, dim: int, max_positions: int = 10000):
        super().__init__()
        self.dim = dim
        self.max_positions = max_positions

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.arange(half, dtype=torch.float32, device=t.device) / half
        freqs = (1 / self.max_positions) ** freqs
        angles = t.float().unsqueeze(1) * freqs.unsqueeze(0) * 1000.0
        return torch.cat([angles.cos(), angles.sin()], dim=1).to(t.dtype)


def add_residual_layers(
    block: nn.Module, in_ch: int, out_ch: int, emb_dim: int, dropout: float, modulation: str
) -> None:
    """The layers every embedding-modulated residual block has, created in this order (the order of the random
    initialisation): ``conv0`` (3x3), the modulation ``Linear(emb_dim, 2 * out_ch)`` named ``modulation``,
    ``dropout``, a zero-initialised ``conv1`` (3x3: the block starts as its skip) and ``skip`` (1x1 when the
    widths differ)."""
    block.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
    block.add_module(modulation, nn.Linear(emb_dim, 2 * out_ch))
    block.dropout = nn.Dropout(dropout)
    block.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
    nn.init.zeros_(block.conv1.weight)
    nn.init.zeros_(block.conv1.bias)
    block.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()


class ResBlock(nn.Module):
    """GN-SiLU-conv, then embedding scale/shift, GN-SiLU-dropout-conv, plus a (1x1) skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm0 = nn.GroupNorm(_groups(in_ch), in_ch)
        add_residual_layers(self, in_ch, out_ch, emb_dim, dropout, modulation="affine")
        self.norm1 = nn.GroupNorm(_groups(out_ch), out_ch)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return (h + self.skip(x)) / math.sqrt(2)


class SelfAttention(nn.Module):
    """Single-head self-attention over spatial positions with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


class SmallUNet(nn.Module):
    """F(x_in, c_noise, labels) -> (B, out_channels, H, W).

    ``label_dim`` > 0 adds a learned embedding of labels in [0, label_dim) (include the null label);
    ``label_dim = 0`` makes the network unconditional (used by the multi-head model).
    """

    def __init__(
        self,
        in_channels: int = 1,  # C of the input image
        out_channels: int = 1,  # C, or (K + 1) * C for a multi-head model
        resolution: int = 8,  # H = W of the input
        label_dim: int = 11,  # number of label embeddings (K + 1 with the null label); 0 = none
        model_channels: int = 64,  # base width
        channel_mult: tuple[int, ...] = (1, 2, 2),  # width multiplier per resolution level
        num_blocks: int = 2,  # residual blocks per level
        dropout: float = 0.1,  # dropout inside residual blocks
        num_heads: int = 1,  # output heads (K + 1 for a multi-head model)
        head_channels: int = 0,  # > 0: every head gets its own hidden conv layer of this width
    ):
        super().__init__()
        if resolution % (2 ** (len(channel_mult) - 1)) != 0:
            raise ValueError(
                f"resolution {resolution} is not divisible by 2^{len(channel_mult) - 1} (levels {channel_mult})"
            )
        emb_dim = 4 * model_channels
        self.noise_embed = PositionalEmbedding(model_channels)
        self.label_embed = nn.Embedding(label_dim, emb_dim) if label_dim > 0 else None
        self.emb_mlp = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.down.append(ResBlock(ch, model_channels * mult, emb_dim, dropout))
                ch = model_channels * mult
                skip_channels.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_channels.append(ch)

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), SelfAttention(ch), ResBlock(ch, ch, emb_dim, dropout)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.up.append(ResBlock(ch + skip_channels.pop(), model_channels * mult, emb_dim, dropout))
                ch = model_channels * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))

        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = output_conv(ch, out_channels, num_heads, head_channels)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = conditioning(self, c_noise, labels)

        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
