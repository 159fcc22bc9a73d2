"""Turn a sweep store into tables (markdown / CSV / HTML) and a plotly figure of robust accuracy vs eps.

Every number keeps its attack's protocol label (``protocol``: "full ensemble", or e.g. "APGD-CE only: an
upper bound", from rdc_lib.attacks.registry.protocol_label) and its sanity-check status: a result's ``trusted`` flag
(``rdc_lib.evaluation`` sets it from its ``checks`` dict, ``{name: {"passed": bool, ...}}``) becomes ``yes`` / ``NO`` /
``-`` (no checks) in the tables, and untrusted points are drawn with an open ``x`` marker. A mean over seeds is trusted
only if every seed's result is.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from ..attacks.registry import protocol_label
from ..core.paths import stored_denoiser_name
from ..defenses import defense_names
from ..evaluation.checks import trust_label
from .store import CellRecord, ResultStore

__all__ = [
    "Report",
    "aggregate",
    "cell_rows",
    "figure_vs_eps",
    "group_keys",
    "markdown_table",
    "trust_of",
    "write_report",
]

CELL_COLUMNS = (
    "defense",
    "attack",
    "protocol",
    "norm",
    "eps",
    "seed",
    "n",
    "clean_acc",
    "robust_acc",
    "trusted",
    "failed_checks",
    "seconds",
)
GROUP_KEYS = ("defense", "attack", "norm")


def trust_of(result: dict[str, Any] | None) -> bool | None:
    """True/False from the result's ``trusted`` flag or its ``checks``; None when nothing was checked."""
    if not result:
        return None
    if isinstance(result.get("trusted"), bool):
        return result["trusted"]
    checks = result.get("checks")
    if isinstance(checks, dict) and isinstance(checks.get("trusted"), bool):
        return checks["trusted"]
    items = list(checks.values()) if isinstance(checks, dict) else checks if isinstance(checks, list) else []
    items = [c for c in items if isinstance(c, dict)]
    return all(bool(c.get("passed", False)) for c in items) if items else None


def _failed_checks(result: dict[str, Any] | None) -> str:
    checks = (result or {}).get("checks")
    items = checks.items() if isinstance(checks, dict) else enumerate(checks or [])
    return ", ".join(str(c.get("name", k)) for k, c in items if isinstance(c, dict) and c.get("passed") is False)


def _trust_text(flag: bool | None) -> str:
    return trust_label(flag)


UNTRUSTED, NOT_CHECKED, PASSED = _trust_text(False), _trust_text(None), _trust_text(True)


def cell_rows(records: Sequence[CellRecord]) -> list[dict[str, Any]]:
    """One flat dict per done cell: params overlaid with the result's scalars, plus trust columns."""
    rows = []
    for rec in records:
        if rec.status != "done":
            continue
        res = rec.result or {}
        row = {**rec.params, **{k: v for k, v in res.items() if isinstance(v, (int, float, str, bool)) or v is None}}
        if "denoiser" in res:
            row["denoiser"] = _denoiser_of(res)
        row["trusted"] = _trust_text(trust_of(res))
        if row.get("attack") not in (None, "none"):  # a single attack's robust accuracy is an upper bound: say so
            row["protocol"] = protocol_label(row["attack"], res.get("attacks_dropped", {}))
        row["failed_checks"] = _failed_checks(res)
        row["seconds"] = res.get("seconds", rec.duration)
        if isinstance(res.get("provenance"), dict):
            row["provenance"] = json.dumps(res["provenance"], sort_keys=True)
        rows.append(row)
    return rows


def _denoiser_of(result: dict[str, Any]) -> str:
    """The denoiser an evaluation result was run with: a stored "" of a diffusion defense on the digits meant the
    legacy checkpoint of its heads (rdc_lib.core.paths.stored_denoiser_name), never today's default."""
    if result.get("denoiser") or result.get("dataset", "digits") != "digits" or "heads" not in result:
        return result.get("denoiser") or ""
    return stored_denoiser_name(result) if result.get("defense") in defense_names(needs_denoiser=True) else ""


