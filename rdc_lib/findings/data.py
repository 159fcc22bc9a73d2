"""The findings figures' data, read from the raw rows of docs/raw (no computation beyond counting).

Each builder takes the raw folder and returns a :class:`FigureData`: named series of points, every point with
its value, 95% Wilson interval (or none), trust flag (True: checks passed, False: a check failed, None: not
checked) and a hover text naming the count and the command that made it. The SVG figures of the docs
(:mod:`rdc_lib.findings.svg`) and the notebook's plotly figures (:mod:`rdc_lib.findings.interactive`) both
draw these, so a figure and its table rest on the same rows. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core.choices import DEFAULT_DENOISERS, LEGACY_DENOISERS
from ..evaluation.stats import wilson
from .labels import defense_label

__all__ = [
    "FigureData",
    "Point",
    "Series",
    "certified_curves",
    "class_gap",
    "cost_scatter",
    "default_sweep",
    "defence_bars",
    "grid_start",
    "headline_rows",
    "is_shipped_row",
    "read_jsonl",
    "stochastic_rows",
    "sweep_cells",
    "sweep_eps",
    "sweep_grid",
    "variant_name",
]

MULTI, SINGLE = DEFAULT_DENOISERS["multi"], DEFAULT_DENOISERS["single"]
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")  # series colours


@dataclass(frozen=True)
class Point:
    """One measured value: ``y`` in [0, 1] (or a gap), its interval, trust flag and hover text."""

    x: float | str
    y: float
    low: float | None = None
    high: float | None = None
    trusted: bool | None = True
    hover: str = ""
    tag: str = ""  # a short name written beside the point (scatter figures)


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[Point, ...]
    dashed: bool = False
    group: str = ""  # series of one group share a colour (e.g. certified and empirical of one row)


@dataclass(frozen=True)
class FigureData:
    """What one figure shows. kind: 'hbar' (x: category), 'lines', 'scatter' or 'heatmap' (series: rows)."""

    name: str  # file stem under docs/figures
    kind: str
    title: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    sources: tuple[str, ...]  # raw files under docs/raw
    log_x: bool = False
    percent: bool = True  # y (hbar: x) is an accuracy drawn in percent
    reference: tuple[float, str] | None = None  # a value drawn as a dotted line across the plot, with its name
    dodge: float = 0.0  # lines: series i drawn shifted by (i - mean) * dodge in x, so error bars do not overlap


# ------------------------------------------------------------------------------------------- raw rows


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; a clear error when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: raw rows not found (expected a docs/raw JSON-lines file)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_shipped_row(row: dict) -> bool:
    """A headline row of the answer: a baseline without a denoiser (CNN, AT-CNN) or a defence on a shipped
    default denoiser (rdc_lib.core.choices.DEFAULT_DENOISERS); the study's other candidates are not."""
    return not row.get("denoiser") and row["defense"] in ("cnn", "at-cnn") or row.get("denoiser") in (MULTI, SINGLE)


def variant_name(row: dict) -> str:
    """Which network a row rests on, in words: 'baseline', 'multi-head default' or 'single-head default'."""
    return {MULTI: "multi-head default", SINGLE: "single-head default"}.get(row.get("denoiser") or "", "baseline")


def headline_rows(raw: Path) -> list[dict]:
    """The headline rows on the shipped defaults and the baselines, in the order of docs/results.md."""
    return [r for r in read_jsonl(raw / "headline.jsonl") if is_shipped_row(r)]


def _interval(acc: dict) -> tuple[float, float, float]:
    return acc["value"], acc["low"], acc["high"]


def _hover(row: dict, acc: dict, what: str) -> str:
    return (
        f"{what}: {100 * acc['value']:.1f}% ({acc['correct']}/{acc['total']}, 95% interval "
        f"{100 * acc['low']:.1f}-{100 * acc['high']:.1f})<br>command: {row.get('command', '')}"
    )


def bar_label(row: dict) -> str:
    """A bar's category: the network and the defence, e.g. 'multi-head default: rdc (eta 8/255)'."""
    name = variant_name(row)
    return defense_label(row).upper() if name == "baseline" else f"{name}: {defense_label(row)}"


