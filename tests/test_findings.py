"""The findings (rdc_lib.findings, docs/findings.md, docs/figures): numbers from docs/raw, the headline's selection,
untrusted points drawn differently, clear errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from rdc_lib.core.choices import DEFAULT_DENOISERS
from rdc_lib.findings import data
from rdc_lib.findings.answer import facts, paired, pick
from rdc_lib.findings.svg import FIGURES, draw, write_svg

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "docs" / "raw"


def _rows(name: str) -> list[dict]:
    return [json.loads(l) for l in (RAW / name).read_text().splitlines() if l.strip()]


def test_every_count_on_the_findings_page_is_a_raw_row():
    """Each 'x% (a/b, 95% interval lo-hi)' of docs/findings.md is the count and interval of a raw row."""
    accs = [
        r[k]
        for name in ("headline.jsonl", "evaluation.jsonl")
        for r in _rows(name)
        for k in ("robust", "robust_worst", "clean")
        if k in r
    ]
    known = {(a["correct"], a["total"], round(100 * a["low"]), round(100 * a["high"])) for a in accs}
    text = (ROOT / "docs" / "findings.md").read_text()
    found = re.findall(r"(\d+\.\d)% \((\d+)/(\d+), 95% interval (\d+)-(\d+)\)", text)
    assert len(found) >= 10
    for pct, c, t, lo, hi in found:
        assert (int(c), int(t), int(lo), int(hi)) in known, f"{c}/{t} ({lo}-{hi}) is in no raw row"
        assert f"{100 * int(c) / int(t):.1f}" == pct


def test_the_answer_reads_the_rows_the_brief_names():
    F = facts(RAW)
    assert (F["multi_rdc_paper"].acc["correct"], F["at_cnn"].acc["correct"]) == (148, 165)
    c = paired(F["at_cnn"].row, F["multi_rdc_paper"].row)
    assert (c.a_only, c.b_only, f"{c.p_value:.2g}") == (28, 11, "0.0095")
    assert F["stochastic_rdc"].acc["correct"] == 129 and F["stochastic_rdc"].row["eot"] == 3


def test_a_missing_row_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(LookupError, match="expected one headline row of rdc on digits_film_single"):
        pick([], "rdc", "single")
    with pytest.raises(FileNotFoundError, match="raw rows not found"):
        data.read_jsonl(tmp_path / "headline.jsonl")
    with pytest.raises(ValueError, match="same images"):
        paired({"offset": 0, "n": 10}, {"offset": 0, "n": 20})


def test_headline_holds_the_shipped_defaults_and_baselines_only():
    shipped = set(DEFAULT_DENOISERS.values())
    rows = data.headline_rows(RAW)
    assert all(r["denoiser"] in shipped or r["defense"] in ("cnn", "at-cnn") for r in rows)
    table = (ROOT / "docs" / "results.md").read_text().split("## Headline")[1].split("Attack:")[0]
    body = [l for l in table.splitlines() if l.startswith("| ") and not l.startswith("| defense")]
    variants = {data.bar_label(r).split(": ")[-1] for r in rows if data.variant_name(r) != "baseline"}
    assert len(body) == len(rows) <= len(shipped) * len(variants) + 2
    # the candidates are not lost: every other headline row is in docs/denoisers.md
    others = [r for r in _rows("headline.jsonl") if not data.is_shipped_row(r)]
    study = (ROOT / "docs" / "denoisers.md").read_text()
    assert others and all(f"| {r['denoiser']} |" in study for r in others)
    assert study.count("| 200 (from 0) |") == len(others)


def test_stochastic_bars_only_beside_the_same_setting():
    fd = data.defence_bars(RAW)
    fixed, stoch = fd.series
    assert len(fixed.points) == len(data.headline_rows(RAW)) and 1 <= len(stoch.points) <= 3
    assert all(p.x.startswith("multi-head default: ") for p in stoch.points)
    rdc = next(p for p in stoch.points if p.x.endswith("rdc (eta 8/255)"))
    assert rdc.y == 0.645 and "worst of 10" in rdc.hover


def test_untrusted_and_unchecked_points_are_drawn_and_labelled(tmp_path):
    """An UNTRUSTED sweep cell (a failed check) and unchecked grid rows are named in the legend; a trusted-only
    figure has neither label."""
    fd = data.sweep_eps(RAW, "sweep_digits_rdc_eps_eta.csv")
    assert any(p.trusted is False for s in fd.series for p in s.points)
    assert write_svg(fd, tmp_path).stat().st_size > 0  # text is drawn as paths: the legend built is checked
    labels = ("UNTRUSTED (a", "not checked (no sanity checks run)")
    assert any(t.startswith(labels[0]) for t in _legend_texts(fd))
    assert any(t.startswith(labels[1]) for t in _legend_texts(data.grid_start(RAW)))
    assert not [t for t in _legend_texts(data.sweep_eps(RAW)) if t.startswith(labels)]


def _legend_texts(fd) -> list[str]:
    import matplotlib

    from rdc_lib.findings.svg import SVG_RC

    with matplotlib.rc_context(SVG_RC):
        fig = draw(fd)
    legends = [a.get_legend() for a in fig.axes if a.get_legend()] + list(fig.legends)
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def test_axes_are_named_and_intervals_drawn():
    import matplotlib

    from rdc_lib.findings.svg import SVG_RC

    for figures in FIGURES.values():
        for name, build in figures:
            fd = build(RAW)
            with matplotlib.rc_context(SVG_RC):
                fig = draw(fd)
            ax = fig.axes[0]
            assert ax.get_xlabel(), name
            assert ax.get_ylabel() or fd.kind == "hbar", name
            if fd.kind in ("lines", "scatter") and fd.percent:
                assert any(p.low is not None for s in fd.series for p in s.points), name


def test_unknown_figure_kind_and_document_are_refused():
    from rdc_lib.findings.interactive import plotly_figure
    from rdc_lib.findings.svg import figures_of

    bad = data.FigureData("x", "pie", "t", "x", "y", (), ())
    with pytest.raises(ValueError, match="unknown figure kind 'pie'"):
        draw(bad)
    with pytest.raises(ValueError, match="unknown figure kind 'pie'"):
        plotly_figure(bad)
    with pytest.raises(ValueError, match="'theory.md' has no figures"):
        figures_of("theory.md", RAW)


def test_plotly_hover_names_the_command_and_the_interval():
    from rdc_lib.findings.interactive import plotly_figure

    fig = plotly_figure(data.defence_bars(RAW))
    hover = fig.data[0].hovertext[0]
    assert "95% interval" in hover and "command: rdc eval" in hover and "checks passed" in hover


def test_sweep_needs_its_file(tmp_path):
    shutil.copy(RAW / "headline.jsonl", tmp_path / "headline.jsonl")
    with pytest.raises(FileNotFoundError, match="no sweep_"):
        data.sweep_cells(tmp_path)


def test_readme_starts_with_the_answer_its_figure_and_findings_first():
    """The first 40 lines: the answer, the main figure, docs/findings.md as the first doc linked; every percentage
    and p-value there is one docs/findings.md (generated from docs/raw) prints."""
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "![" in head and "docs/figures/robust_by_defence.svg" in head and "make run" in head
    docs = re.findall(r"docs/[\w/]+\.(?:md|svg)", head)
    assert docs[0] == "docs/findings.md", docs
    findings = (ROOT / "docs" / "findings.md").read_text()
    for number in re.findall(r"\d+\.\d+%|p = [\d.]+", head):
        assert number in findings, f"README says {number}, docs/findings.md does not"
