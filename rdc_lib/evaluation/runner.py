"""Robustness evaluation: defense x attack x norm x eps on a slice of the test split (or of the validation split).

``evaluate(cfg)`` classifies clean images, attacks the correctly classified ones, re-classifies every
final adversarial example ``n_eval`` times (average and worst case over the calls, for randomised
defenses), runs the sanity checks that expose gradient masking, and returns one JSON-able dict.
Per-example records are appended to a JSON-lines file after every chunk (with the adversarial
images in a safetensors file beside it), so an interrupted run resumes without losing finished chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from ..attacks.registry import get_attack
from ..core.choices import (
    DATASETS,
    GRAD_MODES,
    GRID_KIND,
    GRID_KINDS,
    GRID_LEVELS,
    GRID_SIGMA_MIN,
    HEADS,
    LM_ETA,
    LM_STEP_SIZE,
    LM_STEPS,
    NOISE_MODES,
    SPLITS,
    THREAT_NORMS,
    check_choice,
)
from ..core.paths import default_denoiser, stored_denoiser_name
from ..data import load_dataset
from ..defenses import DefenseSpec, build_defense, defense_names, get_defense
from ..diffusion.schedules import check_grid_sigma_min
from . import checks
from .attacking import NO_ATTACK, build_evaluated_attack, eval_attack_names, run_attack
from .prediction import n_evaluate, predict
from .records import load_records, save_records, summarize

log = logging.getLogger(__name__)

_LATER_FIELDS = ("verify", "denoiser", "grid", "grid_sigma_min", "lm_steps", "lm_eta", "lm_step_size", "split")
# Defense settings added with the registries: refused for a defense that does not read them (registry
# fact ``extra_args``) and, with a preset, when they differ from the preset's (the preset fixes grid and LM).
_SPEC_SETTINGS = ("grid", "grid_sigma_min", "lm_steps", "lm_eta", "lm_step_size")


# What a count below 1 would have meant, for the error message.
_AT_LEAST_ONE = {
    "eot": " (draws of a stochastic defense averaged per gradient and per Square score; 1 for a deterministic one)",
    "verify": " (calls that must all misclassify an image before an attack stops on it; 1 for a deterministic defense)",
    "n_eval": " (re-classifications of each final adversarial example: 1 for a deterministic defense, e.g. 10 for "
    "the worst of N on a stochastic one)",
}


@dataclass(frozen=True)
class EvalConfig:
    defense: str = "dc"  # a registered defense (rdc_lib.defenses.defense_names())
    attack: str = "none"  # "none" or a registered attack (rdc_lib.attacks.attack_names())
    norm: str = "linf"  # one of THREAT_NORMS, supported by the attack
    eps: float = 0.1  # perturbation budget on images in [0, 1]
    n: int = 100  # number of images of `split`
    offset: int = 0  # first image of `split`
    seed: int = 0  # seeds the attack and the defense's own generator
    eot: int = 1  # EOT draws per gradient
    verify: int = 1  # calls that must all misclassify before an attack stops on an example
    steps: int = 20  # attack iterations
    restarts: int = 1  # attack restarts
    square_queries: int = 1000  # autoattack: Square's query budget
    n_target_classes: int = 9  # autoattack / apgd-t: target classes tried
    timesteps: int = GRID_LEVELS  # T noise levels of the diffusion classifier
    heads: str = "multi"  # denoiser used by dc / rdc / diffpure
    dataset: str = "digits"
    noise_mode: str = "stochastic"  # defense randomness: "stochastic" | "fixed"
    grad_mode: str = "exact"  # through RDC's LM / DiffPure's purification: "exact" | "bpda"
    n_eval: int = 1  # re-classifications of each final adversarial example
    vote: int = 1  # RDC majority vote over this many stochastic calls
    chunk: int = 50  # images per chunk (records are saved after each)
    run_checks: bool = True  # sanity checks with every robust evaluation
    preset: str = ""  # "cifar10-paper" with dataset="cifar10" (grid, LM, DC settings)
    data_root: str = ""  # CIFAR-10: folder of the python batches
    ckpt_dir: str = "data/checkpoints"  # CIFAR-10: folder of the imported EDM checkpoints
    denoiser: str = ""  # digits: a denoiser checkpoint (path, or shipped name like digits_multi_h32);
    # "" = the default of `heads` (rdc_lib.core.choices.DEFAULT_DENOISERS), stored resolved
    grid: str = GRID_KIND  # kind of the DC's noise grid (rdc_lib.core.choices.GRID_KINDS)
    grid_sigma_min: float = GRID_SIGMA_MIN  # the grid's smallest level (paper and karras grids)
    lm_steps: int = LM_STEPS  # RDC's likelihood maximization: N steps,
    lm_eta: float = LM_ETA  # ball radius in [0, 1] pixel units (eta = eps: --lm-eta 0.1 with --eps 0.1)
    lm_step_size: float = LM_STEP_SIZE  # and step size (rdc_lib.diffusion.lm)
    split: str = "test"  # the images: "test", or "val" (choices are made there: rdc_lib.experiments.selection)

    def __post_init__(self) -> None:
        defense = get_defense(self.defense)
        check_choice("attack", self.attack, eval_attack_names())
        check_choice("norm", self.norm, THREAT_NORMS)
        if self.attack != NO_ATTACK:
            self._check_attack(defense)
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"an l_inf eps above 1 is meaningless for images in [0, 1], got {self.eps}")
        for name in (
            "n",
            "eot",
            "verify",
            "steps",
            "restarts",
            "timesteps",
            "n_eval",
            "vote",
            "chunk",
            "square_queries",
            "n_target_classes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be >= 1{_AT_LEAST_ONE.get(name, '')}, got {name} = {getattr(self, name)}"
                )
        for name, valid in (("noise_mode", NOISE_MODES), ("grad_mode", GRAD_MODES), ("heads", HEADS)):
            check_choice(name, getattr(self, name), valid)
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("split", self.split, SPLITS)
        with_denoiser = ", ".join(defense_names(needs_denoiser=True))
        if self.denoiser and not defense.needs_denoiser:
            raise ValueError(
                f"denoiser= selects the diffusion model of {with_denoiser}; defense {self.defense!r} has none"
            )
        if self.denoiser and self.dataset != "digits":
            raise ValueError("denoiser= is for digits; CIFAR-10 takes its checkpoints from preset and ckpt_dir")
        if self.dataset not in defense.datasets:
            raise ValueError(
                f"on {self.dataset} the defenses are {', '.join(defense_names(datasets=self.dataset))}, "
                f"got {self.defense!r}"
            )
        self._check_spec_settings(defense)
        if self.preset or self.dataset == "cifar10":
            self._apply_preset()
        if defense.needs_denoiser and self.dataset == "digits" and not self.denoiser:
            # A new configuration always names its denoiser: records stored with denoiser "" meant the legacy
            # checkpoint of `heads` (rdc_lib.core.paths.stored_denoiser_name) and keep that meaning and their keys.
            # A digits preset fixes its own checkpoint (the defaults of heads do not change a preset).
            object.__setattr__(self, "denoiser", self._preset_denoiser() or default_denoiser(self.heads))

    def _check_spec_settings(self, defense) -> None:
        """The grid and LM settings: valid, read by the defense, not overridden by a preset."""
        check_choice("grid", self.grid, GRID_KINDS)
        check_grid_sigma_min(self.grid_sigma_min, self.grid)
        if self.lm_steps < 0 or not self.lm_eta >= 0 or not self.lm_step_size > 0:
            raise ValueError(
                f"LM settings must be lm_steps >= 0, lm_eta >= 0, lm_step_size > 0; got {self.lm_steps}, "
                f"{self.lm_eta}, {self.lm_step_size}"
            )
        changed = [n for n in _SPEC_SETTINGS if getattr(self, n) != getattr(EvalConfig, n)]
        unread = [n for n in changed if n not in defense.extra_args]
        if unread:
            readers = ", ".join(n for n in defense_names() if set(unread) <= set(get_defense(n).extra_args))
            raise ValueError(
                f"defense {self.defense!r} does not read {', '.join(unread)} (defenses that do: {readers})"
            )
        if changed and (self.preset or self.dataset == "cifar10"):
            raise ValueError(
                f"{', '.join(changed)}: the preset {self.preset or 'cifar10-paper'!r} fixes the grid and "
                "the LM settings (rdc presets NAME shows them); drop the flag or leave out the preset"
            )

    def _check_attack(self, defense) -> None:
        """The attack's registry facts against the threat model and the defense."""
        info = get_attack(self.attack)
        if self.norm not in info.norms:
            raise ValueError(
                f"attack {self.attack!r} goes with norm {' or '.join(map(repr, info.norms))}, got "
                f"{self.norm!r} (norm 'flow' is StAdv's flow bound: attack stadv, eps = flow bound)"
            )
        if "denoiser" in info.extra_args and not defense.needs_denoiser:
            raise ValueError(
                f"attack {self.attack!r} needs a diffusion defense "
                f"({', '.join(defense_names(needs_denoiser=True))}); {self.defense!r} has no denoiser"
            )

    def _apply_preset(self) -> None:
        """Apply the preset (cifar10 implies 'cifar10-paper') to the fields it fixes that are left at their
        defaults; refuse any other value that differs from the preset's (never ignore it)."""
        from ..defenses.presets import eval_settings, preset_conflicts

        name = self.preset or "cifar10-paper"
        fixed = eval_settings(name)
        set_away = {k: getattr(self, k) for k in fixed if getattr(self, k) != getattr(EvalConfig, k)}
        problems = preset_conflicts(name, set_away)
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "preset", name)
        for k, v in fixed.items():
            object.__setattr__(self, k, v)

    def _preset_denoiser(self) -> str:
        """The shipped checkpoint name a preset fixes for the digits (its classifier file's stem); "" without one."""
        if not self.preset:
            return ""
        from ..defenses.presets import get_preset

        return Path(get_preset(self.preset).checkpoints.classifier).stem

    def identity(self) -> dict:
        """The fields that identify this configuration (records headers, ``key``).

        Fields added after results were first stored (``_LATER_FIELDS``) count only when set away from
        their default, so the keys, records and resumable runs of older configurations stay valid.
        """
        d = asdict(self)
        for name in _LATER_FIELDS:
            if d[name] == getattr(EvalConfig, name):
                del d[name]
        return d

    def key(self) -> str:
        """A short hash of the identifying fields (names the records file)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_stored(cls, config: dict) -> "EvalConfig":
        """The configuration a stored one (a records header, or a result row: keys that are not fields are
        ignored) was run with, by any code version.

        A stored denoiser "" of a defense with a denoiser meant the legacy checkpoint of its ``heads``
        (rdc_lib.core.paths.stored_denoiser_name), so it comes back named (digits_multi / digits_single), never as
        today's default; the result's ``key()`` is the key of that meaning, not the stored key.
        """
        params = {f.name: config[f.name] for f in fields(cls) if f.name in config}
        info = get_defense(params.get("defense", cls.defense))
        if info.needs_denoiser and not params.get("denoiser"):
            params["denoiser"] = stored_denoiser_name({"heads": cls.heads, **params})
        return cls(**params)

    @classmethod
    def from_params(cls, params: dict, explicit: set[str] | None = None) -> "EvalConfig":
        """From a dict of fields; ``explicit``: the names the user set (default: all of ``params``), which a
        preset refuses when they differ from its value even if they equal the field's default."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"unknown evaluation parameters {unknown}; valid: {sorted(known)}")
        preset = params.get("preset") or ("cifar10-paper" if params.get("dataset") == "cifar10" else "")
        if preset:
            from ..defenses.presets import preset_conflicts

            names = set(params) if explicit is None else explicit
            problems = preset_conflicts(preset, {k: params[k] for k in names if k in params})
            if problems:
                raise ValueError("; ".join(problems))
        return cls(**params)


