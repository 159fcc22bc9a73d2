"""Which noise levels carry robustness, explorable (notebook 01, section 6; docs/grid_levels.md).

The diffusion classifier sums weighted per-level losses over a grid of T levels from ``sigma_min`` to 3. On the
paper's grid (sigma_min 1e-4) the two smallest levels hold most of the quadrature weight, and there a multi-head
denoiser's class gap is about zero: the decision rests on levels an attacker can move cheaply. Starting the grid
higher drops them. :func:`level_views` computes, for each ``sigma_min``, everything the notebook's slider shows:
the grid's weights, the class gap at its levels, and the DC's logits on clean images, on adversarial images made
against the paper-grid DC (the same pixels for every grid) and on adversarial images made against that grid's DC
(an adaptive attack). :func:`read_grid_level_rows` reads the measured robust accuracies (docs/raw/grid_levels.jsonl).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..defenses.classifier import DiffusionClassifier
from ..diffusion.schedules import make_grid
from .study import class_gap_by_sigma

__all__ = ["GridLevelRow", "LevelView", "level_views", "read_grid_level_rows"]


@dataclass(frozen=True)
class GridLevelRow:
    """One measured cell of docs/grid_levels.md: a denoiser's DC robust accuracy on the grid from ``sigma_min``."""

    denoiser: str
    sigma_min: float
    timesteps: int
    n: int
    offset: int
    clean: dict[str, float]  # Accuracy.as_dict(): correct, total, value, low, high
    robust: dict[str, float]


def read_grid_level_rows(path: str | Path) -> list[GridLevelRow]:
    """The rows of ``path`` (JSON lines written by benchmarks/drivers/grid_levels.py), sorted by denoiser and sigma_min.

    FileNotFoundError naming the file if it is missing; ValueError naming the line if a row lacks a field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no grid-level rows at {path} (benchmarks/drivers/grid_levels.py run writes them)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        try:
            rows.append(
                GridLevelRow(
                    str(r["denoiser"]),
                    float(r["sigma_min"]),
                    int(r["timesteps"]),
                    int(r["n"]),
                    int(r["offset"]),
                    dict(r["clean"]),
                    dict(r["robust"]),
                )
            )
        except KeyError as exc:
            raise ValueError(f"{path}:{i}: a grid-level row needs the field {exc}; got {sorted(r)}") from None
    return sorted(rows, key=lambda r: (r.denoiser, r.sigma_min))


@dataclass
class LevelView:
    """The DC on the grid of T levels from ``sigma_min`` (tensors on the CPU, K classes, E example images).

    ``sigmas``, ``weights``, ``gap`` are (T,) (gap: mean smallest wrong-class minus true-class denoising error,
    model space); ``logits`` maps 'clean', 'adversarial (paper grid)' and 'adversarial (this grid)' to (E, K)
    DC logits on this grid (larger = more likely).
    """

    sigma_min: float
    sigmas: Tensor
    weights: Tensor
    gap: Tensor
    logits: dict[str, Tensor]

    def weight_share_below(self, sigma: float) -> float:
        """Share of the quadrature weight on levels below ``sigma``."""
        return float(self.weights[self.sigmas < sigma].sum() / self.weights.sum())

    def predictions(self) -> dict[str, list[int]]:
        return {k: v.argmax(1).tolist() for k, v in self.logits.items()}


def level_views(
    denoiser: nn.Module,
    x: Tensor,  # (E, C, H, W) images in [0, 1] whose decisions are shown
    y: Tensor,  # (E,) labels
    sigma_mins: Sequence[float],  # the slider's values (the first is the reference grid's)
    make_attack: Callable[[nn.Module], Any],  # DC -> attack (callable (x, y) -> x_adv), seeded by the caller
    *,
    timesteps: int,  # T, levels of every grid
    gap_x: Tensor,  # (B, C, H, W) images of the class-gap measurement
    gap_y: Tensor,  # (B,)
    seed: int,
) -> list[LevelView]:
    """One :class:`LevelView` per sigma_min (fixed-noise DCs seeded with ``seed``, the class gap with a generator
    seeded with ``seed`` per grid). The 'paper grid' adversarial images are made once, against the DC on the grid
    from ``sigma_mins[0]`` (pass the paper's 1e-4 first to read them as the paper grid's)."""
    if not sigma_mins:
        raise ValueError("sigma_mins must hold at least one grid start")
    if sorted(sigma_mins) != list(sigma_mins) or len(set(sigma_mins)) != len(sigma_mins):
        raise ValueError(f"sigma_mins must be increasing without repeats, got {list(sigma_mins)}")
    device = x.device
    y = y.to(device)
    views, x_ref = [], None
    for s in sigma_mins:
        grid = make_grid(timesteps, sigma_min=float(s))
        dc = DiffusionClassifier(denoiser, grid, noise_mode="fixed", seed=seed).eval()
        x_own = make_attack(dc)(x, y).detach()
        if x_ref is None:
            x_ref = x_own
        gen = torch.Generator(device=device).manual_seed(seed)
        gap = class_gap_by_sigma(denoiser, gap_x.to(device), gap_y.to(device), grid.sigmas.to(device), gen)
        with torch.no_grad():
            logits = {"clean": dc(x), "adversarial (paper grid)": dc(x_ref), "adversarial (this grid)": dc(x_own)}
        views.append(
            LevelView(
                float(s),
                grid.sigmas.float().cpu(),
                grid.weights.float().cpu(),
                gap.float().cpu(),
                {k: v.float().cpu() for k, v in logits.items()},
            )
        )
    return views