def short_label(row: dict) -> str:
    """A compact name for a point: 'RDC η 8/255, σ≥0.6' (LM radius, grid start when not the paper's)."""
    full = defense_label(row)
    inner = full[full.index("(") + 1 : -1].split(", ") if "(" in full else []
    parts = [p.replace("eta ", "η ").replace("levels from sigma ", "σ≥") for p in inner]
    return row["defense"].upper().replace("DIFFPURE", "DiffPure") + (" " + ", ".join(parts) if parts else "")


def stochastic_rows(raw: Path) -> dict[str, dict]:
    """Per defence, the paper's stochastic variant under the strongest protocol measured (docs/evaluation.md): the
    lowest worst-of-N count among its checked stochastic rows (APGD-CE with EOT only: an upper bound)."""
    if not (raw / "evaluation.jsonl").is_file():
        return {}
    rows = [
        r
        for r in read_jsonl(raw / "evaluation.jsonl")
        if r.get("noise_mode") == "stochastic"
        and r.get("variant") == "stochastic"
        and r["defense"] not in ("cnn", "at-cnn")
    ]
    best: dict[str, dict] = {}
    for r in rows:
        if r.get("trusted") and (
            r["defense"] not in best or r["robust_worst"]["correct"] < best[r["defense"]]["robust_worst"]["correct"]
        ):
            best[r["defense"]] = r
    return best


# ------------------------------------------------------------------------------------------- figures

FIXED = "fixed noise, full ensemble (200 test digits)"
STOCHASTIC = "stochastic (paper's RDC), APGD-CE + EOT only, worst of 10 readings: an upper bound"


def defence_bars(raw: Path) -> FigureData:
    """Robust accuracy per defence on the shipped defaults and the baselines, fixed and stochastic side by side."""
    order = ("baseline", "multi-head default", "single-head default")
    rows = sorted(headline_rows(raw), key=lambda r: order.index(variant_name(r)))
    stochastic = stochastic_rows(raw)
    fixed, stoch = [], []
    for r in rows:
        value, low, high = _interval(r["robust"])
        label = bar_label(r)
        fixed.append(Point(label, value, low, high, r.get("trusted"), _hover(r, r["robust"], "robust")))
        s = stochastic.get(r["defense"])
        if s and s.get("denoiser") == r.get("denoiser") and defense_label(s) == defense_label(r):
            v, lo, hi = _interval(s["robust_worst"])
            stoch.append(Point(label, v, lo, hi, s.get("trusted"), _hover(s, s["robust_worst"], "worst of 10")))
    return FigureData(
        "robust_by_defence",
        "hbar",
        "Robust accuracy at l_inf eps 0.1 (digits)",
        "robust accuracy (%), 95% Wilson interval",
        "",
        (Series(FIXED, tuple(fixed)), Series(STOCHASTIC, tuple(stoch))),
        ("headline.jsonl", "evaluation.jsonl"),
        reference=_at_cnn(rows),
    )


def _at_cnn(rows: list[dict]) -> tuple[float, str] | None:
    at = next((r for r in rows if r["defense"] == "at-cnn"), None)
    return (at["robust"]["value"], f"AT-CNN {100 * at['robust']['value']:.1f}%") if at else None


def cost_scatter(raw: Path) -> FigureData:
    """Robust accuracy against seconds per test image of the whole evaluation (attack included), per network."""
    groups: dict[str, list[Point]] = {}
    for r in headline_rows(raw):
        value, low, high = _interval(r["robust"])
        label = variant_name(r)
        text = f"{bar_label(r)}<br>{r['seconds'] / r['n']:.1f} s per image<br>" + _hover(r, r["robust"], "robust")
        groups.setdefault(label, []).append(
            Point(r["seconds"] / r["n"], value, low, high, r.get("trusted"), text, short_label(r))
        )
    return FigureData(
        "robust_vs_cost",
        "scatter",
        "Robustness against cost (fixed noise, l_inf eps 0.1)",
        "seconds per test image of the evaluation (one shared CPU thread, log scale)",
        "robust accuracy (%)",
        tuple(Series(k, tuple(v)) for k, v in groups.items()),
        ("headline.jsonl",),
        log_x=True,
        reference=_at_cnn(headline_rows(raw)),
    )


