"""Regenerate every document of docs/ that is generated from raw data in docs/raw (never edited by hand).

    .venv/bin/python benchmarks/regenerate_docs.py                 # rewrite docs/*.md in place
    .venv/bin/python benchmarks/regenerate_docs.py --out /tmp/docs # write them elsewhere (to compare)

The documents are those of benchmarks/docs_registry.py (``DOCS``): each is written by its script's ``doc`` mode
from the raw files only (and the hand-written notes it names under docs/); the doc modes of the documents in
rdc_lib.findings.svg.FIGURES also write their figures (SVG) to docs/figures from the same rows.
tests/test_docs_generated.py regenerates them all into a temporary folder and compares documents and figures
byte for byte with the committed files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT))  # the repository root: the benchmarks package

from benchmarks.docs_registry import GENERATED  # noqa: E402


def figures(doc: str) -> list[str]:
    """The figures (file names under docs/figures) the doc mode of ``doc`` writes beside it."""
    from rdc_lib.findings.svg import FIGURES

    return [f"{name}.svg" for name, _ in FIGURES.get(doc, ())]


def regenerate(doc: str, out: Path, raw_dir: Path = DOCS / "raw", docs_dir: Path = DOCS) -> Path:
    """Write the generated document ``doc`` (a key of GENERATED) to ``out`` from the raw files in ``raw_dir``."""
    if doc not in GENERATED:
        raise ValueError(f"{doc!r} is not a generated document; generated: {', '.join(GENERATED)}")
    entry = GENERATED[doc]
    out.parent.mkdir(parents=True, exist_ok=True)
    entry.run(raw_dir, out, docs_dir / entry.notes if entry.notes else None)
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
