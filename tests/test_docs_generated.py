"""Every generated document matches its raw data byte for byte; no file points outside the repository.

The generated docs (every entry of ``benchmarks/docs_registry.py``: results.md, evaluation.md, theory.md, ...)
are regenerated from docs/raw by ``benchmarks/regenerate_docs.py`` into a temporary folder and compared with the
committed files. The tracked files are scanned for references a user of the repository cannot follow (an
external spec file, a sibling ``shared`` folder, absolute paths of the machine that wrote them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


REGEN = load_benchmark("regenerate_docs")
from benchmarks.docs_registry import DOCS  # noqa: E402 (importable once regenerate_docs put the repository on the path)

GENERATED = [d.doc for d in DOCS]


# --------------------------------------------------------------------------- generated docs


@pytest.mark.parametrize("doc", sorted(GENERATED))
def test_generated_doc_matches_raw_byte_for_byte(doc, tmp_path):
    out = REGEN.regenerate(doc, tmp_path / doc)
    committed = (ROOT / "docs" / doc).read_bytes()
    assert out.read_bytes() == committed, (
        f"docs/{doc} differs from what its raw data generates: run "
        f"`python benchmarks/regenerate_docs.py` (never edit a generated doc by hand)"
    )


FIGURED = [(doc, name) for doc in sorted(GENERATED) for name in REGEN.figures(doc)]


@pytest.mark.parametrize("doc, figure", FIGURED, ids=[f for _, f in FIGURED])
def test_generated_figure_matches_raw_byte_for_byte(doc, figure, tmp_path):
    """Each figure (SVG, byte-stable: no date, fixed hash salt, text as paths) is what its doc mode draws now.
    Bytes are compared only under the matplotlib version that wrote the committed file (its SVG names it;
    pyproject pins the minor version): another version draws the same data with other bytes."""
    import matplotlib

    wrote = re.search(r"Matplotlib v([\w.]+)", (ROOT / "docs" / "figures" / figure).read_text())
    if not wrote or wrote.group(1) != matplotlib.__version__:
        pytest.skip(
            f"docs/figures/{figure} was written by matplotlib {wrote and wrote.group(1)}, this is "
            f"{matplotlib.__version__}: bytes differ between versions (regenerate the docs to compare)"
        )
    REGEN.regenerate(doc, tmp_path / doc)
    drawn = tmp_path / "figures" / figure
    assert drawn.is_file(), f"the doc mode of docs/{doc} did not write figures/{figure}"
    assert drawn.read_bytes() == (ROOT / "docs" / "figures" / figure).read_bytes(), (
        f"docs/figures/{figure} differs from what docs/raw draws: run `python benchmarks/regenerate_docs.py`"
    )


def test_enough_figures_and_every_committed_one_is_generated():
    committed = sorted(p.name for p in (ROOT / "docs" / "figures").glob("*"))
    generated = sorted(f for _, f in FIGURED)
    assert len(generated) >= 6 and committed == generated, (committed, generated)


def test_a_changed_raw_value_changes_the_figure(tmp_path):
    """The figure comparison can fail: one count changed in a raw row changes the drawn SVG."""
    raw = tmp_path / "raw"
    shutil.copytree(ROOT / "docs" / "raw", raw)
    rows = [json.loads(l) for l in (raw / "grid_levels.jsonl").read_text().splitlines() if l.strip()]
    rows[0]["robust"]["value"] -= 0.05
    (raw / "grid_levels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    REGEN.regenerate("grid_levels.md", tmp_path / "out" / "grid_levels.md", raw_dir=raw)
    assert (tmp_path / "out" / "figures" / "robust_vs_grid_start.svg").read_bytes() != (
        ROOT / "docs" / "figures" / "robust_vs_grid_start.svg"
    ).read_bytes()


def test_a_changed_raw_value_is_caught(tmp_path):
    """The comparison can fail: one number changed in a raw file changes the generated document."""
    raw = tmp_path / "raw"
    shutil.copytree(ROOT / "docs" / "raw", raw)
    data = json.loads((raw / "performance.json").read_text())
    data["gpu_runs"][0]["result"]["dc"]["images_per_s"] += 1.0
    (raw / "performance.json").write_text(json.dumps(data))
    out = REGEN.regenerate("performance.md", tmp_path / "performance.md", raw_dir=raw)
    assert out.read_bytes() != (ROOT / "docs" / "performance.md").read_bytes()
    assert "3.64 images/s" in out.read_text()


def test_regeneration_is_deterministic(tmp_path):
    """No clock or machine state in the output: two regenerations are identical."""
    for doc in GENERATED:
        a = REGEN.regenerate(doc, tmp_path / "a" / doc).read_bytes()
        b = REGEN.regenerate(doc, tmp_path / "b" / doc).read_bytes()
        assert a == b, doc
        for name in REGEN.figures(doc):
            assert (tmp_path / "a" / "figures" / name).read_bytes() == (tmp_path / "b" / "figures" / name).read_bytes()


def test_every_generated_doc_is_listed():
    """A doc that says it is written from stored/raw results must be regenerated (and compared) here."""
    claims = re.compile(r"(Written|Generated) by `benchmarks/")
    notes = {d.notes for d in DOCS}  # the hand-written text a generator fills in (a template may say so)
    for path in sorted((ROOT / "docs").glob("*.md")):
        if path.name not in notes and claims.search(path.read_text()[:2000]):
            assert path.name in GENERATED, f"docs/{path.name} is generated but not in benchmarks/docs_registry.py"


def test_registry_entries_exist_once():
    """Every registered doc names a raw file, notes and a script that exist, and no doc is registered twice."""
    assert len(GENERATED) == len(set(GENERATED))
    for d in DOCS:
        for name in d.raw:
            assert (ROOT / "docs" / "raw" / name).is_file(), f"docs/{d.doc} needs docs/raw/{name}"
        if d.notes:
            assert (ROOT / "docs" / d.notes).is_file(), f"docs/{d.doc} needs docs/{d.notes}"
        assert (ROOT / d.script).is_file(), f"docs/{d.doc}: its script {d.script} does not exist"
        assert d.script in (ROOT / "docs" / d.doc).read_text()[:2000], f"docs/{d.doc} does not name {d.script}"


def test_regenerate_docs_has_no_per_document_branch():
    """regenerate_docs.py knows no document by name: each is rendered by its registry entry's run."""
    source = (ROOT / "benchmarks" / "regenerate_docs.py").read_text()
    assert not [d.doc for d in DOCS if d.doc in source]


