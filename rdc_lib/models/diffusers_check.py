"""The adapter check: a diffusers model's x0 prediction through :class:`VPDiffusersDenoiser` (EDM's D(x; sigma, y))
against its own scheduler's ``step(...).pred_original_sample`` at the scheduler's integer timesteps.

At a timestep t the two must agree exactly: the adapter gets x = x_t / sqrt(abar_t) at sigma_t = sqrt((1 - abar_t) /
abar_t) and returns x0 in rdc's model space [-1, 1]; the scheduler gets x_t and returns x0 in the network's own
range. Run in float64 (``dtype``), the difference is rounding only; a wrong timestep, scaling or prediction type
shows up as differences of order 1e-2 and more.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from .diffusers_adapter import VPDiffusersDenoiser, _layout, _read_json, diffusers_folder, require_diffusers

__all__ = ["adapter_check", "scheduler_for", "scheduler_x0"]


def scheduler_for(folder: str, **overrides: Any) -> Any:
    """The diffusers scheduler saved in a model folder (``'diffusers:PATH'`` or PATH), with clipping and
    thresholding off (the reference x0 must not be clipped); ``overrides`` replace config values."""
    cfg = _read_json(_layout(diffusers_folder(folder))[1], "diffusers scheduler config")
    cfg.update(clip_sample=False, thresholding=False, **overrides)
    return getattr(require_diffusers(), cfg["_class_name"]).from_config(cfg)


def scheduler_x0(scheduler: Any, unet: torch.nn.Module, x_t: Tensor, t: int, labels: Tensor | None) -> Tensor:
    """The scheduler's own x0 prediction ``scheduler.step(unet(x_t, t, y), t, x_t).pred_original_sample`` at the
    integer timestep ``t`` in [0, T), in the network's range and in x_t's dtype (the scheduler's alphas_cumprod are
    cast to it). x_t (B, C, H, W) noisy VP samples, labels (B,) the network's own labels."""
    return _step_x0(_reference(scheduler, x_t.dtype), unet, x_t, t, labels)


def _reference(scheduler: Any, dtype: torch.dtype) -> Any:
    """A copy of ``scheduler`` whose alphas_cumprod are in ``dtype``, ready to step at any training timestep."""
    if scheduler.config.get("clip_sample", False) or scheduler.config.get("thresholding", False):
        raise ValueError(
            "the reference x0 needs a scheduler with clip_sample=False and thresholding=False "
            "(rdc_lib.models.diffusers_check.scheduler_for turns both off)"
        )
    sched = copy.deepcopy(scheduler)
    sched.alphas_cumprod = scheduler.alphas_cumprod.to(dtype)
    if getattr(sched, "num_inference_steps", 0) is None and type(sched).__name__ == "DDIMScheduler":
        sched.set_timesteps(sched.config.num_train_timesteps)  # DDIM's step needs its inference timesteps set
    return sched


def _step_x0(sched: Any, unet: torch.nn.Module, x_t: Tensor, t: int, labels: Tensor | None) -> Tensor:
    gen = torch.Generator(device=x_t.device).manual_seed(0)  # DDPM's step also draws posterior noise (unused here)
    with torch.no_grad():
        model_out = unet(x_t, torch.full((x_t.shape[0],), t, device=x_t.device), class_labels=labels).sample
        return sched.step(model_out, t, x_t, generator=gen).pred_original_sample


def adapter_check(
    den: VPDiffusersDenoiser,
    scheduler: Any,
    x0: Tensor,
    labels: Tensor,
    timesteps: Tensor,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Max abs difference per timestep (T',) between the adapter's and the scheduler's x0 prediction.

    x0 (B, C, H, W) clean images in rdc's model space [-1, 1]; labels (B,) rdc labels in [0, K] (K = null);
    timesteps (T',) integer timesteps; one noise draw per image and timestep from ``generator``. ``den`` is
    copied to ``dtype`` (float64 by default, so that rounding stays far below 1e-5)."""
    den = copy.deepcopy(den).to(dtype)
    abar_all = scheduler.alphas_cumprod.to(dtype)
    x0 = x0.to(dtype)
    if den.data_range == "zero_one":
        x0 = (x0 + 1) / 2
    y_model = den._labels_for_model(den._labels(labels, x0.shape[0], x0.device))
    sched = _reference(scheduler, dtype)
    diffs = []
    for t in timesteps.tolist():
        a = abar_all[t]
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=dtype)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        ref = _step_x0(sched, den.unet, x_t, t, y_model)
        sigma = ((1 - a) / a).sqrt().expand(x0.shape[0])
        with torch.no_grad():
            if den.data_range == "zero_one":  # rdc's x' = 2u - 1 carries twice the noise of the network's u
                got = (den(2 * x_t / a.sqrt() - 1, 2 * sigma, labels) + 1) / 2
            else:
                got = den(x_t / a.sqrt(), sigma, labels)
        diffs.append((got - ref).abs().max())
    return torch.stack(diffs)