def group_keys(records: Sequence[CellRecord], x: str = "eps") -> list[str]:
    """Parameters that tell the curves apart: defense / attack / norm when present, then every other
    parameter that varies between cells (``x`` and the seed excluded: the mean runs over seeds), and the
    evaluated denoiser when it varies (the same ``heads`` loaded another checkpoint before the defaults changed)."""
    done = [r for r in records if r.status == "done"]
    params = [r.params for r in done]
    names = {k for p in params for k in p} - {x, "seed"}
    varying = sorted(k for k in names if len({json.dumps(p.get(k), sort_keys=True) for p in params}) > 1)
    denoisers = {_denoiser_of(r.result or {}) for r in done} - {""}  # defenses without a denoiser aside
    if len(denoisers) > 1 and "denoiser" not in varying:
        varying.append("denoiser")
    present = {k for r in done for k in (*r.params, *(r.result or {}))}
    return [g for g in GROUP_KEYS if g in present] + [k for k in varying if k not in GROUP_KEYS]


def aggregate(
    rows: Sequence[dict[str, Any]], x: str = "eps", y: str = "robust_acc", group: Sequence[str] = GROUP_KEYS
) -> list[dict[str, Any]]:
    """Mean / std / count of ``y`` over seeds per (group..., x); trusted only if every seed is."""
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if x in row and isinstance(row.get(y), (int, float)):
            key = tuple(_hashable(row.get(g)) for g in group) + (_hashable(row[x]),)
            buckets.setdefault(key, []).append(row)
    out = []
    for key in sorted(
        buckets, key=lambda k: tuple((v is None, str(v) if not isinstance(v, (int, float)) else v) for v in k)
    ):
        vals = [float(r[y]) for r in buckets[key]]
        flags = [r["trusted"] for r in buckets[key]]
        trusted = UNTRUSTED if UNTRUSTED in flags else (NOT_CHECKED if NOT_CHECKED in flags else PASSED)
        out.append(
            {
                **dict(zip(group, key[:-1])),
                x: key[-1],
                f"{y}_mean": statistics.fmean(vals),
                f"{y}_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "seeds": len(vals),
                "trusted": trusted,
            }
        )
    return out


def _hashable(value: Any) -> Any:
    """Group keys must be hashable: list/dict parameter values are grouped by their JSON text."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _columns(rows: Sequence[dict[str, Any]], preferred: Sequence[str]) -> list[str]:
    present = [c for c in preferred if any(c in r for r in rows)]
    varying = sorted({k for r in rows for k in r} - set(present))
    return present + [k for k in varying if len({_fmt(r.get(k)) for r in rows}) > 1]


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-markdown table of ``rows`` (missing values empty, floats to 4 significant digits)."""
    if not rows:
        return "_(no rows)_\n"
    esc = lambda s: _fmt(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        style = ' style="background:#fde2e2"' if r.get("trusted") == UNTRUSTED else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_vs_eps(
    agg: Sequence[dict[str, Any]], x: str = "eps", y: str = "robust_acc", group: Sequence[str] = GROUP_KEYS
) -> Any:
    """plotly Figure: ``y`` (mean over seeds, std error bars) vs ``x``, one trace per group (defense x
    attack x norm); untrusted points drawn as open ``x`` markers, with a legend entry saying so."""
    fig = go.Figure()
    traces: dict[tuple, list[dict[str, Any]]] = {}
    for row in agg:
        traces.setdefault(tuple(row.get(g) for g in group), []).append(row)
    for key, pts in traces.items():
        pts = sorted(pts, key=lambda r: r[x])
        name = " / ".join(str(k) for k in key if k is not None) or y
        fig.add_trace(
            go.Scatter(
                x=[p[x] for p in pts],
                y=[p[f"{y}_mean"] for p in pts],
                name=name,
                mode="lines+markers",
                error_y={"type": "data", "array": [p[f"{y}_std"] for p in pts], "visible": True},
                marker={
                    "symbol": ["x-open" if p["trusted"] == UNTRUSTED else "circle" for p in pts],
                    "size": [15 if p["trusted"] == UNTRUSTED else 9 for p in pts],
                    "line": {"width": 2},
                },
                customdata=[[p["seeds"], p["trusted"]] for p in pts],
                hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y:.3f}}<br>seeds=%{{customdata[0]}}<br>"
                "trusted=%{customdata[1]}<extra>%{fullData.name}</extra>",
            )
        )
    if any(p["trusted"] == UNTRUSTED for p in agg):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name="untrusted (sanity check failed)",
                marker={"symbol": "x-open", "size": 15, "color": "black", "line": {"width": 2}},
            )
        )
    fig.update_layout(
        xaxis_title=x, yaxis_title=f"{y} (mean over seeds)", template="plotly_white", legend_title=" / ".join(group)
    )
    if y.endswith("_acc"):
        fig.update_yaxes(range=[-0.02, 1.02])
    return fig