def test_unknown_doc_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a generated document; generated: results.md"):
        REGEN.regenerate("README.md", tmp_path / "x.md")


def test_old_rows_are_marked_provenance_not_recorded():
    """Rows measured before provenance existed are named as such in the generated doc, never hidden."""
    from rdc_lib.evaluation.provenance import NOT_RECORDED, describe, mark

    rows = [json.loads(l) for l in (ROOT / "docs" / "raw" / "results.jsonl").read_text().splitlines() if l.strip()]
    marked = sum(1 for r in rows if mark(r) == f" ({NOT_RECORDED})")  # beside the row's robust figure
    text = (ROOT / "docs" / "results.md").read_text()
    assert text.count(NOT_RECORDED) == marked
    assert all(f"| {r['defense']} | {r['norm']} | {describe(r)} |" in text for r in rows)


# --------------------------------------------------------------------------- references outside the repository

# built by concatenation so that this file does not match its own patterns
OUTSIDE = [
    re.compile(re.escape("rdc" + "-spec")),
    re.compile(re.escape(".." + "/shared")),
    re.compile(re.escape("shared" + "/paper")),
    re.compile(r"(?<![\w.])/" + r"(?:work|home|Users|root|mnt|scratch)/[\w.-]"),
]
TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".ipynb",
    ".yaml",
    ".yml",
    ".toml",
    ".txt",
    ".cfg",
    ".ini",
    ".json",
    ".jsonl",
    ".csv",
    ".sh",
    ".html",
    ".js",
    ".ts",
    ".css",
    ".rst",
    "",
}


def tracked_files(root: Path = ROOT) -> list[Path]:
    """The repository's tracked files (git ls-files)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return [root / p for p in out.decode().split("\0") if p]


def outside_references(paths: list[Path], root: Path = ROOT) -> list[str]:
    """'file:line: text' for every line of a text file that points outside the repository."""
    hits = []
    for path in paths:
        if path.suffix not in TEXT_SUFFIXES and path.name not in ("Makefile",):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                rel = path.relative_to(root) if path.is_relative_to(root) else path
                hits.append(f"{rel}:{i}: {line.strip()[:160]}")
    return hits


def test_no_reference_to_files_outside_the_repository():
    hits = outside_references(tracked_files())
    assert not hits, (
        "references to files a user of the repository does not have (cite docs/paper.md "
        "section N, use paths relative to the repository):\n" + "\n".join(hits)
    )


@pytest.mark.parametrize(
    "line",
    [
        "see " + "rdc" + "-spec.md section 3",
        "the paper in .." + "/sha" + "red/x",
        "read " + "shared" + "/paper/notes.md",
        "python " + "/work" + "/main/benchmarks/x.py",
        '"ckpt": "' + "/home" + '/alice/data/x.safetensors"',
    ],
)
def test_outside_reference_is_caught_with_file_and_line(tmp_path, line):
    f = tmp_path / "note.md"
    f.write_text("fine line\n" + line + "\n")
    hits = outside_references([f], root=tmp_path)
    assert hits == [f"note.md:2: {line}"]


def test_repository_paths_are_not_flagged(tmp_path):
    f = tmp_path / "ok.py"
    f.write_text(
        "docs/paper.md section 3\nrdc_lib/core/paths.py\nhttps://github.com/x/y\n--out /tmp/t.md\n"
        "shared noise across classes\n"
    )
    assert outside_references([f], root=tmp_path) == []
