"""The building blocks of DDPM++ (rdc_lib.models.ddpmpp), named like NVlabs EDM's ``SongUNet`` layers.

:class:`ResampleConv2d` (a convolution with optional 2x up/down resampling by a fixed filter),
:class:`PositionalEmbedding` (sinusoidal noise embedding) and :class:`UNetBlock` (GroupNorm-SiLU-conv
residual block with noise/label conditioning and optional self-attention), with the weight
initialisation and GroupNorm settings of DDPM++. Parameter names and shapes match the released
checkpoints, so official weights load one to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PositionalEmbedding", "ResampleConv2d", "UNetBlock", "group_norm", "init_", "linear"]

_SKIP_SCALE = math.sqrt(0.5)  # residual and attention outputs are scaled by 1/sqrt(2)
_EPS = 1e-6  # GroupNorm epsilon of DDPM++


def group_norm(channels: int) -> nn.GroupNorm:
    """EDM's GroupNorm: 32 groups, but at least 4 channels per group."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=_EPS)


def init_(weight: Tensor, bias: Tensor | None, gain: float) -> None:
    """Xavier-uniform weights times ``gain`` (fans include the kernel size), zero bias."""
    with torch.no_grad():
        nn.init.xavier_uniform_(weight)
        weight.mul_(gain)
        if bias is not None:
            bias.zero_()


def linear(in_features: int, out_features: int, bias: bool = True, gain: float = 1.0) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    init_(layer.weight, layer.bias, gain)
    return layer


class ResampleConv2d(nn.Module):
    """k x k convolution, optionally preceded by 2x up- or downsampling with a separable FIR filter.

    With the DDPM++ filter [1, 1], 'down' is 2x2 average pooling and 'up' is nearest-neighbour
    upsampling. Parameters ``weight`` (out, in, k, k) and ``bias`` (out,); buffer
    ``resample_filter`` (1, 1, f, f) only when resampling. (B, in, H, W) -> (B, out, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        resample: Literal["up", "down"] | None = None,
        resample_filter: Sequence[int] = (1, 1),
        gain: float = 1.0,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.resample = in_channels, out_channels, resample
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(out_channels))
        init_(self.weight, self.bias, gain)
        if resample is not None:
            f = torch.as_tensor(resample_filter, dtype=torch.float32)
            self.register_buffer("resample_filter", torch.outer(f, f)[None, None] / f.sum() ** 2)
        else:
            self.resample_filter = None

    def forward(self, x: Tensor) -> Tensor:
        if self.resample is not None:
            f = self.resample_filter.to(x.dtype)
            pad = (f.shape[-1] - 1) // 2
            channels = x.shape[1]
            if self.resample == "up":  # transposed depthwise conv; x4 keeps the mean
                x = F.conv_transpose2d(x, (f * 4).expand(channels, 1, -1, -1), stride=2, padding=pad, groups=channels)
            else:
                x = F.conv2d(x, f.expand(channels, 1, -1, -1), stride=2, padding=pad, groups=channels)
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=self.weight.shape[-1] // 2)


class PositionalEmbedding(nn.Module):
    """DDPM++ noise embedding (B,) -> (B, num_channels) = [sin(c w_i), cos(c w_i)], no parameters.

    Frequencies w_i = max_positions^(-i / (n/2 - 1)), i = 0 .. n/2 - 1 (EDM's ``endpoint=True``);
    EDM computes [cos, sin] and swaps the halves in SongUNet, which is the order returned here.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions

    def forward(self, c: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=c.device) / max(half - 1, 1)
        freqs = (1.0 / self.max_positions) ** freqs
        angles = torch.outer(c.float(), freqs).to(c.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class UNetBlock(nn.Module):
    """DDPM++ residual block (EDM's UNetBlock with adaptive_scale=False, resample_proj=True).

    h = conv0(silu(norm0(x))) [with resampling]; h = silu(norm1(h + affine(emb)));
    h = conv1(dropout(h)); x = (h + skip(x)) / sqrt(2); then, with attention, ``attn_heads``-head (default one)
    self-attention x = (proj(attn(norm2(x))) + x) / sqrt(2). x (B, in, H, W), emb (B, E).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        resample: Literal["up", "down"] | None = None,
        attention: bool = False,
        attn_heads: int = 1,  # self-attention heads (not the output heads of a multi-head denoiser)
        dropout: float = 0.0,
        resample_filter: Sequence[int] = (1, 1),
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.attn_heads = attn_heads if attention else 0
        self.dropout = dropout
        self.norm0 = group_norm(in_channels)
        self.conv0 = ResampleConv2d(in_channels, out_channels, 3, resample, resample_filter)
        self.affine = linear(emb_channels, out_channels)
        self.norm1 = group_norm(out_channels)
        self.conv1 = ResampleConv2d(out_channels, out_channels, 3, gain=1e-5)
        self.skip = None
        if in_channels != out_channels or resample is not None:
            self.skip = ResampleConv2d(in_channels, out_channels, 1, resample, resample_filter)
        if attention:
            self.norm2 = group_norm(out_channels)
            self.qkv = ResampleConv2d(out_channels, out_channels * 3, 1, gain=math.sqrt(0.2))
            self.proj = ResampleConv2d(out_channels, out_channels, 1, gain=1e-5)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb).to(h.dtype)[:, :, None, None]))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (self.skip(x) if self.skip is not None else x)) * _SKIP_SCALE
        if self.attn_heads:
            x = (self.proj(self._attend(x)) + x) * _SKIP_SCALE
        return x

    def _attend(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        heads = self.attn_heads
        # qkv channels are laid out (head, channel, {q, k, v}), as in the official weights
        q, k, v = self.qkv(self.norm2(x)).reshape(b * heads, c // heads, 3, hgt * wid).unbind(2)
        with torch.autocast(device_type=x.device.type, enabled=False):  # softmax(q^T k / sqrt(d)) in float32
            w = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(c // heads)).softmax(dim=2)
        return torch.einsum("nqk,nck->ncq", w.to(v.dtype), v).reshape(b, c, hgt, wid)
