"""Safe import of NVlabs EDM network pickles, and pairing of a conditional with an unconditional denoiser.

The EDM release (``edm-cifar10-32x32-cond-vp.pkl``, ``edm-cifar10-32x32-uncond-vp.pkl``) is a pickle of
a dict ``{'ema': EDMPrecond, 'loss_fn': ..., 'augment_pipe': ..., 'dataset_kwargs': dict}``. EDM's
persistent classes (``torch_utils.persistence``) pickle each module as
``_reconstruct_persistent_obj(meta)`` with ``meta = {type: 'class', version, module_src, class_name,
state}``, where ``module_src`` is Python source that EDM would ``exec`` on load and ``state`` is the
module's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, ...). Tensors use
torch's standard reduction (``torch._utils._rebuild_parameter`` / ``_rebuild_tensor_v2``, storages via
``torch.storage._load_from_bytes``, i.e. a nested ``torch.save`` blob). ``torch.nn.ModuleDict``
containers are pickled as ordinary objects.

:func:`import_edm_pickle` reads such a file with the restricted unpickler of ``rdc_lib.core.safe_pickle``:

- the persistence reconstructor is replaced by :func:`_record_persistent`, which records class name and
  state and never imports or executes ``module_src``;
- ``ModuleDict``/``ModuleList``/``Sequential`` and ``dnnlib.util.EasyDict`` become inert stand-ins;
- nested storage blobs are read by ``torch.load(weights_only=True)``;
- only the tensor/container/numpy reconstructors listed in ``_ALLOWED`` are admitted; anything else
  raises :class:`~rdc_lib.core.safe_pickle.RefusedGlobalError` naming the global, before it is called.

It then checks the recorded ``EDMPrecond``/``SongUNet`` configuration against the DDPM++ preset,
loads the weights strictly by name into our ``ddpmpp`` denoiser and writes a safetensors checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..core.choices import HEADS, check_choice
from ..core.safe_pickle import RefusedGlobalError, RestrictedUnpickler
from .base import Denoiser
from .checkpoints import load_denoiser, save_denoiser
from .config import DenoiserConfig, build_denoiser
from .ddpmpp import ARCH_KEYS, DDPMPP_CIFAR10, load_edm_state_dict, widen_to_multihead

__all__ = [
    "CIFAR10_EXPECTED",
    "EDMNetworkInfo",
    "PairedDenoiser",
    "PersistentRecord",
    "import_edm_pickle",
    "load_paired_denoiser",
    "read_edm_pickle",
]

# SongUNet's constructor defaults (EDM training/networks.py): keys missing from the recorded
# init_kwargs take these values.
_SONGUNET_DEFAULTS: dict[str, Any] = dict(
    label_dim=0,
    augment_dim=0,
    model_channels=128,
    channel_mult=[1, 2, 2, 2],
    channel_mult_emb=4,
    num_blocks=4,
    attn_resolutions=[16],
    dropout=0.10,
    label_dropout=0,
    embedding_type="positional",
    channel_mult_noise=1,
    encoder_type="standard",
    decoder_type="standard",
    resample_filter=[1, 1],
)
# What our DDPMpp implements (any sizes, this structure).
_SUPPORTED = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard")
# The released CIFAR-10 networks: the size check of import_edm_pickle (label_dim 10 = cond, 0 = uncond).
CIFAR10_EXPECTED: dict[str, Any] = dict(
    img_resolution=32,
    in_channels=3,
    out_channels=3,
    **{k: v for k, v in DDPMPP_CIFAR10.items() if k != "dropout"},
)


# ---------------------------------------------------------------------------------------------
# Stand-ins created by the restricted unpickler.


@dataclass
class PersistentRecord:
    """What EDM's ``_reconstruct_persistent_obj(meta)`` would have rebuilt, as inert data."""

    class_name: str
    version: Any
    module_src_sha256: str  # the embedded source is hashed, never executed
    state: dict = field(repr=False)

    @property
    def init_kwargs(self) -> dict:
        kwargs = self.state.get("_init_kwargs") or {}
        return dict(kwargs) if isinstance(kwargs, Mapping) else {}