def class_gap(raw: Path) -> FigureData:
    """The class gap per noise level (how much the denoiser's error grows with the wrong label) of the shipped
    defaults and of the multi-head denoiser that was not robust."""
    rows = {r["name"]: r for r in read_jsonl(raw / "denoiser_study.jsonl")}
    series = []
    for name in (SINGLE, MULTI, LEGACY_DENOISERS["multi"]):
        if name not in rows:
            continue
        r = rows[name]
        rob = r["robust"]
        title = f"{name} (DC robust {100 * rob['value']:.0f}% of {rob['total']} in the study)"
        series.append(
            Series(
                title,
                tuple(
                    Point(s, g, None, None, True, f"{name}: sigma {s:g}, gap {g:+.4f}<br>command: {r['command']}")
                    for s, g in zip(r["sigmas"], r["gap_test"])
                ),
            )
        )
    return FigureData(
        "class_gap_by_level",
        "lines",
        "Class gap per noise level (test digits)",
        "noise level sigma (pixel units, log scale)",
        "class gap: error with a wrong label minus with the right one",
        tuple(series),
        ("denoiser_study.jsonl",),
        log_x=True,
        percent=False,
    )


def grid_start(raw: Path) -> FigureData:
    """The DC's robust accuracy against the grid's smallest level sigma_min, per denoiser (images 200-359)."""
    groups: dict[str, list[Point]] = {}
    for r in read_jsonl(raw / "grid_levels.jsonl"):
        value, low, high = _interval(r["robust"])
        name = f"{r['denoiser']} (test digits {r['offset']}-{r['offset'] + r['n'] - 1})"
        text = f"sigma_min {r['sigma_min']:g}<br>" + _hover(r, r["robust"], "robust")
        groups.setdefault(name, []).append(Point(r["sigma_min"], value, low, high, r.get("trusted"), text))
    return FigureData(
        "robust_vs_grid_start",
        "lines",
        "DC robust accuracy against the grid's smallest level (fixed noise, l_inf eps 0.1)",
        "smallest noise level of the grid, sigma_min (pixel units)",
        "robust accuracy (%)",
        tuple(Series(k, tuple(sorted(v, key=lambda p: p.x))) for k, v in groups.items()),
        ("grid_levels.jsonl",),
    )


def certified_curves(raw: Path) -> FigureData:
    """Certified (randomized smoothing) and empirical (l2 attack) accuracy over the l2 radius, per certified row."""
    series = []
    for r in read_jsonl(raw / "certified.jsonl"):
        name = r["label"] + (f" ({r['posterior']} posterior)" if r["base"] == "noised-dc" else "")
        for kind, dashed in (("certified", False), ("empirical", True)):
            pts = []
            for radius, acc in sorted(r[kind].items(), key=lambda kv: float(kv[0])):
                pts.append(
                    Point(
                        float(radius),
                        acc["value"],
                        acc["low"],
                        acc["high"],
                        r.get("consistent"),
                        f"{name}, radius {float(radius):g}<br>" + _hover(r, acc, kind),
                    )
                )
            series.append(Series(f"{name}: {kind}", tuple(pts), dashed, group=name))
    return FigureData(
        "certified_vs_empirical",
        "lines",
        "Certified against empirical accuracy (100 test digits)",
        "l2 radius (pixel space [0, 1])",
        "accuracy (%)",
        tuple(series),
        ("certified.jsonl",),
    )


def _sweep_spec(raw: Path, name: str) -> dict:
    """The sweep file that made docs/raw/<name> (examples/sweeps/<stem>.yaml beside docs/), with its command."""
    stem = name.removeprefix("sweep_").removesuffix(".csv")
    path = raw.resolve().parents[1] / "examples" / "sweeps" / f"{stem}.yaml"
    spec = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return {**spec, "command": f"rdc sweep examples/sweeps/{stem}.yaml"}


