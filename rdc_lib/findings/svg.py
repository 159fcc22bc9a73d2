"""The docs' figures: a :class:`~rdc_lib.findings.data.FigureData` drawn with matplotlib into a byte-stable SVG.

Byte-stable: no date in the metadata, a fixed hash salt for the SVG ids, text drawn as paths (no font lookup at
view time); two runs with the same matplotlib write the same bytes (tests/test_docs_generated.py compares them).
Intervals are error bars; a point whose checks failed is drawn hollow (bars: hatched) and labelled UNTRUSTED,
a point whose checks did not run is drawn hollow grey and labelled "not checked".
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import data
from .data import COLOURS, FigureData, Point

__all__ = ["FIGURES", "SVG_RC", "draw", "figure_lines", "figures_of", "write_figures", "write_svg"]

# generated document -> (figure file stem under docs/figures, builder of rdc_lib.findings.data) its doc mode writes
FIGURES: dict[str, tuple] = {
    "results.md": (("robust_by_defence", data.defence_bars), ("robust_vs_cost", data.cost_scatter)),
    "denoisers.md": (("class_gap_by_level", data.class_gap),),
    "grid_levels.md": (("robust_vs_grid_start", data.grid_start),),
    "certified.md": (("certified_vs_empirical", data.certified_curves),),
    "findings.md": (("robust_vs_eps", data.sweep_eps), ("sweep_eps_eta", data.sweep_grid)),
}


def figures_of(doc: str, raw: Path) -> list[FigureData]:
    """The figure data of the generated document ``doc`` (a key of FIGURES) from the raw rows in ``raw``."""
    if doc not in FIGURES:
        raise ValueError(f"{doc!r} has no figures; documents with figures: {', '.join(FIGURES)}")
    out = [build(raw) for _, build in FIGURES[doc]]
    for (name, _), fd in zip(FIGURES[doc], out):
        if fd.name != name:
            raise ValueError(f"builder of {name} returned figure {fd.name!r}")
    return out


SVG_RC = {
    "svg.hashsalt": "rdc-findings",
    "svg.fonttype": "path",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
}
UNTRUSTED = "UNTRUSTED (a sanity check failed)"
UNCHECKED = "not checked (no sanity checks run)"


def _scale(fd: FigureData) -> float:
    return 100.0 if fd.percent else 1.0


def _err(p: Point, k: float) -> tuple[list[float], list[float]] | None:
    if p.low is None or p.high is None:
        return None
    return [k * (p.y - p.low)], [k * (p.high - p.y)]


def _trust_handles(points: list[Point], bars: bool = False) -> list:
    out = []
    if any(p.trusted is False for p in points):
        out.append(
            Patch(facecolor="white", edgecolor="black", hatch="///", label=UNTRUSTED)
            if bars
            else Line2D(
                [],
                [],
                marker="o",
                linestyle="none",
                markerfacecolor="white",
                markeredgecolor="black",
                label="UNTRUSTED (a check failed): open marker, named beside it",
            )
        )
    if any(p.trusted is None for p in points):
        out.append(
            Line2D(
                [], [], marker="o", linestyle="none", markerfacecolor="white", markeredgecolor="grey", label=UNCHECKED
            )
        )
    return out


def _hbar(fig: Figure, fd: FigureData) -> None:
    ax = fig.add_subplot()
    cats = list(dict.fromkeys(p.x for s in fd.series for p in s.points))
    k, height = _scale(fd), 0.8 / len(fd.series)
    for i, s in enumerate(fd.series):
        colour = COLOURS[i % len(COLOURS)]
        for p in s.points:
            y = cats.index(p.x) + (i - (len(fd.series) - 1) / 2) * height
            bad = p.trusted is not True
            ax.barh(
                y,
                k * p.y,
                height=height * 0.95,
                color="white" if bad else colour,
                edgecolor=colour,
                hatch="///" if p.trusted is False else None,
                linewidth=1.2,
            )
            err = _err(p, k)
            if err:
                ax.errorbar(k * p.y, y, xerr=[err[0], err[1]], fmt="none", ecolor="black", capsize=3, linewidth=1)
            tag = "" if p.trusted else (" UNTRUSTED" if p.trusted is False else " not checked")
            ax.text(k * (p.high if p.high is not None else p.y) + 1, y, f"{k * p.y:.1f}%{tag}", va="center", fontsize=8)
    ax.set_yticks(range(len(cats)), cats)
    groups = [str(c).split(":")[0] if ":" in str(c) else "" for c in cats]
    for j in range(1, len(cats)):
        if groups[j] != groups[j - 1]:
            ax.axhline(j - 0.5, color="grey", linewidth=0.8)
    if fd.reference:
        ax.axvline(k * fd.reference[0], color="black", linestyle=":", linewidth=1)
        ax.text(k * fd.reference[0], -0.75, fd.reference[1], ha="center", va="bottom", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110 if fd.percent else None)
    ax.set_xlabel(fd.xlabel)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(facecolor=COLOURS[i % len(COLOURS)], label=s.name) for i, s in enumerate(fd.series)]
    handles += _trust_handles([p for s in fd.series for p in s.points], bars=True)
    fig.legend(handles=handles, loc="outside lower center", ncol=1, frameon=False)


def _lines(fig: Figure, fd: FigureData, markers_only: bool = False) -> None:
    ax = fig.add_subplot()
    k = _scale(fd)
    groups = list(dict.fromkeys(s.group or s.name for s in fd.series))
    for i, s in enumerate(fd.series):
        colour = COLOURS[groups.index(s.group or s.name) % len(COLOURS)]
        shift = (i - (len(fd.series) - 1) / 2) * fd.dodge
        s = replace(s, points=tuple(replace(p, x=p.x + shift) for p in s.points)) if shift else s
        xs, ys = [p.x for p in s.points], [k * p.y for p in s.points]
        if not markers_only:
            ax.plot(
                xs,
                ys,
                color=colour,
                linestyle="--" if s.dashed else "-",
                linewidth=1.5,
                label=None if s.group else s.name,
            )
        for p in s.points:
            err = _err(p, k)
            if err:
                ax.errorbar(
                    p.x, k * p.y, yerr=[err[0], err[1]], fmt="none", ecolor=colour, capsize=3, linewidth=1, alpha=0.8
                )
            ax.plot(
                [p.x],
                [k * p.y],
                marker="s" if s.dashed else "o",
                markersize=6,
                linestyle="none",
                markerfacecolor=colour if p.trusted else "white",
                markeredgecolor=colour if p.trusted is not None else "grey",
                markeredgewidth=1.5,
            )
            if p.trusted is False:
                ax.annotate(
                    "UNTRUSTED",
                    (p.x, k * p.y),
                    xytext=(0, -14),
                    textcoords="offset points",
                    fontsize=7,
                    ha="center",
                    color="black",
                )
        if markers_only:
            ax.plot([], [], marker="o", linestyle="none", color=colour, label=s.name)
    handles, _ = ax.get_legend_handles_labels()
    if any(s.group for s in fd.series):
        handles += [Line2D([], [], color=COLOURS[i % len(COLOURS)], linewidth=3, label=g) for i, g in enumerate(groups)]
        handles += [
            Line2D([], [], color="black", linestyle="-", marker="o", label="certified (solid)"),
            Line2D([], [], color="black", linestyle="--", marker="s", label="empirical, l2 attack (dashed)"),
        ]
    handles += _trust_handles([p for s in fd.series for p in s.points])
    if fd.reference:
        ax.axhline(k * fd.reference[0], color="black", linestyle=":", linewidth=1)
        ax.annotate(
            fd.reference[1],
            (0.4, k * fd.reference[0]),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=8,
            ha="center",
        )
    if fd.log_x:
        ax.set_xscale("log")
    ax.set_xlabel(fd.xlabel)
    ax.set_ylabel(fd.ylabel)
    if fd.percent:
        lows = [p.low if p.low is not None else p.y for s in fd.series for p in s.points]
        ax.set_ylim(max(0.0, 10 * (k * min(lows) // 10) - 5), 102)
    ax.grid(alpha=0.3)
    longest = max(len(h.get_label()) for h in handles)
    ncol = 1 if longest > 45 else 2 if len(handles) > 3 else len(handles)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, frameon=False)
    _place_tags(fig, ax, fd, groups, k)  # last: the layout (legend included) is final when the tags are placed


TAG_SPOTS = (
    (7, -3, "left"),
    (-7, -3, "right"),
    (0, 7, "center"),
    (0, -13, "center"),
    (7, 6, "left"),
    (-7, 6, "right"),
    (7, -11, "left"),
    (-7, -11, "right"),
)


def _place_tags(fig: Figure, ax, fd: FigureData, groups: list[str], k: float) -> None:
    """Write each point's tag beside it where it overlaps no point and no tag already placed (first free spot of
    TAG_SPOTS, in points from the marker; the last spot when none is free)."""
    points = [(s, p) for s in fd.series for p in s.points if p.tag]
    if not points:
        return
    ax.set_xlim(ax.get_xlim()), ax.set_ylim(ax.get_ylim())
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    marks = [ax.transData.transform((p.x, k * p.y)) for s in fd.series for p in s.points]
    taken = [(x - 5, y - 5, x + 5, y + 5) for x, y in marks]
    for s, p in sorted(points, key=lambda sp: -sp[1].y):
        colour = COLOURS[groups.index(s.group or s.name) % len(COLOURS)]
        for dx, dy, ha in TAG_SPOTS:
            note = ax.annotate(
                p.tag, (p.x, k * p.y), xytext=(dx, dy), textcoords="offset points", fontsize=7, color=colour, ha=ha
            )
            box = note.get_window_extent(renderer)
            rect = (box.x0, box.y0, box.x1, box.y1)
            if not any(rect[0] < t[2] and t[0] < rect[2] and rect[1] < t[3] and t[1] < rect[3] for t in taken):
                break
            if (dx, dy, ha) != TAG_SPOTS[-1]:
                note.remove()
        taken.append(rect)


def _heatmap(fig: Figure, fd: FigureData) -> None:
    ax = fig.add_subplot()
    cols = list(dict.fromkeys(p.x for s in fd.series for p in s.points))
    k = _scale(fd)
    grid = [[next((k * p.y for p in s.points if p.x == c), float("nan")) for c in cols] for s in fd.series]
    low = min(min(row) for row in grid)
    image = ax.imshow(
        grid,
        cmap="viridis",
        vmin=max(0.0, 10 * (low // 10) - 10),
        vmax=100 if fd.percent else None,
        aspect="auto",
        origin="lower",
    )
    for i, s in enumerate(fd.series):
        for p in s.points:
            j = cols.index(p.x)
            tag = "" if p.trusted else ("\nUNTRUSTED" if p.trusted is False else "\nnot checked")
            count = p.hover.split("(")[1].split(",")[0] if "(" in p.hover else ""
            text = f"{k * p.y:.1f}%"
            if p.low is not None:
                text += f"\n({count}; {k * p.low:.0f}-{k * p.high:.0f})"
            ax.text(
                j,
                i,
                text + tag,
                ha="center",
                va="center",
                fontsize=9,
                color="white" if k * p.y < (low + 100) / 2 else "black",
            )
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(fd.series)), [s.name for s in fd.series])
    ax.set_xlabel(fd.xlabel)
    ax.set_ylabel(fd.ylabel)
    fig.colorbar(image, ax=ax, label="robust accuracy (%)")


def draw(fd: FigureData) -> Figure:
    """A matplotlib Figure (not attached to pyplot) showing ``fd``; call inside ``matplotlib.rc_context(SVG_RC)``."""
    if fd.kind == "hbar":
        cats = len({p.x for s in fd.series for p in s.points})
        fig = Figure(figsize=(10, 1.2 + 0.42 * cats + 0.25 * len(fd.series)), layout="constrained")
        _hbar(fig, fd)
    elif fd.kind in ("lines", "scatter"):
        fig = Figure(figsize=(9, 5.6), layout="constrained")
        _lines(fig, fd, markers_only=fd.kind == "scatter")
    elif fd.kind == "heatmap":
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        _heatmap(fig, fd)
    else:
        raise ValueError(f"unknown figure kind {fd.kind!r}; expected hbar, lines, scatter or heatmap")
    fig.suptitle(fd.title)
    return fig


def write_svg(fd: FigureData, folder: Path, png: bool = False) -> Path:
    """Write ``folder/<fd.name>.svg`` (and a PNG copy beside it when ``png``, for looking at it); return the SVG."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fd.name}.svg"
    with matplotlib.rc_context(SVG_RC):
        fig = draw(fd)
        fig.savefig(path, format="svg", metadata={"Date": None})
        if png:
            fig.savefig(path.with_suffix(".png"), format="png", dpi=110)
    return path


def write_figures(doc: str, raw: Path, folder: Path) -> list[Path]:
    """Write the figures of the generated document ``doc`` (a key of FIGURES) from the raw rows in ``raw``."""
    return [write_svg(fd, folder) for fd in figures_of(doc, raw)]


def figure_lines(fd: FigureData, caption: str = "") -> list[str]:
    """Markdown showing the figure (from a document in docs/) with a caption naming its raw files."""
    sources = ", ".join(f"docs/raw/{s}" for s in fd.sources)
    bars = any(p.low is not None for s in fd.series for p in s.points)
    return [
        f"![{fd.title}](figures/{fd.name}.svg)",
        "",
        f"*{caption + ' ' if caption else ''}Drawn from {sources} "
        f"(regenerated with the docs){_interval_note(fd) if bars else ''}.*",
        "",
    ]


def _interval_note(fd: FigureData) -> str:
    return "; 95% Wilson intervals in the cells" if fd.kind == "heatmap" else "; 95% Wilson intervals as error bars"