class _ContainerRecord:
    """Stand-in for torch.nn.ModuleDict / ModuleList / Sequential: keeps the pickled ``__dict__``."""

    def __setstate__(self, state: Any) -> None:
        self.class_name = "torch-container"
        self.state = state if isinstance(state, dict) else {}


class _PlainDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict subclass)."""


def _record_persistent(meta: Any) -> PersistentRecord:
    if not isinstance(meta, Mapping) or meta.get("type") != "class":
        raise pickle.UnpicklingError(
            f"persistent object with unsupported meta {type(meta).__name__} "
            f"(type {meta.get('type') if isinstance(meta, Mapping) else None!r}); expected type 'class'"
        )
    src, name, state = meta.get("module_src"), meta.get("class_name"), meta.get("state")
    if not isinstance(src, str) or not isinstance(name, str) or not isinstance(state, Mapping):
        raise pickle.UnpicklingError("persistent object meta lacks module_src / class_name / state")
    return PersistentRecord(name, meta.get("version"), hashlib.sha256(src.encode()).hexdigest(), dict(state))


def _storage_from_bytes(data: Any) -> Any:
    """Replacement for torch.storage._load_from_bytes: the nested blob is read with weights_only=True."""
    if not isinstance(data, (bytes, bytearray)):
        raise RefusedGlobalError(f"torch.storage._load_from_bytes called with {type(data).__name__}, expected bytes")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            warnings.filterwarnings("ignore", message=".*Detected pickle protocol.*")
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RefusedGlobalError(
            f"refused tensor data embedded in the pickle: torch.load(weights_only=True) rejected it ({first})"
        ) from err
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise RefusedGlobalError(f"embedded tensor data decoded to {type(storage).__name__}, expected a torch storage")
    return storage


_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "Size"),
        *{("torch", dt) for dt in ("float16", "float32", "float64", "bfloat16", "int64", "int32", "uint8", "bool")},
        *{(mod, "scalar") for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
        *{(mod, "_reconstruct") for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
    }
)
_OVERRIDES: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record_persistent,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch.nn.modules.container", "ModuleDict"): _ContainerRecord,
    ("torch.nn.modules.container", "ModuleList"): _ContainerRecord,
    ("torch.nn.modules.container", "Sequential"): _ContainerRecord,
    ("dnnlib.util", "EasyDict"): _PlainDict,
}


# ---------------------------------------------------------------------------------------------
# Reading the pickle.


@dataclass
class EDMNetworkInfo:
    """The network found in an EDM pickle: recorded configuration and official-name state dict."""

    precond: str  # class name of the preconditioner ('EDMPrecond')
    model: str  # class name of the U-Net ('SongUNet')
    precond_kwargs: dict  # EDMPrecond init kwargs as recorded
    unet_kwargs: dict  # SongUNet init kwargs, completed with SongUNet's defaults
    state: dict[str, Tensor]  # official names: 'model.enc.32x32_conv.weight', ...
    sha256: str  # of the source file


def _flatten(record: Any, prefix: str, out: dict[str, Tensor], path: str) -> None:
    """Parameters and persistent buffers of a recorded module tree, named like Module.state_dict()."""
    state = getattr(record, "state", None)
    if not isinstance(state, Mapping):
        raise ValueError(f"wrong checkpoint: {path or 'root'} is {type(record).__name__}, expected a pickled module")
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"wrong checkpoint: {prefix}{name} is {type(value).__name__}, expected a tensor")
            out[prefix + name] = value.detach().clone()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _flatten(child, f"{prefix}{name}.", out, f"{prefix}{name}")


def read_edm_pickle(src: str | Path, key: str = "ema") -> EDMNetworkInfo:
    """Read the network ``key`` of an EDM pickle safely (nothing is imported or executed)."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"EDM network pickle not found: {src} (expected e.g. edm-cifar10-32x32-cond-vp.pkl)")
    raw = src.read_bytes()
    try:
        data = RestrictedUnpickler(io.BytesIO(raw), _ALLOWED, overrides=_OVERRIDES).load()
    except RefusedGlobalError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError) as err:
        raise ValueError(f"{src} is not a readable EDM network pickle: {err}") from err
    if not isinstance(data, Mapping) or key not in data:
        keys = sorted(map(str, data)) if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f"wrong checkpoint: {src} should hold a dict with key {key!r} (EDM network pickle), got {keys}"
        )
    net = data[key]
    if not isinstance(net, PersistentRecord) or net.class_name != "EDMPrecond":
        got = net.class_name if isinstance(net, PersistentRecord) else type(net).__name__
        raise ValueError(f"wrong checkpoint: expected {key!r} to be EDMPrecond (EDM preconditioning), got {got}")
    model = (net.state.get("_modules") or {}).get("model")
    if not isinstance(model, PersistentRecord) or model.class_name != "SongUNet":
        got = model.class_name if isinstance(model, PersistentRecord) else type(model).__name__
        raise ValueError(f"wrong checkpoint: expected EDMPrecond.model to be SongUNet (DDPM++), got {got}")
    state: dict[str, Tensor] = {}
    _flatten(net, "", state, "")
    unet_kwargs = {**_SONGUNET_DEFAULTS, **model.init_kwargs}
    return EDMNetworkInfo(
        "EDMPrecond", "SongUNet", net.init_kwargs, unet_kwargs, state, hashlib.sha256(raw).hexdigest()
    )


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_config(info: EDMNetworkInfo, expected: Mapping[str, Any] | None) -> None:
    kw = {k: _normalise(v) for k, v in info.unet_kwargs.items()}
    wrong = {k: kw.get(k) for k, v in _SUPPORTED.items() if kw.get(k) != v}
    if kw.get("in_channels") != kw.get("out_channels"):
        wrong["out_channels"] = kw.get("out_channels")
    if expected is not None:
        wrong.update({k: kw.get(k) for k, v in expected.items() if kw.get(k) != _normalise(v)})
    if wrong:
        want = {**_SUPPORTED, **{k: _normalise(v) for k, v in (expected or {}).items()}}
        raise ValueError(
            "wrong checkpoint: expected an EDM DDPM++ network with "
            + ", ".join(f"{k}={want.get(k, 'in_channels')}" for k in wrong)
            + "; the file has "
            + ", ".join(f"{k}={v}" for k, v in wrong.items())
        )


