"""The controlled denoiser study (issue 15): what makes a diffusion classifier robust.

Data in, data out (no printing); ``benchmarks/drivers/denoiser_study.py`` runs it and writes docs/denoisers.md.

- ``StudyEntry`` / ``load_study``: the study config, a list of denoisers each naming the factor in which it
  differs from the baseline (one of ``FACTORS``) and the ``rdc train`` command that made it.
- ``check_study_checkpoint``: load a denoiser checkpoint for the study, refusing a file of another kind or
  whose shape (classes, channels, resolution) does not fit the dataset.
- ``class_gap_by_sigma``: per level, the smallest wrong-class denoising error minus the true-class error
  (model space, mean over images). Positive means the label helps the denoiser; a DC decides by the
  weighted sum of these gaps, so a gap near zero at most levels leaves the decision on a thin margin.
- ``distance_to_optimal_by_sigma``: mean squared distance between a denoiser and the closed-form optimal
  denoiser of the training set (rdc_lib/models/optimal.py) on the same noisy inputs.
- ``measure_denoiser``: every clean measurement of one row (errors, gaps, distance, DC clean accuracy).
- ``robust_config`` / ``eval_command`` / ``robust_flags``: the robust column, an ``rdc eval`` run per row.

The report, docs/denoisers.md, is written from the rows by rdc_lib.experiments.study_report.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.choices import HEADLINE_BUDGET, SELECTION_SPLIT
from ..core.utils import check_images, check_labels
from ..data import dataset_info, load_dataset
from ..defenses.classifier import DiffusionClassifier
from ..diffusion.schedules import make_grid, noise_levels
from ..evaluation.records import records_paths
from ..evaluation.runner import EvalConfig
from ..models.base import Denoiser
from ..models.checkpoints import load_state_into, read_typed_checkpoint
from ..models.config import DenoiserConfig, build_denoiser
from ..models.optimal import OptimalDenoiser
from .theory import denoiser_error_by_sigma

__all__ = [
    "FACTORS",
    "STUDY_SIGMAS",
    "StudyEntry",
    "check_study_checkpoint",
    "class_gap_by_sigma",
    "distance_to_optimal_by_sigma",
    "load_study",
    "measure_denoiser",
]

# the factors a study row may differ in from the baseline ("baseline" is the reference row itself)
FACTORS = (
    "baseline",
    "conditioning",
    "per_head_layers",
    "distillation",
    "architecture",
    "width",
    "training_length",
    "dropout",
    "label_dropout",
    "noise_levels",
    "adversarial_inputs",
)
STUDY_SIGMAS = (0.1, 0.2, 0.4, 0.8, 1.6)  # model-space noise levels of the per-sigma columns


@dataclass(frozen=True)
class StudyEntry:
    name: str  # row name, e.g. "digits_multi_h32_distill"
    checkpoint: str  # path of the denoiser checkpoint (relative to the repository root)
    factor: str  # one of FACTORS
    command: str  # the `rdc train ...` command that produced the checkpoint
    n_robust: int = 100  # images of the robust-accuracy column (the first n of the validation split; --split test)
    note: str = ""  # what differs, in words
    parent: str = ""  # the entry it differs from in `factor` (default: the baseline entry)

    def __post_init__(self) -> None:
        if self.factor not in FACTORS:
            raise ValueError(
                f"study entry {self.name!r}: unknown factor {self.factor!r}; valid factors: {', '.join(FACTORS)}"
            )
        if not self.name or not self.checkpoint or not self.command:
            raise ValueError(f"study entry {self.name!r}: name, checkpoint and command must be non-empty")
        if self.n_robust < 0:
            raise ValueError(
                f"study entry {self.name!r}: n_robust must be >= 0 (0 = no robust column), got {self.n_robust}"
            )


def load_study(config: dict[str, Any]) -> list[StudyEntry]:
    """Validate a study config ``{"denoisers": [{name, checkpoint, factor, command, ...}, ...]}``."""
    if not isinstance(config, dict) or set(config) != {"denoisers"}:
        keys = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"a study config is a mapping with exactly one key 'denoisers', got {keys}")
    rows = config["denoisers"]
    if not isinstance(rows, list) or not rows:
        raise ValueError("'denoisers' must be a non-empty list of entries")
    known = set(StudyEntry.__dataclass_fields__)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"denoisers[{i}] must be a mapping, got {type(row).__name__}")
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(
                f"denoisers[{i}] ({row.get('name')!r}): unknown keys {unknown}; valid keys: {sorted(known)}"
            )
        missing = sorted({"name", "checkpoint", "factor", "command"} - set(row))
        if missing:
            raise ValueError(f"denoisers[{i}] ({row.get('name')!r}): missing keys {missing}")
        out.append(StudyEntry(**row))
    names = [e.name for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate study entry names: {dup}")
    if not any(e.factor == "baseline" for e in out):
        raise ValueError("a study needs one entry with factor 'baseline' (the reference the others differ from)")
    for e in out:
        if e.parent and e.parent not in names:
            raise ValueError(
                f"study entry {e.name!r}: parent {e.parent!r} is not an entry of the study ({', '.join(names)})"
            )
    return out


def check_study_checkpoint(path: str | Path, dataset: str = "digits", device: str | torch.device = "cpu") -> Denoiser:
    """Load the denoiser at ``path`` for a study on ``dataset``; clear errors for the wrong kind or shape."""
    state, cfg = read_typed_checkpoint(path, "denoiser", DenoiserConfig)
    info = dataset_info(dataset)
    want = (info["num_classes"], info["channels"], info["resolution"])
    got = (cfg.num_classes, cfg.img_channels, cfg.img_resolution)
    if got != want:
        raise ValueError(
            f"checkpoint {path} denoises (classes, channels, resolution) = {got}; the {dataset} study needs {want}"
        )
    net = build_denoiser(cfg)
    load_state_into(net, state, str(path))
    return net.to(device).eval()


@torch.no_grad()
def class_errors_by_sigma(
    denoiser: Denoiser,
    x01: Tensor,  # (B, C, H, W) clean images in [0, 1]
    sigmas,  # (T,) noise levels (model space)
    generator: torch.Generator | None = None,
    *,
    batch_size: int = 64,  # images per call
) -> Tensor:  # (B, K, T) mean squared error per image, class and level
    """Denoising error of every class-conditional model on one eps per (image, level), shared by the classes."""
    check_images(x01, channels=denoiser.img_channels, resolution=denoiser.img_resolution, name="x01")
    s = noise_levels(sigmas, x01)
    noise = torch.randn(
        (x01.shape[0], s.numel(), *x01.shape[1:]), generator=generator, device=x01.device, dtype=x01.dtype
    )
    x0 = x01 * 2 - 1
    out = []
    for i in range(0, x0.shape[0], batch_size):
        xb, nb = x0[i : i + batch_size], noise[i : i + batch_size]
        b, t = xb.shape[0], s.numel()
        noisy = (xb.unsqueeze(1) + s.reshape(1, -1, 1, 1, 1) * nb).flatten(0, 1)  # (b * T, C, H, W)
        den = denoiser.denoise_all(noisy, s.repeat(b))  # (b * T, K, C, H, W)
        err = ((den - xb.repeat_interleave(t, 0).unsqueeze(1)) ** 2).flatten(2).mean(-1)  # (b * T, K)
        out.append(err.reshape(b, t, -1).transpose(1, 2))
    return torch.cat(out, 0)


def class_gap_by_sigma(
    denoiser: Denoiser,
    x01: Tensor,  # (B, C, H, W) clean images in [0, 1]
    y: Tensor,  # (B,) true labels in [0, K)
    sigmas,  # (T,) noise levels (model space)
    generator: torch.Generator | None = None,
) -> Tensor:  # (T,) mean over images of min_{k != y} err_k - err_y
    """Class gap per level: how much better the true class denoises than the best wrong class."""
    check_labels(y, denoiser.num_classes, batch=x01.shape[0], name="y")
    err = class_errors_by_sigma(denoiser, x01, sigmas, generator)  # (B, K, T)
    y = y.to(err.device)
    rows = torch.arange(err.shape[0], device=err.device)
    true = err[rows, y]  # (B, T)
    wrong = err.scatter(1, y.reshape(-1, 1, 1).expand(-1, 1, err.shape[2]), float("inf")).amin(1)
    return (wrong - true).mean(0)


@torch.no_grad()
def distance_to_optimal_by_sigma(
    denoiser: Denoiser,
    optimal: Denoiser,
    x01: Tensor,  # (B, C, H, W) clean images in [0, 1]
    y: Tensor,  # (B,) labels in [0, K]
    sigmas,  # (T,)
    generator: torch.Generator | None = None,
) -> Tensor:  # (T,) mean over images and pixels of (D - D*)^2, model space
    """How far a learned denoiser is from the closed-form optimal one, on the same noisy inputs."""
    check_images(x01, channels=denoiser.img_channels, resolution=denoiser.img_resolution, name="x01")
    check_labels(y, denoiser.num_classes + 1, batch=x01.shape[0], name="y")
    s = noise_levels(sigmas, x01)
    noise = torch.randn(
        (x01.shape[0], s.numel(), *x01.shape[1:]), generator=generator, device=x01.device, dtype=x01.dtype
    )
    x0 = (x01 * 2 - 1).unsqueeze(1)
    noisy = (x0 + s.reshape(1, -1, 1, 1, 1) * noise).flatten(0, 1)
    sig, lab = s.repeat(x01.shape[0]), y.to(x01.device).repeat_interleave(s.numel())
    d = torch.cat([denoiser(noisy[i : i + 512], sig[i : i + 512], lab[i : i + 512]) for i in range(0, len(sig), 512)])
    d_opt = torch.cat(
        [optimal(noisy[i : i + 512], sig[i : i + 512], lab[i : i + 512]) for i in range(0, len(sig), 512)]
    )
    return ((d - d_opt) ** 2).flatten(1).mean(-1).reshape(x01.shape[0], -1).mean(0)


@torch.no_grad()
def distance_to_teacher_by_sigma(
    student: Denoiser,
    teacher: Denoiser,
    x01: Tensor,  # (B, C, H, W) clean images in [0, 1]
    sigmas,  # (T,) noise levels (model space)
    generator: torch.Generator | None = None,
    *,
    batch_size: int = 64,  # images per call
) -> Tensor:  # (T,) mean over images, classes and pixels of (D_s - D_t)^2, model space
    """How far a (distilled) student is from its teacher over all K class-conditional outputs, on the same noisy
    inputs: what distillation can still gain, level by level."""
    for net, name in ((student, "student"), (teacher, "teacher")):
        check_images(x01, channels=net.img_channels, resolution=net.img_resolution, name=f"x01 for the {name}")
    if student.num_classes != teacher.num_classes:
        raise ValueError(f"student has {student.num_classes} classes, the teacher {teacher.num_classes}")
    s = noise_levels(sigmas, x01)
    noise = torch.randn(
        (x01.shape[0], s.numel(), *x01.shape[1:]), generator=generator, device=x01.device, dtype=x01.dtype
    )
    x0 = x01 * 2 - 1
    total = torch.zeros(s.numel(), dtype=x01.dtype, device=x01.device)
    for i in range(0, x0.shape[0], batch_size):
        xb, nb = x0[i : i + batch_size], noise[i : i + batch_size]
        b, t = xb.shape[0], s.numel()
        noisy = (xb.unsqueeze(1) + s.reshape(1, -1, 1, 1, 1) * nb).flatten(0, 1)  # (b * T, C, H, W)
        gap = (student.denoise_all(noisy, s.repeat(b)) - teacher.denoise_all(noisy, s.repeat(b))) ** 2
        total += gap.flatten(1).mean(-1).reshape(b, t).sum(0)  # (T,)
    return total / x0.shape[0]


def measure_denoiser(
    denoiser: Denoiser,
    *,
    dataset: str = "digits",
    sigmas=STUDY_SIGMAS,
    timesteps: int = 16,  # T of the DC
    seed: int = 0,  # seeds the eps draws (a fresh generator per measurement)
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Clean measurements of one study row (JSON-able): per-sigma errors train/test, class gaps train/test,
    distance to the optimal denoiser on test images, DC clean accuracy (fixed noise), network passes and seconds.
    """
    device = torch.device(device)
    t0 = time.perf_counter()
    x_tr, y_tr = (t.to(device) for t in load_dataset(dataset, "train"))
    x_te, y_te = (t.to(device) for t in load_dataset(dataset, "test"))

    def gen() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    row: dict[str, Any] = {"sigmas": list(sigmas)}
    with torch.no_grad():
        row["error_train"] = denoiser_error_by_sigma(denoiser, x_tr, sigmas, y_tr, gen()).tolist()
        row["error_test"] = denoiser_error_by_sigma(denoiser, x_te, sigmas, y_te, gen()).tolist()
    row["gap_train"] = class_gap_by_sigma(denoiser, x_tr, y_tr, sigmas, gen()).tolist()
    row["gap_test"] = class_gap_by_sigma(denoiser, x_te, y_te, sigmas, gen()).tolist()
    optimal = OptimalDenoiser(x_tr, y_tr)
    row["dist_optimal_test"] = distance_to_optimal_by_sigma(denoiser, optimal, x_te, y_te, sigmas, gen()).tolist()
    dc = DiffusionClassifier(denoiser, make_grid(timesteps), noise_mode="fixed", seed=seed).eval()
    t1 = time.perf_counter()
    with torch.no_grad():
        pred = torch.cat([dc(x_te[i : i + 64]).argmax(1) for i in range(0, x_te.shape[0], 64)])
    row["dc_seconds_per_image"] = (time.perf_counter() - t1) / x_te.shape[0]
    row["dc_clean_correct"], row["dc_clean_total"] = int((pred == y_te).sum()), int(y_te.numel())
    row["passes_per_image"] = dc.network_passes(1)
    row["params"] = sum(p.numel() for p in denoiser.parameters())
    row["timesteps"] = timesteps
    row["measure_seconds"] = time.perf_counter() - t0
    return row