@dataclass(frozen=True)
class Report:
    """Paths of a written report and the row counts it summarised."""

    markdown: Path
    html: Path
    cells_csv: Path
    done: int
    failed: int
    untrusted: int


def write_report(
    store_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    x: str = "eps",
    y: str = "robust_acc",
    sweep: str | None = None,
    include_plotlyjs: bool | str = True,
) -> Report:
    """Write ``report.md``, ``report.html`` (self-contained: plotly.js embedded, works offline) and
    ``cells.csv`` for the store at ``store_path`` into ``out_dir`` (default: the store's folder)."""
    store_path = Path(store_path)
    with ResultStore(store_path, readonly=True) as store:
        records = store.rows(sweep=sweep)
    out = Path(out_dir) if out_dir is not None else store_path.parent
    out.mkdir(parents=True, exist_ok=True)
    rows = cell_rows(records)
    failed = [r for r in records if r.status == "failed"]
    cols = [c for c in _columns(rows, CELL_COLUMNS) if c != "provenance"]  # the CSV carries it, the tables not
    csv_cols = cols + (["provenance"] if any("provenance" in r for r in rows) else [])
    group = group_keys(records, x)
    agg = aggregate(rows, x, y, group)
    agg_cols = [*group, x, f"{y}_mean", f"{y}_std", "seeds", "trusted"]
    fail_rows = [
        {
            "key": r.key[:12],
            "params": r.params,
            "error": (r.error or "").strip().splitlines()[0][:200] if r.error else "",
            "finished": r.finished,
        }
        for r in failed
    ]
    untrusted = sum(r["trusted"] == UNTRUSTED for r in rows)
    unchecked = sum(r["trusted"] == NOT_CHECKED for r in rows)
    title = f"Sweep report: {', '.join(sorted({r.sweep for r in records})) or store_path.name}"
    md = [
        f"# {title}\n",
        f"{len(rows)} done, {len(failed)} failed, {untrusted} untrusted (untrusted: a sanity "
        "check failed, so treat that robust accuracy as an upper bound at best), "
        f"{unchecked} not checked (no sanity check ran).\n",
    ]
    if agg:
        md += [f"\n## {y} vs {x} (mean over seeds)\n\n", markdown_table(agg, agg_cols)]
    md += ["\n## Cells\n\n", markdown_table(rows, cols)]
    if fail_rows:
        md += ["\n## Failed cells\n\n", markdown_table(fail_rows, ["key", "params", "error", "finished"])]
    md_path, html_path, csv_path = out / "report.md", out / "report.html", out / "cells.csv"
    md_path.write_text("".join(md))
    csv_path.write_text(csv_text(rows, csv_cols))
    fig_html = ""
    if agg:
        fig_html = figure_vs_eps(agg, x, y, group).to_html(full_html=False, include_plotlyjs=include_plotlyjs)
    html_path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(md[1].strip())}</p>{fig_html}"
        f"<h2>{html.escape(y)} vs {html.escape(x)}</h2>{_html_table(agg, agg_cols)}"
        f"<h2>Cells</h2>{_html_table(rows, cols)}"
        + (
            f"<h2>Failed cells</h2>{_html_table(fail_rows, ['key', 'params', 'error', 'finished'])}"
            if fail_rows
            else ""
        )
        + "</body></html>"
    )
    return Report(
        markdown=md_path, html=html_path, cells_csv=csv_path, done=len(rows), failed=len(failed), untrusted=untrusted
    )
