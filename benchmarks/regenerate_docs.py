"""Regenerate every document of docs/ that is generated from raw data in docs/raw (never edited by hand).

    .venv/bin/python benchmarks/regenerate_docs.py                 # rewrite docs/*.md in place
    .venv/bin/python benchmarks/regenerate_docs.py --out /tmp/docs # write them elsewhere (to compare)

Each document is written by its own script's ``doc`` mode from the raw files only (and, for results.md and
evaluation.md, the hand-written notes appended verbatim); the doc modes of the documents in
rdc_lib.findings.svg.FIGURES also write their figures (SVG) to docs/figures from the same rows.
tests/test_docs_generated.py regenerates them all into a temporary folder and compares documents and figures
byte for byte with the committed files.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from argparse import Namespace
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# generated document -> (script in benchmarks/, raw files it reads under docs/raw, notes appended verbatim)
GENERATED: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "results.md": (
        "results_table.py",
        ("results.jsonl", "headline.jsonl", "crosscheck_torchattacks.jsonl", "evaluation.jsonl"),
        "results_notes.md",
    ),
    "evaluation.md": ("evaluation_report.py", ("evaluation.jsonl", "eot_diagnostic.json"), "evaluation_notes.md"),
    "theory.md": ("theory_report.py", ("theory.json",), None),
    "performance.md": ("performance_report.py", ("performance.json",), None),
    "denoisers.md": ("denoiser_study.py", ("denoiser_study.jsonl", "headline.jsonl"), "denoisers_notes.md"),
    "certified.md": ("certify_report.py", ("certified.jsonl", "bench_certify.json"), None),
    "speed.md": ("profile_strongest.py", ("profile_strongest.json", "bench_strongest.json"), "speed_notes.md"),
    "grid_levels.md": ("grid_levels.py", ("grid_levels.jsonl",), "grid_levels_notes.md"),
    "findings.md": (
        "findings_report.py",
        (
            "headline.jsonl",
            "evaluation.jsonl",
            "grid_levels.jsonl",
            "denoiser_study.jsonl",
            "certified.jsonl",
            "sweep_digits_rdc_multi_h16_long_adv_eps_eta.csv",
        ),
        None,
    ),
}


def figures(doc: str) -> list[str]:
    """The figures (file names under docs/figures) the doc mode of ``doc`` writes beside it."""
    from rdc_lib.findings.svg import FIGURES

    return [f"{name}.svg" for name, _ in FIGURES.get(doc, ())]


def _script(name: str) -> ModuleType:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"_rdc_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def regenerate(doc: str, out: Path, raw_dir: Path = DOCS / "raw", docs_dir: Path = DOCS) -> Path:
    """Write the generated document ``doc`` (a key of GENERATED) to ``out`` from the raw files in ``raw_dir``."""
    if doc not in GENERATED:
        raise ValueError(f"{doc!r} is not a generated document; generated: {', '.join(GENERATED)}")
    script, _, notes = GENERATED[doc]
    module = _script(script)
    notes_path = str(docs_dir / notes) if notes else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    if doc == "results.md":
        module.doc(Namespace(records=str(raw_dir), out=str(out), notes=notes_path))
    elif doc == "evaluation.md":
        module.doc(Namespace(records=str(raw_dir), out=str(out), notes=notes_path, n_eval=10))
    elif doc == "denoisers.md":
        module.doc(Namespace(raw=str(raw_dir / "denoiser_study.jsonl"), out=str(out), notes=notes_path))
    elif doc == "certified.md":
        module.cmd_doc(
            Namespace(raw=str(raw_dir / "certified.jsonl"), out=str(out), bench=str(raw_dir / "bench_certify.json"))
        )
    elif doc == "speed.md":
        out.write_text(module.render(raw_dir, Path(notes_path)))
    elif doc == "grid_levels.md":
        module.doc(Namespace(raw=str(raw_dir / "grid_levels.jsonl"), out=str(out), notes=notes_path))
    elif doc == "findings.md":
        module.doc(Namespace(raw=str(raw_dir), out=str(out)))
    elif doc == "theory.md":
        module.doc(raw_dir / "theory.json", out)
    else:
        module.doc(raw_dir / "performance.json", out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DOCS, help="folder to write the documents to (default: docs/)")
    ap.add_argument("--raw", type=Path, default=DOCS / "raw")
    args = ap.parse_args(argv)
    for doc in GENERATED:
        regenerate(doc, args.out / doc, args.raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