def entry_dict(entry: StudyEntry) -> dict[str, Any]:
    return asdict(entry)


# ------------------------------------------------------------------ robust column and report

ROBUST_SETTINGS = dict(attack="autoattack", norm="linf", eps=0.1, **HEADLINE_BUDGET, chunk=5, seed=0, run_checks=False)


def robust_config(entry: StudyEntry, heads: str, split: str = SELECTION_SPLIT, **overrides: Any) -> EvalConfig:
    """The ``EvalConfig`` of an entry's robust column: DC, fixed noise, AutoAttack-style ensemble, on the first
    ``entry.n_robust`` images of ``split`` (the validation split unless "test" is asked for:
    rdc_lib.experiments.selection)."""
    settings = {**ROBUST_SETTINGS, **overrides}
    return EvalConfig(
        defense="dc", heads=heads, n_images=entry.n_robust, denoiser=entry.checkpoint, split=split, **settings
    )


def eval_command(cfg, records: str) -> str:
    """The ``rdc eval`` command line that reproduces (and resumes) ``cfg``."""
    base = EvalConfig()
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in cfg.flat().items() if v != base.flat().get(k)]
    return "rdc eval " + " ".join(flags) + f" --records {records} --json"


def robust_flags(cfg, records_dir: str | Path) -> list[bool]:
    """Per test image (in order), whether it stayed correctly classified: read from the evaluation's records."""
    jsonl, _ = records_paths(records_dir, cfg)
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()[1:] if line.strip()]
    by_index = {r["index"]: bool(r["robust_first"]) for r in recs}
    missing = [i for i in range(cfg.offset, cfg.offset + cfg.n_images) if i not in by_index]
    if missing:
        raise ValueError(f"records {jsonl} lack images {missing[:5]}... of the evaluation (incomplete run)")
    return [by_index[i] for i in range(cfg.offset, cfg.offset + cfg.n_images)]
