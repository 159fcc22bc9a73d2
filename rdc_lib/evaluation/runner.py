"""Robustness evaluation: defense x attack x norm x eps on a slice of the test split (or of the validation split).

``evaluate(cfg)`` classifies clean images, attacks the correctly classified ones, re-classifies every
final adversarial example ``n_eval`` times (average and worst case over the calls, for randomised
defenses), runs the sanity checks that expose gradient masking, and returns one JSON-able dict.
Per-example records are appended to a JSON-lines file after every chunk (with the adversarial
images in a safetensors file beside it), so an interrupted run resumes without losing finished chunks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..attacks.registry import get_attack
from ..core.paths import checkpoint_path
from ..core.progress import progress_bar
from ..data import load_dataset
from ..defenses import DefenseSpec, build_defense
from ..defenses.presets import required_files
from ..models.diffusers_adapter import inspect_diffusers_folder, is_diffusers_ref
from . import checks
from .attacking import NO_ATTACK, build_evaluated_attack, run_attack
from .config import EvalConfig
from .prediction import n_evaluate, predict
from .records import load_records, save_records, summarize

__all__ = ["EvalConfig", "defense_spec", "evaluate", "evaluate_params", "resolve_denoiser"]

log = logging.getLogger(__name__)


def defense_spec(cfg: EvalConfig) -> DefenseSpec:
    """The spec the builder gets: ``cfg.spec`` (every defense setting, one definition) with the denoiser
    resolved to ``denoiser_path`` and ``ckpt_dir`` set for CIFAR-10."""
    return replace(
        cfg.spec,
        ckpt_dir=cfg.ckpt_dir if cfg.dataset == "cifar10" else "",
        denoiser_path=str(resolve_denoiser(cfg.denoiser)) if cfg.denoiser else None,
    )


def resolve_denoiser(name_or_path: str) -> Path:
    """A checkpoint path as given, or ``data/checkpoints/<name>.safetensors`` for a bare shipped name;
    ``diffusers:FOLDER`` (a local diffusers model, rdc_lib.models.diffusers_adapter) is checked and kept as given."""
    if is_diffusers_ref(name_or_path):
        inspect_diffusers_folder(name_or_path)
        return Path(name_or_path)
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or len(p.parts) > 1:
        if not p.is_file():
            raise FileNotFoundError(f"denoiser checkpoint not found: {p} (expected a .safetensors file written by rdc)")
        return p
    return checkpoint_path(name_or_path)


def evaluate(
    cfg: EvalConfig,
    *,
    device: str | torch.device = "cpu",
    records_dir: str | Path | None = None,
    progress: bool = True,
    restart: bool = False,
    model: nn.Module | None = None,
) -> dict:
    """Run the evaluation described by ``cfg``; returns the JSON-able result (see module docstring).

    ``restart``: move the stored records of ``cfg`` in ``records_dir`` aside (renamed, never deleted) and
    start afresh; without it, damaged or stale records raise ``StoredStateError`` (see ``records.py``).
    ``model``: evaluate this defense (x (B, C, H, W) in [0, 1] -> logits (B, K)) instead of building
    ``cfg.defense``; ``cfg`` still sets the data, the attack and the checks.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    if cfg.dataset == "cifar10":
        need = required_files(cfg.preset or "cifar10-paper", cfg.data_root or None, cfg.ckpt_dir)
        if not need.ok:
            raise FileNotFoundError(need.message)
    x_all, y_all = load_dataset(cfg.dataset, cfg.split, root=cfg.data_root or None)
    if cfg.offset + cfg.n_images > x_all.shape[0]:
        raise ValueError(
            f"n_images + offset = {cfg.n_images + cfg.offset} exceeds the {x_all.shape[0]} {cfg.split} images"
        )
    x_all = x_all[cfg.offset : cfg.offset + cfg.n_images].to(device)
    y_all = y_all[cfg.offset : cfg.offset + cfg.n_images].to(device)
    if model is None:
        model = build_defense(defense_spec(cfg), device)
    if cfg.attack != NO_ATTACK:
        build_evaluated_attack(cfg, model)  # a configuration the attack refuses fails here, before any work
        if cfg.run_checks:
            checks.check_sample_size(cfg.n_images)

    records, x_adv_all = load_records(records_dir, cfg, x_all.cpu(), y_all.cpu(), restart=restart)
    bar = None
    if progress:
        bar = progress_bar(cfg.n_images, f"eval {cfg.defense}/{cfg.attack}", "img", initial=len(records))
    attack_stats: list[dict] = []
    for start in range(0, cfg.n_images, cfg.chunk):
        stop = min(start + cfg.chunk, cfg.n_images)
        if all(i in records for i in range(start, stop)):
            continue
        x, y = x_all[start:stop], y_all[start:stop]
        clean = predict(model, x)
        x_adv = x.clone()
        ok = _clean_verified(model, x, y, clean, cfg.verify) if cfg.attack != NO_ATTACK else clean == y
        if cfg.attack != NO_ATTACK:
            if ok.any():
                adv, stats = run_attack(build_evaluated_attack(cfg, model), model, x[ok], y[ok])
                x_adv[ok] = adv.detach()
                attack_stats.append(stats)
        preds = n_evaluate(model, x_adv, cfg.n_eval)  # (n_eval, b)
        for j in range(stop - start):
            correct_runs = (preds[:, j] == y[j]).tolist()
            records[start + j] = {
                "index": cfg.offset + start + j,
                "label": int(y[j]),
                "clean_pred": int(clean[j]),
                "adv_preds": preds[:, j].tolist(),
                "attacked": bool(ok[j]) and cfg.attack != NO_ATTACK,
                "robust_first": bool(correct_runs[0]) and bool(ok[j]),
                "robust_all": all(correct_runs) and bool(ok[j]),
                "robust_frac": (sum(correct_runs) / len(correct_runs)) if ok[j] else 0.0,
                "linf": float((x_adv[j] - x[j]).abs().max()),
                "l2": float((x_adv[j] - x[j]).flatten().norm()),
            }
        x_adv_all[start:stop] = x_adv.cpu()
        save_records(records_dir, cfg, records, x_adv_all)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()

    recs = [records[i] for i in range(cfg.n_images)]
    result = {**cfg.flat(), **summarize(recs, cfg.attack != NO_ATTACK), "attack_stats": attack_stats}
    if cfg.attack != NO_ATTACK and get_attack(cfg.attack).ensemble:
        result["attacks_dropped"] = {}  # every member runs (before issue 36 Square was left out under EOT)
    result.update(_checks(cfg, model, x_all, y_all, x_adv_all.to(device), recs, device))
    result["seconds"] = time.perf_counter() - t0
    return result


