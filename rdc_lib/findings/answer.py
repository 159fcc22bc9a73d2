"""The answer docs/findings.md states, read from the raw rows: the rows each claim rests on and paired tests.

``headline_facts(raw)`` picks the headline rows of the shipped defaults by their settings (defence, denoiser, LM
radius, grid start), ``paired(a, b)`` compares two rows image by image (exact McNemar test), and
``stochastic_fact`` / ``grid_choice`` read the stochastic protocol rows and the grid-level rows. Every number the
findings page prints comes from here; nothing is typed in by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.choices import DEFAULT_DENOISERS, GRID_SIGMA_MIN, LM_ETA, ROBUST_GRID_SIGMA_MIN
from ..evaluation.stats import PairedComparison, paired_comparison
from .data import headline_rows, read_jsonl, stochastic_rows

__all__ = ["Fact", "facts", "grid_choice", "paired", "pct", "pick"]


@dataclass(frozen=True)
class Fact:
    """One measured number: its row (a raw headline/evaluation row) and the accuracy dict the page prints."""

    key: str
    row: dict
    acc: dict  # {"correct", "total", "value", "low", "high"}

    def text(self) -> str:
        return pct(self.acc)


def pct(acc: dict) -> str:
    """'74.0% (148/200, 95% interval 68-80)'."""
    return (
        f"{100 * acc['value']:.1f}% ({acc['correct']}/{acc['total']}, 95% interval {100 * acc['low']:.0f}-"
        f"{100 * acc['high']:.0f})"
    )


def pick(
    rows: list[dict], defense: str, heads: str | None = None, eta: float = LM_ETA, sigma_min: float = GRID_SIGMA_MIN
) -> dict:
    """The one headline row of ``defense`` on the shipped default of ``heads`` (None: a baseline) with LM radius
    ``eta`` (RDC only) and grid start ``sigma_min`` (DC and RDC only); a clear error when there is not exactly one."""
    denoiser = DEFAULT_DENOISERS[heads] if heads else ""
    found = [
        r
        for r in rows
        if r["defense"] == defense
        and (r.get("denoiser") or "") == denoiser
        and (defense != "rdc" or abs(r.get("lm_eta", LM_ETA) - eta) < 1e-9)
        and (defense not in ("dc", "rdc") or abs(r.get("grid_sigma_min", GRID_SIGMA_MIN) - sigma_min) < 1e-9)
    ]
    if len(found) != 1:
        raise LookupError(
            f"expected one headline row of {defense} on {denoiser or 'no denoiser'} (eta {eta:g}, "
            f"sigma_min {sigma_min:g}), found {len(found)}: is docs/raw/headline.jsonl complete?"
        )
    return found[0]


def paired(a: dict, b: dict) -> PairedComparison:
    """Two headline rows compared image by image on their shared images (both need ``robust_images``)."""
    if (a["offset"], a["n"]) != (b["offset"], b["n"]) or "robust_images" not in a or "robust_images" not in b:
        raise ValueError("paired comparison needs two rows with per-image outcomes on the same images")
    images = range(a["offset"], a["offset"] + a["n"])
    ka, kb = set(a["robust_images"]), set(b["robust_images"])
    return paired_comparison([i in ka for i in images], [i in kb for i in images])


def grid_choice(raw: Path) -> dict:
    """Where the grid start was chosen: the test images of the grid-level rows and the robust accuracy per level."""
    rows = read_jsonl(raw / "grid_levels.jsonl")
    first, last = min(r["offset"] for r in rows), max(r["offset"] + r["n"] - 1 for r in rows)
    chosen = [r for r in rows if abs(r["sigma_min"] - ROBUST_GRID_SIGMA_MIN) < 1e-9]
    return {
        "first": first,
        "last": last,
        "denoisers": sorted({r["denoiser"] for r in rows}),
        "chosen": chosen[0] if chosen else None,
        "paper": next((r for r in rows if abs(r["sigma_min"] - GRID_SIGMA_MIN) < 1e-9), None),
    }


def facts(raw: Path) -> dict[str, Fact]:
    """The numbers of the answer, by name (keys below), each with the raw row it comes from."""
    rows = headline_rows(raw)
    spec = {
        "cnn": ("cnn", None, LM_ETA, GRID_SIGMA_MIN),
        "at_cnn": ("at-cnn", None, LM_ETA, GRID_SIGMA_MIN),
        "multi_dc": ("dc", "multi", LM_ETA, GRID_SIGMA_MIN),
        "multi_rdc_paper": ("rdc", "multi", LM_ETA, GRID_SIGMA_MIN),
        "multi_rdc_eps": ("rdc", "multi", 0.1, GRID_SIGMA_MIN),
        "multi_dc_grid": ("dc", "multi", LM_ETA, ROBUST_GRID_SIGMA_MIN),
        "multi_rdc_paper_grid": ("rdc", "multi", LM_ETA, ROBUST_GRID_SIGMA_MIN),
        "multi_rdc_eps_grid": ("rdc", "multi", 0.1, ROBUST_GRID_SIGMA_MIN),
        "single_dc": ("dc", "single", LM_ETA, GRID_SIGMA_MIN),
        "single_rdc_paper": ("rdc", "single", LM_ETA, GRID_SIGMA_MIN),
        "single_rdc_eps": ("rdc", "single", 0.1, GRID_SIGMA_MIN),
    }
    out = {}
    for key, (defense, heads, eta, sigma_min) in spec.items():
        row = pick(rows, defense, heads, eta, sigma_min)
        out[key] = Fact(key, row, row["robust"])
    for defense, row in stochastic_rows(raw).items():
        out[f"stochastic_{defense}"] = Fact(f"stochastic_{defense}", row, row["robust_worst"])
    return out
