"""DDPM++ 32x32 U-Net whose weights are named like NVlabs EDM's released CIFAR-10 networks.

EDM (Karras et al. 2022) re-implements Song et al.'s DDPM++ as ``SongUNet`` and wraps it in
``EDMPrecond``; the released ``edm-cifar10-32x32-{cond,uncond}-vp.pkl`` use it with
model_channels 128, channel_mult [2, 2, 2], 4 blocks per level, attention at 16x16, positional
noise embedding, standard encoder/decoder, resample filter [1, 1] and augment_dim 9
(docs/paper.md section 2). This module is our own implementation of that network: the same
computation and the same parameter names and shapes, so official weights load one to one.

Name mapping (``edm_state_dict`` / ``load_edm_state_dict``): the official ``EDMPrecond`` holds the
U-Net as ``model``; our :class:`~rdc_lib.models.precond.EDMDenoiser` holds it as ``backbone``. A key
``model.<rest>`` of the official state dict is ``backbone.<rest>`` here, and nothing else changes
(``model.enc.32x32_block0.conv0.weight`` <-> ``backbone.enc.32x32_block0.conv0.weight``). As in
EDM, the 2x2 resampling filters of the up/down convolutions are (persistent) buffers named
``resample_filter``; they are constants and are checked, not learned.

Labels: our backbone contract is F(x_in, c_noise, labels) with int labels in [0, K], K = null.
The official conditional network takes one-hot class vectors (B, label_dim); we pass the one-hot
of y, and the zero vector for the null label, which is EDM's own convention for "no label"
(``class_labels=None`` and classifier-free label dropout both use zeros). The released conditional
CIFAR-10 network was trained without label dropout, so its null output is *not* an unconditional
model: pair it with the released unconditional network instead (``edm_import.PairedDenoiser``).
``label_dim=0`` builds an unconditional network that ignores labels.

Multi-head (docs/paper.md section 5): ``heads='multi'`` builds the same U-Net without label input
whose output convolution ``dec.{res}x{res}_aux_conv`` has (K + 1) * C channels, head-major (head k
is channels k*C .. k*C + C - 1; head K is the null head). :func:`widen_to_multihead` initialises
it from a single-head network: every other weight is copied by name and the output layer is
replicated per head, so fine-tuning starts from the single-head model.

Mixed precision: ``use_fp16=True`` runs the U-Net body under float16 autocast on CUDA only (EDM's
``use_fp16``); the attention softmax, the preconditioning and every loss stay in float32. On
other devices the flag does nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DenoiserConfig, register_architecture
from .ddpmpp_blocks import PositionalEmbedding, ResampleConv2d, UNetBlock, group_norm, linear
from .precond import EDMDenoiser

__all__ = [
    "ARCH_KEYS",
    "DDPMPP_CIFAR10",
    "DDPMpp",
    "edm_state_dict",
    "load_edm_state_dict",
    "widen_to_multihead",
    "set_fp16",
    "ddpmpp_config",
]

# Architecture of the released CIFAR-10 networks (EDM train.py --arch=ddpmpp, --cond=0/1).
# dropout 0.13 is EDM's CIFAR-10 training default; it only matters when training.
DDPMPP_CIFAR10: dict = dict(
    model_channels=128,
    channel_mult=(2, 2, 2),
    channel_mult_emb=4,
    num_blocks=4,
    attn_resolutions=(16,),
    dropout=0.13,
    augment_dim=9,
    channel_mult_noise=1,
    resample_filter=(1, 1),
)


class DDPMpp(nn.Module):
    """DDPM++ U-Net backbone F(x_in, c_noise, labels) -> (B, out_channels, H, W).

    x_in (B, in_channels, H, W) preconditioned input; c_noise (B,) = ln(sigma) / 4; labels (B,)
    int in [0, label_dim] (label_dim = null = zero one-hot) or None (all null); ``augment_labels``
    (B, augment_dim) is EDM's augmentation conditioning, None (off) at inference.
    Submodule names follow EDM's SongUNet: ``map_*``, ``enc.{res}x{res}_*``, ``dec.{res}x{res}_*``.
    """

    def __init__(
        self,
        img_resolution: int = 32,  # H = W
        in_channels: int = 3,  # C of the input image
        out_channels: int = 3,  # C, or (K + 1) * C for a multi-head model
        label_dim: int = 10,  # classes of the one-hot label input; 0 = unconditional
        augment_dim: int = 9,  # EDM augmentation-label size (weights only used if labels given)
        model_channels: int = 128,  # base width
        channel_mult: Sequence[int] = (2, 2, 2),  # width multiplier per resolution level
        channel_mult_emb: int = 4,  # embedding width = model_channels * channel_mult_emb
        num_blocks: int = 4,  # residual blocks per level
        attn_resolutions: Sequence[int] = (16,),  # resolutions with self-attention
        dropout: float = 0.13,  # dropout inside residual blocks (training only)
        channel_mult_noise: int = 1,  # noise embedding width = model_channels * this
        resample_filter: Sequence[int] = (1, 1),  # up/down-sampling FIR filter
        use_fp16: bool = False,  # float16 autocast of the body on CUDA
    ):
        super().__init__()
        levels = len(channel_mult)
        if model_channels < 4 or levels < 1 or img_resolution % (2 ** (levels - 1)) != 0:
            raise ValueError(
                f"DDPM++ needs model_channels >= 4 and img_resolution ({img_resolution}) divisible by "
                f"2^(levels - 1) = {2 ** (levels - 1)}; got model_channels={model_channels}, "
                f"channel_mult={list(channel_mult)}"
            )
        if label_dim < 0 or augment_dim < 0:
            raise ValueError(f"label_dim and augment_dim must be >= 0, got {label_dim}, {augment_dim}")
        self.img_resolution, self.label_dim, self.use_fp16 = img_resolution, label_dim, bool(use_fp16)
        self.out_channels = out_channels
        emb = model_channels * channel_mult_emb
        noise = model_channels * channel_mult_noise
        block = dict(emb_channels=emb, dropout=dropout, resample_filter=tuple(resample_filter))

        self.map_noise = PositionalEmbedding(noise)
        self.map_label = linear(label_dim, noise) if label_dim else None
        self.map_augment = linear(augment_dim, noise, bias=False) if augment_dim else None
        self.map_layer0 = linear(noise, emb)
        self.map_layer1 = linear(emb, emb)

        self.enc = nn.ModuleDict()
        skips: list[int] = []
        ch = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = ResampleConv2d(ch, model_channels, 3)
                ch = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(ch, ch, resample="down", **block)
            skips.append(ch)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(
                    ch, model_channels * mult, attention=res in attn_resolutions, **block
                )
                ch = model_channels * mult
                skips.append(ch)

        self.dec = nn.ModuleDict()
        self._skip_blocks: set[str] = set()  # decoder blocks that concatenate an encoder output
        for level in reversed(range(levels)):
            res, mult = img_resolution >> level, channel_mult[level]
            if level == levels - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(ch, ch, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(ch, ch, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(ch, ch, resample="up", **block)
            for i in range(num_blocks + 1):
                name = f"{res}x{res}_block{i}"
                self.dec[name] = UNetBlock(
                    ch + skips.pop(),
                    model_channels * mult,
                    attention=(i == num_blocks and res in attn_resolutions),
                    **block,
                )
                self._skip_blocks.add(name)
                ch = model_channels * mult
        self._out = f"{img_resolution}x{img_resolution}"
        self.dec[f"{self._out}_aux_norm"] = group_norm(ch)
        self.dec[f"{self._out}_aux_conv"] = ResampleConv2d(ch, out_channels, 3, gain=1e-5)

    def one_hot(self, labels: Tensor | None, batch: int, like: Tensor) -> Tensor | None:
        """(B, label_dim) one-hot class vectors, zeros for the null label ``label_dim``; None if unconditional."""
        if not self.label_dim:
            return None
        if labels is None:
            return like.new_zeros(batch, self.label_dim)
        labels = labels.reshape(-1).long()
        if labels.numel() != batch or bool((labels < 0).any() | (labels > self.label_dim).any()):
            raise ValueError(
                f"labels must be {batch} ints in [0, {self.label_dim}] ({self.label_dim} = null), "
                f"got shape {tuple(labels.shape)} with values {labels.unique().tolist()[:10]}"
            )
        return F.one_hot(labels, self.label_dim + 1)[:, : self.label_dim].to(like.dtype)

    def forward(
        self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        class_vec = self.one_hot(labels, x.shape[0], x)
        if self.use_fp16 and x.device.type != "cpu":  # fp16 autocast on accelerators; CPU stays float32
            with torch.autocast(device_type=x.device.type, dtype=torch.float16):
                return self.forward_edm(x, c_noise, class_vec, augment_labels).float()
        return self.forward_edm(x, c_noise, class_vec, augment_labels)

    def forward_edm(
        self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None, augment_labels: Tensor | None = None
    ) -> Tensor:
        """The official SongUNet interface: one-hot ``class_labels`` (B, label_dim) or None."""
        emb = self.map_noise(c_noise.reshape(-1))
        if self.map_label is not None and class_labels is not None:
            emb = emb + self.map_label(class_labels * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for name, block in self.dec.items():
            if not isinstance(block, UNetBlock):
                continue
            if name in self._skip_blocks:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        out = self.dec[f"{self._out}_aux_norm"](x)
        return self.dec[f"{self._out}_aux_conv"](F.silu(out))


# ---------------------------------------------------------------------------------------------
# Registry, official names, multi-head widening.

# The sizes and structure of the network (what an imported EDM checkpoint carries over, edm_import) ...
ARCH_KEYS = (
    "augment_dim",
    "model_channels",
    "channel_mult",
    "channel_mult_emb",
    "num_blocks",
    "attn_resolutions",
    "dropout",
    "channel_mult_noise",
    "resample_filter",
)
# ... and every key of ``DenoiserConfig.backbone`` for arch 'ddpmpp'.
_BACKBONE_KEYS = ("label_dim", *ARCH_KEYS, "use_fp16")


def _build_ddpmpp(cfg: DenoiserConfig) -> DDPMpp:
    """Backbone for ``DenoiserConfig(arch='ddpmpp', ...)``; ``cfg.backbone`` keys as in :class:`DDPMpp`."""
    kwargs = dict(cfg.backbone)
    unknown = sorted(set(kwargs) - set(_BACKBONE_KEYS))
    if unknown:
        raise ValueError(f"unknown ddpmpp backbone keys {unknown}; valid keys: {', '.join(_BACKBONE_KEYS)}")
    label_dim = kwargs.pop("label_dim", None)
    if cfg.heads == "multi":
        if label_dim not in (None, 0):
            raise ValueError(f"a multi-head ddpmpp has no label input: label_dim must be 0 or unset, got {label_dim}")
        label_dim, out_channels = 0, cfg.img_channels * (cfg.num_classes + 1)
    else:
        label_dim = cfg.num_classes if label_dim is None else int(label_dim)
        if label_dim not in (0, cfg.num_classes):
            raise ValueError(
                f"ddpmpp label_dim must be num_classes ({cfg.num_classes}, conditional) or 0 "
                f"(unconditional), got {label_dim}"
            )
        out_channels = cfg.img_channels
    return DDPMpp(
        img_resolution=cfg.img_resolution,
        in_channels=cfg.img_channels,
        out_channels=out_channels,
        label_dim=label_dim,
        **kwargs,
    )


register_architecture("ddpmpp", _build_ddpmpp)


def ddpmpp_config(
    num_classes: int = 10,
    heads: str = "single",
    *,
    conditional: bool = True,
    img_channels: int = 3,
    img_resolution: int = 32,
    **overrides,
) -> DenoiserConfig:
    """DenoiserConfig of the CIFAR-10 DDPM++ (``overrides`` change backbone keys, e.g. model_channels=16)."""
    backbone = {k: list(v) if isinstance(v, tuple) else v for k, v in {**DDPMPP_CIFAR10, **overrides}.items()}
    if heads == "single" and not conditional:
        backbone["label_dim"] = 0
    return DenoiserConfig(
        arch="ddpmpp",
        num_classes=num_classes,
        img_channels=img_channels,
        img_resolution=img_resolution,
        heads=heads,
        backbone=backbone,
    )


def _check_ddpmpp(denoiser: nn.Module) -> DDPMpp:
    if not isinstance(denoiser, EDMDenoiser) or not isinstance(denoiser.backbone, DDPMpp):
        raise ValueError(
            f"expected an EDMDenoiser with a DDPMpp backbone (arch 'ddpmpp'), got {type(denoiser).__name__}"
            f"{'' if not isinstance(denoiser, EDMDenoiser) else ' with ' + type(denoiser.backbone).__name__}"
        )
    return denoiser.backbone


def edm_state_dict(denoiser: EDMDenoiser) -> dict[str, Tensor]:
    """Our weights under the official EDMPrecond names (``backbone.`` -> ``model.``)."""
    _check_ddpmpp(denoiser)
    return {"model." + k[len("backbone.") :]: v for k, v in denoiser.state_dict().items()}


def _describe(names: list[str], what: str) -> str:
    return f"{len(names)} {what}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"


def load_edm_state_dict(
    denoiser: EDMDenoiser, official_state: Mapping[str, Tensor], source: str = "EDM state dict"
) -> EDMDenoiser:
    """Load an official ``EDMPrecond`` state dict (keys ``model.*``) into a ddpmpp denoiser, strictly.

    Any missing, unexpected or mis-shaped key, or a ``resample_filter`` different from the
    network's, raises ``ValueError`` naming the keys (under their official names).
    """
    _check_ddpmpp(denoiser)
    own = edm_state_dict(denoiser)
    missing = sorted(set(own) - set(official_state))
    unexpected = sorted(set(official_state) - set(own))
    shaped = sorted(k for k in set(own) & set(official_state) if tuple(own[k].shape) != tuple(official_state[k].shape))
    problems = []
    if missing:
        problems.append(_describe(missing, "missing keys"))
    if unexpected:
        problems.append(_describe(unexpected, "unexpected keys"))
    if shaped:
        problems.append(
            _describe(
                [f"{k} (file {tuple(official_state[k].shape)}, network {tuple(own[k].shape)})" for k in shaped],
                "keys with wrong shapes",
            )
        )
    if not problems:
        filters = [
            k
            for k in own
            if k.endswith("resample_filter")
            and not torch.allclose(official_state[k].float().cpu(), own[k].float().cpu())
        ]
        if filters:
            problems.append(_describe(filters, "resample filters that differ from the architecture's"))
    if problems:
        raise ValueError(f"{source} does not match the DDPM++ architecture: " + "; ".join(problems))
    mapped = {"backbone." + k[len("model.") :]: v for k, v in official_state.items()}
    denoiser.load_state_dict(mapped, strict=True)
    return denoiser


def widen_to_multihead(multi: EDMDenoiser, single_state: Mapping[str, Tensor]) -> list[str]:
    """Initialise a multi-head ddpmpp denoiser from a single-head one's state dict (our ``backbone.*`` names).

    The output layer ``dec.{res}x{res}_aux_conv`` is replicated for each of the K + 1 heads; every other
    weight is copied by name. A conditional source's label input ``map_label`` is dropped after folding
    what it adds for the null label (its bias b) into ``map_layer0``'s bias (b0 + W0 b), so every head
    starts as the source's null-label (unconditional) output. Returns the dropped source names.
    Missing or mis-shaped weights raise ValueError.
    """
    backbone = _check_ddpmpp(multi)
    if multi.heads != "multi":
        raise ValueError(f"widen_to_multihead needs a heads='multi' denoiser, got heads={multi.heads!r}")
    heads = multi.num_classes + 1
    out_prefix = f"backbone.dec.{backbone._out}_aux_conv."
    target = multi.state_dict()
    new, problems = {}, []
    single_state = dict(single_state)
    label_bias = single_state.get("backbone.map_label.bias")
    if label_bias is not None and "backbone.map_layer0.bias" in single_state:
        w0 = single_state["backbone.map_layer0.weight"]
        single_state["backbone.map_layer0.bias"] = single_state["backbone.map_layer0.bias"] + w0 @ label_bias.to(
            w0.dtype
        )
    for key, value in target.items():
        if key not in single_state:
            problems.append(f"{key} missing")
            continue
        src = single_state[key]
        if key.startswith(out_prefix):
            src = src.repeat(heads, *([1] * (src.ndim - 1)))  # head-major: channel h*C + c
        if tuple(src.shape) != tuple(value.shape):
            problems.append(f"{key}: source {tuple(single_state[key].shape)} vs multi-head {tuple(value.shape)}")
            continue
        new[key] = src
    if problems:
        raise ValueError("cannot widen to multi-head: " + "; ".join(problems[:6]))
    multi.load_state_dict(new, strict=True)
    return sorted(set(single_state) - set(target))


def set_fp16(denoiser: nn.Module, enabled: bool = True) -> None:
    """Switch float16 autocast of every DDPM++ body inside ``denoiser`` on or off (CUDA only)."""
    for module in denoiser.modules():
        if isinstance(module, DDPMpp):
            module.use_fp16 = bool(enabled)