# ---------------------------------------------------------------------------------------------
# Import.


def import_edm_pickle(
    src: str | Path,
    out: str | Path,
    *,
    heads: Literal["single", "multi"] = "single",
    num_classes: int = 10,  # K; must equal label_dim for a conditional network
    key: str = "ema",  # which network of the pickle
    expected: Mapping[str, Any] | None = CIFAR10_EXPECTED,  # SongUNet kwargs to verify; None = any DDPM++ size
    use_fp16: bool = False,  # store the fp16-autocast flag in the config
) -> Path:
    """Convert an official EDM DDPM++ pickle into an rdc safetensors denoiser checkpoint at ``out``.

    ``heads='single'``: the network as released (conditional if its label_dim > 0, else it ignores
    labels). ``heads='multi'``: a (K + 1)-head network without label input, initialised from it
    (output layer replicated; meant as the start of fine-tuning). Raises RefusedGlobalError for a
    pickle that references anything outside the admitted types, ValueError for a network that is
    not the expected DDPM++.
    """
    check_choice("heads", heads, HEADS)
    info = read_edm_pickle(src, key)
    _check_config(info, expected)
    kw = {k: _normalise(v) for k, v in info.unet_kwargs.items()}
    label_dim = int(kw["label_dim"])
    if label_dim and label_dim != num_classes:
        raise ValueError(
            f"wrong checkpoint: the network has label_dim={label_dim} but num_classes={num_classes} was given"
        )
    backbone = {k: kw[k] for k in ARCH_KEYS}
    backbone.update(label_dim=label_dim, use_fp16=bool(use_fp16))
    single_cfg = DenoiserConfig(
        arch="ddpmpp",
        num_classes=num_classes,
        img_channels=int(kw["in_channels"]),
        img_resolution=int(kw["img_resolution"]),
        heads="single",
        sigma_data=float(_normalise(info.precond_kwargs.get("sigma_data", 0.5))),
        backbone=backbone,
    )
    single = load_edm_state_dict(build_denoiser(single_cfg), info.state, source=str(src))
    extra = dict(
        source="edm-pickle",
        file=Path(src).name,
        sha256=info.sha256,
        key=key,
        label_dim=label_dim,
        label_dropout=float(_normalise(kw.get("label_dropout", 0))),
        null_label_trained=bool(_normalise(kw.get("label_dropout", 0))) or label_dim == 0,
        edm_use_fp16=bool(_normalise(info.precond_kwargs.get("use_fp16", False))),
    )
    if heads == "single":
        return save_denoiser(out, single, single_cfg, extra)
    multi_cfg = replace(single_cfg, heads="multi", backbone={k: v for k, v in backbone.items() if k != "label_dim"})
    multi = build_denoiser(multi_cfg)
    dropped = widen_to_multihead(multi, single.state_dict())
    return save_denoiser(out, multi, multi_cfg, {**extra, "widened_from_single": True, "dropped": dropped})


