"""Bring your own diffusion model: a diffusers ``UNet2DModel`` + DDPM/DDIM scheduler, or a k-diffusion-style
callable, as a :class:`~rdc_lib.models.base.Denoiser` (EDM's D(x; sigma, y), docs/paper.md section 2).

Variance preserving -> EDM (exact). A VP model sees x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; EDM's x = x0 +
sigma eps is the same point up to scale, x_t = sqrt(abar) x, with sigma = sqrt((1 - abar) / abar), i.e.
abar(sigma) = 1 / (1 + sigma^2). So D(x; sigma, y) feeds the network x_t = x / sqrt(1 + sigma^2) (abar from sigma
itself, exact for every sigma) at the timestep whose sigma is ``sigma`` and converts its output to x0:
epsilon: x0 = x - sigma eps;  v_prediction: x0 = abar x - sqrt(1 - abar) v;  sample: x0 = the output.
The timestep (``timestep=``, :data:`TIMESTEP_MODES`): ``'interpolate'`` (default) feeds the continuous timestep
t with log sigma linearly interpolated between the schedule's integer timesteps (UNet2DModel's positional
embedding takes real t); ``'nearest'`` feeds the integer timestep nearest in log sigma. Both equal the
schedule's own timestep at its sigmas; a sigma outside [sigma(0), sigma(T - 1)] takes the end timestep (the
input scaling stays exact). No x0 clipping (a sampler's choice, not the model's).

Data range (``data_range``, :data:`DATA_RANGES`): rdc's denoisers work in the model space [-1, 1] (x' = 2x - 1
of the [0, 1] images, rdc_lib.models.base). ``'minus_one_one'`` (default; diffusers' convention) uses the model
as is. ``'zero_one'`` is a model trained on [0, 1] images: u = (x' + 1) / 2 has noise sigma / 2, so
D'(x'; sigma) = 2 D_u((x' + 1) / 2; sigma / 2) - 1.

Labels: ``class_embed_type`` None with ``num_class_embeds`` = K (no null label: DC only) or K + 1 (label K is the
null label, a model trained with label dropout: LM and purification work). The optional file
``rdc_adapter.json`` in the folder may set ``data_range``, ``null_label`` and ``timestep``.

Loading (:func:`load_diffusers_denoiser`) reads a local folder in diffusers' own format (``save_pretrained``:
``unet/`` + ``scheduler/``, or a flat ``config.json`` + ``scheduler_config.json``) with ``use_safetensors=True``
and ``local_files_only=True``: nothing is unpickled, nothing is downloaded. diffusers is an optional extra
(``pip install -e '.[diffusers]'``), imported only here, lazily.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.choices import VP_DATA_RANGES, VP_PREDICTION_TYPES, VP_TIMESTEP_MODES, check_choice
from ..core.paths import resolve_path
from .base import Denoiser

__all__ = [
    "ADAPTER_FILE",
    "DATA_RANGES",
    "DIFFUSERS_PREFIX",
    "PREDICTION_TYPES",
    "SCHEDULERS",
    "TIMESTEP_MODES",
    "KDiffusionDenoiser",
    "VPDiffusersDenoiser",
    "diffusers_folder",
    "inspect_diffusers_folder",
    "is_diffusers_ref",
    "load_diffusers_denoiser",
    "require_diffusers",
]

DIFFUSERS_PREFIX = "diffusers:"  # --denoiser diffusers:PATH
ADAPTER_FILE = "rdc_adapter.json"  # optional adapter settings beside the model
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
PREDICTION_TYPES = VP_PREDICTION_TYPES
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_MODES = VP_TIMESTEP_MODES
DATA_RANGES = VP_DATA_RANGES
UNETS = ("UNet2DModel",)
TIME_EMBEDDINGS = ("positional",)
LEARNED_VARIANCE = ("learned", "learned_range")
_ADAPTER_KEYS = ("data_range", "null_label", "timestep", "training")


def require_diffusers() -> Any:
    """The diffusers module; ImportError saying how to install the extra if it is missing."""
    try:
        import diffusers  # optional extra: diffusers
    except ImportError as err:  # pragma: no cover - the README commands install it
        raise ImportError(
            "this needs the optional 'diffusers' extra: pip install -e '.[diffusers]' "
            "(pinned diffusers==0.42.1; `make venv` installs it)"
        ) from err
    return diffusers


def is_diffusers_ref(ref: str | Path | None) -> bool:
    """True for a denoiser reference ``'diffusers:PATH'``."""
    return ref is not None and str(ref).startswith(DIFFUSERS_PREFIX)


def diffusers_folder(ref: str | Path) -> Path:
    """The folder of ``'diffusers:PATH'`` (relative paths: cwd, then notebooks/, rdc_lib.core.paths.resolve_path)."""
    text = str(ref)
    path = text[len(DIFFUSERS_PREFIX) :] if is_diffusers_ref(text) else text
    if not path:
        raise ValueError(
            f"empty diffusers reference {text!r}; expected 'diffusers:PATH' (a folder written by save_pretrained)"
        )
    return resolve_path(path)


def diffusers_files(ref: str | Path) -> list[Path]:
    """Every file the adapter reads from the folder of ``ref`` (configs, safetensors weights, rdc_adapter.json),
    sorted: what a provenance record hashes."""
    unet_dir, sched_file = _layout(diffusers_folder(ref))
    files = [*unet_dir.glob("*.safetensors"), unet_dir / "config.json", sched_file]
    adapter = diffusers_folder(ref) / ADAPTER_FILE
    return sorted({*files, *([adapter] if adapter.is_file() else [])})


# --------------------------------------------------------------------------------------------- the adapters


class VPDiffusersDenoiser(Denoiser):
    """A VP network eps/v/x0(x_t, t, labels) under its scheduler's alphas_cumprod, as EDM's D(x; sigma, y)."""

    def __init__(
        self,
        unet: nn.Module,
        alphas_cumprod: Tensor,
        prediction_type: str,
        num_classes: int,
        null_label: int | None,
        img_channels: int,
        img_resolution: int,
        *,
        timestep: str = "interpolate",
        data_range: str = "minus_one_one",
        learned_variance: bool = False,
    ):
        super().__init__()
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep", timestep, TIMESTEP_MODES)
        check_choice("data_range", data_range, DATA_RANGES)
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if (
            abar.ndim != 1
            or abar.numel() < 2
            or not bool(((abar > 0) & (abar < 1)).all())
            or not bool((abar[1:] < abar[:-1]).all())
        ):
            raise ValueError("alphas_cumprod must be a strictly decreasing sequence in (0, 1) of >= 2 timesteps")
        self.unet = unet
        self.prediction_type, self.timestep, self.data_range = prediction_type, timestep, data_range
        self.num_classes, self.img_channels, self.img_resolution = (
            int(num_classes),
            int(img_channels),
            int(img_resolution),
        )
        self.model_null_label = null_label  # the network's null label index, None if it has none
        self.learned_variance = learned_variance
        # log sigma per integer timestep, in float64 from the scheduler's own alphas_cumprod; a plain attribute, so
        # that .to(dtype) never rounds it (moved to the input's device on use)
        self.log_sigmas = 0.5 * ((1 - abar) / abar).log()

    @property
    def sigma_range(self) -> tuple[float, float]:
        """(sigma at timestep 0, sigma at timestep T - 1) in the model's own data range."""
        ls = self.log_sigmas
        return float(ls[0].exp()), float(ls[-1].exp())

    def timesteps_for(self, sigma: Tensor) -> Tensor:
        """The timestep fed to the network at noise level ``sigma`` (B,) (model's own range): float (interpolate)
        or long (nearest); clamped to [0, T - 1] outside the schedule."""
        if self.log_sigmas.device != sigma.device:
            self.log_sigmas = self.log_sigmas.to(sigma.device)
        ls = self.log_sigmas
        s = sigma.to(ls.dtype).log().clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, s).clamp(1, ls.numel() - 1)
        lo = hi - 1
        w = ((s - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        if self.timestep == "nearest":
            return torch.where(w > 0.5, hi, lo)
        return (lo.to(ls.dtype) + w).to(torch.float32)

    def _labels_for_model(self, labels: Tensor) -> Tensor:
        null = labels == self.num_classes
        if bool(null.any()):
            if self.model_null_label is None:
                raise ValueError(
                    f"the null label (p(x), used by likelihood maximization and purification) was asked "
                    f"for, but this model has no null label (num_class_embeds = {self.num_classes}); "
                    f"train with label dropout and num_class_embeds = {self.num_classes + 1}"
                )
            labels = torch.where(null, torch.full_like(labels, self.model_null_label), labels)
        return labels

    def _x0_model_space(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """x0 in the network's own data range: x (B, C, H, W) = x0 + sigma eps, sigma (B,)."""
        s4 = sigma.reshape(-1, 1, 1, 1)
        abar = 1 / (1 + s4 * s4)
        x_t = x * abar.sqrt()
        out = self.unet(x_t, self.timesteps_for(sigma), class_labels=labels, return_dict=False)[0].to(x.dtype)
        if self.learned_variance:
            out = out[:, : self.img_channels]
        if self.prediction_type == "epsilon":
            return x - s4 * out
        if self.prediction_type == "v_prediction":
            return abar * x - (1 - abar).sqrt() * out
        return out

    def forward(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """D(x; sigma, labels): x (B, C, H, W) noisy in rdc's model space [-1, 1], sigma (B,) > 0, labels in [0, K]."""
        batch = x.shape[0]
        sigma = self._sigma(sigma, batch, x)
        labels = self._labels_for_model(self._labels(labels, batch, x.device))
        if self.data_range == "zero_one":
            return 2 * self._x0_model_space((x + 1) / 2, sigma / 2, labels) - 1
        return self._x0_model_space(x, sigma, labels)


class KDiffusionDenoiser(Denoiser):
    """A k-diffusion-style callable ``model(x, sigma, class_labels) -> denoised x0`` (EDM/VE parameterisation,
    as k-diffusion's wrappers return) as a Denoiser; labels and data range as in :class:`VPDiffusersDenoiser`."""

    def __init__(
        self,
        model: Callable[..., Tensor],
        num_classes: int,
        img_channels: int,
        img_resolution: int,
        *,
        null_label: int | None = None,
        data_range: str = "minus_one_one",
    ):
        super().__init__()
        check_choice("data_range", data_range, DATA_RANGES)
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, sigma, class_labels), got {type(model).__name__}")
        self.model = model  # a Module is registered (moves with .to()), a plain function is kept as is
        self.num_classes, self.img_channels, self.img_resolution = (
            int(num_classes),
            int(img_channels),
            int(img_resolution),
        )
        self.model_null_label, self.data_range = null_label, data_range

    _labels_for_model = VPDiffusersDenoiser._labels_for_model

    def forward(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        sigma = self._sigma(sigma, batch, x)
        labels = self._labels_for_model(self._labels(labels, batch, x.device))
        if self.data_range == "zero_one":
            return 2 * self.model((x + 1) / 2, sigma / 2, class_labels=labels).to(x.dtype) - 1
        out = self.model(x, sigma, class_labels=labels)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            raise ValueError(
                f"the k-diffusion-style model must return the denoised image with x's shape "
                f"{tuple(x.shape)}, got {getattr(out, 'shape', type(out).__name__)}"
            )
        return out.to(x.dtype)


# --------------------------------------------------------------------------------------------- loading


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable {what} (JSON): {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a {what}: expected a JSON object, got {type(data).__name__}")
    return data


def _layout(folder: Path) -> tuple[Path, Path]:
    """(unet folder, scheduler_config.json) of a pipeline folder (unet/, scheduler/) or a flat one."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"diffusers model folder not found: {folder} (expected a folder written by "
            "save_pretrained: unet/ + scheduler/, or config.json + scheduler_config.json)"
        )
    for unet_dir, sched in (
        (folder / "unet", folder / "scheduler" / "scheduler_config.json"),
        (folder, folder / "scheduler_config.json"),
    ):
        if (unet_dir / "config.json").is_file():
            if not sched.is_file():
                raise ValueError(
                    f"{folder} has a model config ({unet_dir / 'config.json'}) but no scheduler config "
                    f"(expected {sched}); the adapter needs the scheduler's betas and prediction_type"
                )
            return unet_dir, sched
    raise ValueError(
        f"{folder} is not a diffusers model folder: expected unet/config.json + "
        "scheduler/scheduler_config.json (a pipeline's save_pretrained) or config.json + "
        "scheduler_config.json (a model's save_pretrained)"
    )


def _check_scheduler(cfg: dict, where: Path) -> None:
    check = [
        ("_class_name", SCHEDULERS, None),
        ("prediction_type", PREDICTION_TYPES, "epsilon"),
        ("beta_schedule", BETA_SCHEDULES, "linear"),
    ]
    for key, valid, default in check:
        value = cfg.get(key, default)
        if value not in valid:
            raise ValueError(f"unsupported scheduler {key} {value!r} in {where}; supported: {', '.join(valid)}")
    if cfg.get("trained_betas") is not None:
        raise ValueError(f"unsupported scheduler trained_betas in {where}; supported: None (beta_schedule instead)")
    if cfg.get("rescale_betas_zero_snr", False):
        raise ValueError(
            f"unsupported scheduler rescale_betas_zero_snr True in {where} (sigma is infinite at the "
            "last timestep); supported: False"
        )


def _check_unet(cfg: dict, where: Path, num_classes: int, channels: int, resolution: int) -> None:
    def bad(key: str, value: Any, valid: str) -> ValueError:
        return ValueError(f"unsupported model {key} {value!r} in {where}; supported: {valid}")

    if cfg.get("_class_name") not in UNETS:
        raise bad("_class_name", cfg.get("_class_name"), ", ".join(UNETS))
    if cfg.get("time_embedding_type", "positional") not in TIME_EMBEDDINGS:
        raise bad("time_embedding_type", cfg.get("time_embedding_type"), ", ".join(TIME_EMBEDDINGS))
    size = cfg.get("sample_size")
    if size != resolution and size != [resolution, resolution]:
        raise bad("sample_size", size, f"{resolution} (the dataset's {resolution}x{resolution} images)")
    if cfg.get("in_channels") != channels:
        raise bad("in_channels", cfg.get("in_channels"), f"{channels} (the dataset's image channels)")
    if cfg.get("out_channels") not in (channels, 2 * channels):
        raise bad("out_channels", cfg.get("out_channels"), f"{channels} (or {2 * channels} with a learned variance)")
    if cfg.get("class_embed_type") is not None:
        raise bad("class_embed_type", cfg.get("class_embed_type"), "None (integer labels through num_class_embeds)")
    n = cfg.get("num_class_embeds")
    if n is None:
        raise ValueError(
            f"{where} is an unconditional model (num_class_embeds None, no class embedding): a "
            f"diffusion classifier needs a class-conditional model with num_class_embeds = "
            f"{num_classes} or {num_classes + 1} (with a null label)"
        )
    if n not in (num_classes, num_classes + 1):
        raise bad(
            "num_class_embeds", n, f"{num_classes} (the dataset's classes) or {num_classes + 1} (plus a null label)"
        )


def inspect_diffusers_folder(
    folder: str | Path, *, num_classes: int = 10, img_channels: int = 1, img_resolution: int = 8
) -> dict[str, Any]:
    """Check a local diffusers folder against the dataset without loading weights; returns its settings:
    ``unet_dir``, ``unet_config``, ``scheduler_config``, ``adapter`` (rdc_adapter.json), ``null_label`` (the
    network's null label or None), ``learned_variance``. ValueError / FileNotFoundError naming the field."""
    folder = diffusers_folder(folder)
    unet_dir, sched_file = _layout(folder)
    unet_cfg = _read_json(unet_dir / "config.json", "diffusers model config")
    sched_cfg = _read_json(sched_file, "diffusers scheduler config")
    _check_unet(unet_cfg, unet_dir / "config.json", num_classes, img_channels, img_resolution)
    _check_scheduler(sched_cfg, sched_file)
    if not any(unet_dir.glob("*.safetensors")):
        found = sorted(p.name for p in unet_dir.iterdir() if p.is_file())
        raise ValueError(
            f"no safetensors weights in {unet_dir} (found: {', '.join(found)}); expected "
            "diffusion_pytorch_model.safetensors (save_pretrained(..., safe_serialization=True)); "
            "pickled .bin weights are never loaded"
        )
    variance = sched_cfg.get("variance_type", "fixed_small")
    learned = unet_cfg["out_channels"] == 2 * img_channels
    if learned and variance not in LEARNED_VARIANCE:
        raise ValueError(
            f"unsupported model out_channels {unet_cfg['out_channels']} with scheduler variance_type "
            f"{variance!r}; supported: out_channels {img_channels}, or {2 * img_channels} with "
            f"variance_type {' / '.join(LEARNED_VARIANCE)}"
        )
    adapter = _read_json(folder / ADAPTER_FILE, "rdc adapter file") if (folder / ADAPTER_FILE).is_file() else {}
    unknown = sorted(set(adapter) - set(_ADAPTER_KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in {folder / ADAPTER_FILE}; valid keys: {', '.join(_ADAPTER_KEYS)}")
    n_embeds = int(unet_cfg["num_class_embeds"])
    null = adapter.get("null_label", num_classes if n_embeds == num_classes + 1 else None)
    if null is not None and not (isinstance(null, int) and num_classes <= null < n_embeds):
        raise ValueError(
            f"null_label {null!r} in {folder / ADAPTER_FILE} is not one of the model's labels beyond the "
            f"{num_classes} classes; supported: "
            f"{', '.join(map(str, range(num_classes, n_embeds))) or 'none (num_class_embeds = K)'} or null"
        )
    for key, valid in (("timestep", TIMESTEP_MODES), ("data_range", DATA_RANGES)):
        if key in adapter:
            check_choice(f"{key} in {folder / ADAPTER_FILE}", adapter[key], valid)
    return dict(
        unet_dir=unet_dir,
        unet_config=unet_cfg,
        scheduler_config=sched_cfg,
        adapter=adapter,
        null_label=null,
        learned_variance=learned,
    )


def load_diffusers_denoiser(
    folder: str | Path,
    *,
    num_classes: int = 10,
    img_channels: int = 1,
    img_resolution: int = 8,
    timestep: str | None = None,
    data_range: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VPDiffusersDenoiser:
    """A :class:`VPDiffusersDenoiser` from a local diffusers folder (``'diffusers:PATH'`` or PATH), in eval mode.

    ``num_classes`` / ``img_channels`` / ``img_resolution``: the dataset's (digits: 10, 1, 8), checked against the
    model. ``timestep`` / ``data_range``: override ``rdc_adapter.json`` (defaults 'interpolate', 'minus_one_one').
    """
    info = inspect_diffusers_folder(
        folder, num_classes=num_classes, img_channels=img_channels, img_resolution=img_resolution
    )
    sched_cfg, adapter = info["scheduler_config"], info["adapter"]
    diffusers = require_diffusers()
    sched = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    unet = diffusers.UNet2DModel.from_pretrained(
        str(info["unet_dir"]), use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
    )
    den = VPDiffusersDenoiser(
        unet,
        sched.alphas_cumprod,
        sched_cfg.get("prediction_type", "epsilon"),
        num_classes,
        info["null_label"],
        img_channels,
        img_resolution,
        timestep=timestep or adapter.get("timestep", "interpolate"),
        data_range=data_range or adapter.get("data_range", "minus_one_one"),
        learned_variance=info["learned_variance"],
    )
    return den.to(device=device, dtype=dtype).eval()