def defense_spec(cfg: EvalConfig) -> DefenseSpec:
    """The defense part of ``cfg``: every ``DefenseSpec`` field ``EvalConfig`` has under the same name (one
    definition: a setting added to both reaches the builder without a copy here), plus name, denoiser_path and
    ckpt_dir (CIFAR-10 only)."""
    shared = ({f.name for f in fields(DefenseSpec)} & {f.name for f in fields(EvalConfig)}) - {"ckpt_dir"}
    return DefenseSpec(
        name=cfg.defense,
        **{k: getattr(cfg, k) for k in sorted(shared)},
        ckpt_dir=cfg.ckpt_dir if cfg.dataset == "cifar10" else "",
        denoiser_path=str(resolve_denoiser(cfg.denoiser)) if cfg.denoiser else None,
    )


def resolve_denoiser(name_or_path: str) -> Path:
    """A checkpoint path as given, or ``data/checkpoints/<name>.safetensors`` for a bare shipped name;
    ``diffusers:FOLDER`` (a local diffusers model, rdc_lib.models.diffusers_adapter) is checked and kept as given."""
    from ..core.paths import checkpoint_path
    from ..models.diffusers_adapter import inspect_diffusers_folder, is_diffusers_ref

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
        from ..defenses.presets import required_files

        need = required_files(cfg.preset or "cifar10-paper", cfg.data_root or None, cfg.ckpt_dir)
        if not need.ok:
            raise FileNotFoundError(need.message)
    x_all, y_all = load_dataset(cfg.dataset, cfg.split, root=cfg.data_root or None)
    if cfg.offset + cfg.n > x_all.shape[0]:
        raise ValueError(f"n + offset = {cfg.n + cfg.offset} exceeds the {x_all.shape[0]} {cfg.split} images")
    x_all = x_all[cfg.offset : cfg.offset + cfg.n].to(device)
    y_all = y_all[cfg.offset : cfg.offset + cfg.n].to(device)
    if model is None:
        model = build_defense(defense_spec(cfg), device)
    if cfg.attack != NO_ATTACK:
        build_evaluated_attack(cfg, model)  # a configuration the attack refuses fails here, before any work
        if cfg.run_checks:
            checks.check_sample_size(cfg.n)

    records, x_adv_all = load_records(records_dir, cfg, x_all.cpu(), y_all.cpu(), restart=restart)
    bar = None
    if progress:
        from ..core.progress import progress_bar

        bar = progress_bar(cfg.n, f"eval {cfg.defense}/{cfg.attack}", "img", initial=len(records))
    attack_stats: list[dict] = []
    for start in range(0, cfg.n, cfg.chunk):
        stop = min(start + cfg.chunk, cfg.n)
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

    recs = [records[i] for i in range(cfg.n)]
    result = {**asdict(cfg), **summarize(recs, cfg.attack != NO_ATTACK), "attack_stats": attack_stats}
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