def default_sweep(raw: Path) -> str:
    """The raw file of the (eps, eta) sweep of the shipped multi-head default (its sweep file names it)."""
    for path in sorted(raw.glob("sweep_*.csv")):
        if _sweep_spec(raw, path.name).get("params", {}).get("denoiser") == MULTI:
            return path.name
    raise FileNotFoundError(
        f"{raw}: no sweep_*.csv of the multi-head default {MULTI} (expected the cells of "
        "an `rdc sweep` whose examples/sweeps/*.yaml names it)"
    )


def sweep_cells(raw: Path, name: str | None = None) -> tuple[list[dict], dict]:
    """The cells of an (eps, eta) sweep (docs/raw/<name>, default: the multi-head default's) and its sweep file."""
    name = name or default_sweep(raw)
    path = raw / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sweep cells not found (expected the cells.csv of an `rdc sweep` run)")
    with path.open() as f:
        cells = list(csv.DictReader(f))
    return cells, {**_sweep_spec(raw, name), "file": name}


def _cell_point(cell: dict, x: float | str, spec: dict, clean: bool = False) -> Point:
    n = int(cell["n"])
    acc = wilson(round(float(cell["clean_acc" if clean else "robust_acc"]) * n), n)
    trusted = None if clean else {"passed": True, "UNTRUSTED": False}.get(cell["trusted"])
    what = "clean" if clean else f"robust at eps {float(cell['eps']):g}, eta {float(cell['lm_eta']):g}"
    return Point(
        x,
        acc.value,
        acc.low,
        acc.high,
        True if clean else trusted,
        f"{what}: {100 * acc.value:.1f}% ({acc.correct}/{acc.total}, 95% interval {100 * acc.low:.1f}-"
        f"{100 * acc.high:.1f})<br>command: {spec['command']}",
    )


def sweep_eps(raw: Path, name: str | None = None) -> FigureData:
    """RDC's robust accuracy against the attack budget eps, one line per LM radius eta (eps 0: clean)."""
    cells, spec = sweep_cells(raw, name)
    by_eta: dict[float, list[dict]] = {}
    for c in cells:
        by_eta.setdefault(float(c["lm_eta"]), []).append(c)
    series = []
    for eta in sorted(by_eta):
        ordered = sorted(by_eta[eta], key=lambda c: float(c["eps"]))
        pts = [_cell_point(ordered[0], 0.0, spec, clean=True)]
        pts += [_cell_point(c, float(c["eps"]), spec) for c in ordered]
        series.append(Series(f"LM radius eta {eta:g}" + (" (8/255)" if abs(eta - 8 / 255) < 1e-3 else ""), tuple(pts)))
    who = spec.get("params", {}).get("denoiser", spec["file"])
    return FigureData(
        "robust_vs_eps",
        "lines",
        f"RDC robust accuracy against the attack budget ({who}, fixed noise)",
        f"attack budget eps, l_inf (pixel units; 0 = clean), first {cells[0]['n']} test digits",
        "robust accuracy (%)",
        tuple(series),
        (spec["file"],),
        dodge=0.0015,
    )


def sweep_grid(raw: Path, name: str | None = None) -> FigureData:
    """The (eps, eta) grid: one heatmap row per LM radius eta, one column per attack budget eps."""
    cells, spec = sweep_cells(raw, name)
    etas = sorted({float(c["lm_eta"]) for c in cells})
    series = tuple(
        Series(
            f"{eta:g}" + (" (8/255)" if abs(eta - 8 / 255) < 1e-3 else ""),
            tuple(
                _cell_point(c, f"{float(c['eps']):g}", spec)
                for c in sorted(cells, key=lambda c: float(c["eps"]))
                if float(c["lm_eta"]) == eta
            ),
        )
        for eta in etas
    )
    who = spec.get("params", {}).get("denoiser", spec["file"])
    return FigureData(
        "sweep_eps_eta",
        "heatmap",
        f"RDC robust accuracy over (eps, eta), {who}",
        "attack budget eps (l_inf, pixel units)",
        "LM radius eta (l_inf, pixel units)",
        series,
        (spec["file"],),
    )