def _clean_verified(model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, verify: int) -> Tensor:
    """(B,) bool: the images to attack. With ``verify`` = V > 1 (stochastic defenses) an image counts as a
    clean error only if V calls all misclassify it (the first call ``clean`` and V - 1 more), as an
    attack counts a success; an image one unlucky call got wrong is attacked like the others."""
    ok = clean == y
    if verify > 1 and not ok.all():
        wrong = (~ok).nonzero().flatten()
        still_wrong = torch.ones_like(wrong, dtype=torch.bool)
        for _ in range(verify - 1):
            still_wrong &= predict(model, x[wrong]) != y[wrong]
        ok[wrong[~still_wrong]] = True
    return ok


def _checks(
    cfg: EvalConfig, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, recs: list[dict], device: torch.device
) -> dict:
    """``checks``, ``checks_skipped`` (check: reason) and ``trusted`` (None when no check ran) of a result."""
    if cfg.attack == NO_ATTACK:
        return {"checks": {}, "checks_skipped": {"all": "attack 'none': no robust accuracy to check"}, "trusted": None}
    if not cfg.run_checks:
        return {"checks": {}, "checks_skipped": {"all": "run_checks=False"}, "trusted": None}
    attacked = torch.tensor(
        [r.get("attacked", r["clean_pred"] == r["label"]) for r in recs[: checks.MIN_CHECK_IMAGES]],
        dtype=torch.bool,
        device=device,
    )
    worst = torch.tensor([r["robust_all"] for r in recs[: checks.MIN_CHECK_IMAGES]], dtype=torch.bool, device=device)
    entries = checks.run_sanity_checks(cfg, model, x, y, x_adv, device=device, attacked=attacked, worst=worst)
    trusted = checks.trusted_from(entries)
    if trusted is False:
        log.warning("UNTRUSTED robust accuracy: sanity checks failed: %s", "; ".join(checks.failed_checks(entries)))
    deterministic = checks.is_deterministic(model, x[: checks.FD_IMAGES])
    return {"checks": entries, "checks_skipped": checks.skipped_checks(cfg, deterministic), "trusted": trusted}


def evaluate_params(params: dict) -> dict:
    """``evaluate`` from a plain dict of ``EvalConfig`` fields (used by sweeps)."""
    params = dict(params)
    device = params.pop("device", "cpu")
    records_dir = params.pop("records_dir", None)
    return evaluate(EvalConfig.from_params(params), device=device, records_dir=records_dir, progress=False)
