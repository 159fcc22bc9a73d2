"""Every generated document of docs/ in one place: which script writes it, from which raw rows, and how.

``benchmarks/regenerate_docs.py`` and ``tests/test_docs_generated.py`` iterate ``DOCS``; a new generated
document is one more ``GeneratedDoc`` here (and nothing else to change in either of them).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GeneratedDoc:
    """One generated document.

    doc:    its file name under docs/
    script: the script that writes it (its ``doc`` mode), relative to the repository root
    raw:    the raw files it reads, under docs/raw
    notes:  the hand-written notes it reads, under docs/ (None: it has none)
    run:    ``run(raw_dir, out, notes)`` writes the document to ``out`` (and its figures, if it draws any, to
            ``out.parent / "figures"``) from the raw files in ``raw_dir`` only; ``notes``: the notes file's path
    """

    doc: str
    script: str
    raw: tuple[str, ...]
    notes: str | None
    run: Callable[[Path, Path, Path | None], None]


def _results(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.drivers import results_table

    results_table.doc(Namespace(records=str(raw), out=str(out), notes=str(notes)))


def _evaluation(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.drivers import evaluation_report

    evaluation_report.doc(Namespace(records=str(raw), out=str(out), notes=str(notes), n_eval=10))


def _theory(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.drivers import theory_report

    theory_report.doc(raw / "theory.json", out, notes)


def _performance(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.drivers import performance_report

    performance_report.doc(raw / "performance.json", out)


def _denoisers(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.drivers import denoiser_study

    denoiser_study.doc(Namespace(raw=str(raw / "denoiser_study.jsonl"), out=str(out), notes=str(notes)))


def _certified(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.drivers import certify_report

    certify_report.cmd_doc(
        Namespace(
            raw=str(raw / "certified.jsonl"),
            out=str(out),
            bench=str(raw / "bench_certify.json"),
            notes=str(notes) if notes else "",
        )
    )


def _speed(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.timing import profile_strongest

    out.write_text(profile_strongest.render(raw, notes))


def _grid_levels(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.drivers import grid_levels

    grid_levels.doc(Namespace(raw=str(raw / "grid_levels.jsonl"), out=str(out), notes=str(notes)))


def _findings(raw: Path, out: Path, notes: Path | None) -> None:
    from benchmarks.drivers import findings_report

    findings_report.doc(Namespace(raw=str(raw), out=str(out)))


DOCS: tuple[GeneratedDoc, ...] = (
    GeneratedDoc(
        "results.md",
        "benchmarks/drivers/results_table.py",
        ("results.jsonl", "headline.jsonl", "crosscheck_torchattacks.jsonl", "evaluation.jsonl"),
        "results_notes.md",
        _results,
    ),
    GeneratedDoc(
        "evaluation.md",
        "benchmarks/drivers/evaluation_report.py",
        ("evaluation.jsonl", "eot_diagnostic.json"),
        "evaluation_notes.md",
        _evaluation,
    ),
    GeneratedDoc("theory.md", "benchmarks/drivers/theory_report.py", ("theory.json",), "theory_notes.md", _theory),
    GeneratedDoc(
        "performance.md", "benchmarks/drivers/performance_report.py", ("performance.json",), None, _performance
    ),
    GeneratedDoc(
        "denoisers.md",
        "benchmarks/drivers/denoiser_study.py",
        ("denoiser_study.jsonl", "headline.jsonl"),
        "denoisers_notes.md",
        _denoisers,
    ),
    GeneratedDoc(
        "certified.md",
        "benchmarks/drivers/certify_report.py",
        ("certified.jsonl", "bench_certify.json"),
        "certified_notes.md",
        _certified,
    ),
    GeneratedDoc(
        "speed.md",
        "benchmarks/timing/profile_strongest.py",
        ("profile_strongest.json", "bench_strongest.json"),
        "speed_notes.md",
        _speed,
    ),
    GeneratedDoc(
        "grid_levels.md",
        "benchmarks/drivers/grid_levels.py",
        ("grid_levels.jsonl",),
        "grid_levels_notes.md",
        _grid_levels,
    ),
    GeneratedDoc(
        "findings.md",
        "benchmarks/drivers/findings_report.py",
        (
            "headline.jsonl",
            "evaluation.jsonl",
            "grid_levels.jsonl",
            "denoiser_study.jsonl",
            "certified.jsonl",
            "sweep_digits_rdc_multi_h16_long_adv_eps_eta.csv",
        ),
        None,
        _findings,
    ),
)

GENERATED: dict[str, GeneratedDoc] = {d.doc: d for d in DOCS}