# ---------------------------------------------------------------------------------------------
# Conditional + unconditional pair (the reference's setting, docs/paper.md section 2).


class PairedDenoiser(Denoiser):
    """Routes class labels to ``cond`` and the null label to ``uncond`` (the Denoiser contract).

    The released conditional EDM network never saw a null label (no label dropout), so RDC at paper
    settings scores classes with the conditional network and runs LM (null label) on the released
    unconditional network. ``denoise_all`` over real classes costs what ``cond`` costs.
    """

    def __init__(self, cond: Denoiser, uncond: Denoiser):
        super().__init__()
        if (cond.img_channels, cond.img_resolution) != (uncond.img_channels, uncond.img_resolution):
            raise ValueError(
                f"cond and uncond denoisers must take the same images: "
                f"{cond.img_channels}x{cond.img_resolution}^2 vs {uncond.img_channels}x{uncond.img_resolution}^2"
            )
        self.cond, self.uncond = cond, uncond
        self.num_classes, self.img_channels, self.img_resolution = (
            cond.num_classes,
            cond.img_channels,
            cond.img_resolution,
        )
        self.heads = cond.heads

    def forward(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        sigma = self._sigma(sigma, batch, x)
        labels = self._labels(labels, batch, x.device)
        null = labels == self.null_label
        if bool(null.all()):
            return self.uncond(x, sigma, None)
        if not bool(null.any()):
            return self.cond(x, sigma, labels)
        out = torch.empty_like(x)
        out[null] = self.uncond(x[null], sigma[null], None).to(x.dtype)
        out[~null] = self.cond(x[~null], sigma[~null], labels[~null]).to(x.dtype)
        return out

    def denoise_all(self, x: Tensor, sigma: Tensor, classes: Tensor | None = None) -> Tensor:
        if classes is None:
            return self.cond.denoise_all(x, sigma, None)
        classes = classes.to(x.device)
        null = classes == self.null_label
        if not bool(null.any()):
            return self.cond.denoise_all(x, sigma, classes)
        out = x.new_empty(x.shape[0], classes.numel(), *x.shape[1:])
        out[:, null] = self.uncond(x, sigma, None).unsqueeze(1)
        if not bool(null.all()):
            out[:, ~null] = self.cond.denoise_all(x, sigma, classes[~null])
        return out

    def passes_per_denoise_all(self, num_classes: int) -> int:
        return self.cond.passes_per_denoise_all(num_classes)


def load_paired_denoiser(
    cond_path: str | Path,
    uncond_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PairedDenoiser:
    """PairedDenoiser from two imported checkpoints (e.g. edm-cifar10-32x32-{cond,uncond}-vp.safetensors)."""
    return PairedDenoiser(load_denoiser(cond_path, device, dtype), load_denoiser(uncond_path, device, dtype)).eval()
