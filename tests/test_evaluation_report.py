"""benchmarks/drivers/evaluation_report.py: one document evaluates one named denoiser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _rows() -> list[dict]:
    return [json.loads(l) for l in (ROOT / "docs/raw/evaluation.jsonl").read_text().splitlines() if l.strip()]


def _doc(tmp_path: Path, rows: list[dict]) -> str:
    (tmp_path / "evaluation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    er = load_benchmark("evaluation_report")
    er.doc(
        type("A", (), {"records": str(tmp_path), "out": str(tmp_path / "evaluation.md"), "notes": "", "n_eval": 10})()
    )
    return (tmp_path / "evaluation.md").read_text()


def test_the_document_names_the_denoiser_of_its_rows(tmp_path):
    er = load_benchmark("evaluation_report")
    rows = _rows()
    named = {er.row_denoiser(r) for r in rows} - {""}
    assert len(named) == 1
    assert f"denoiser `{named.pop()}`" in _doc(tmp_path, rows)


def test_rows_stored_without_a_name_count_as_the_legacy_multi_head():
    er = load_benchmark("evaluation_report")
    assert er.row_denoiser({"defense": "rdc", "denoiser": ""}) == "digits_multi"
    assert er.row_denoiser({"defense": "cnn", "denoiser": ""}) == ""
    assert er.row_denoiser({"defense": "dc", "denoiser": "digits_film_multi_distill9"}) == "digits_film_multi_distill9"


def test_rows_of_two_denoisers_are_refused(tmp_path):
    er = load_benchmark("evaluation_report")
    rows = [r for r in _rows() if r["defense"] in ("dc", "rdc")][:2]
    other = "digits_film_multi" if er.row_denoiser(rows[0]) != "digits_film_multi" else "digits_multi"
    rows[1] = {**rows[1], "denoiser": other}
    _doc(tmp_path, rows[:1])  # one denoiser: fine
    with pytest.raises(ValueError, match="mixes rows of denoisers"):
        _doc(tmp_path, rows)


def _store(folder: Path, rows: list[dict], diag: dict | None = None) -> Path:
    folder.mkdir()
    (folder / "evaluation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if diag is not None:
        (folder / "eot_diagnostic.json").write_text(json.dumps(diag))
    return folder


def test_merge_joins_split_runs_in_the_documents_order(tmp_path):
    er = load_benchmark("evaluation_report")
    rows = _rows()
    diag = json.loads((ROOT / "docs/raw/eot_diagnostic.json").read_text())
    a = _store(tmp_path / "a", rows[1::2][::-1], {k: v for k, v in diag.items() if k == "rdc"})
    b = _store(tmp_path / "b", rows[0::2] + rows[:2], {k: v for k, v in diag.items() if k != "rdc"})
    merged, joined = er.merge([a, b], tmp_path / "out")
    assert [r["key"] for r in merged] == [r["key"] for r in rows]  # the committed file is in the document's order
    assert joined == diag
    assert (tmp_path / "out" / "evaluation.jsonl").read_text() == (ROOT / "docs/raw/evaluation.jsonl").read_text()


def test_merge_refuses_folders_that_disagree(tmp_path):
    er = load_benchmark("evaluation_report")
    rows = _rows()
    changed = dict(rows[0], robust=dict(rows[0]["robust"], correct=rows[0]["robust"]["correct"] - 1))
    with pytest.raises(ValueError, match="two folders with different results"):
        er.merge([_store(tmp_path / "a", rows[:1]), _store(tmp_path / "b", [changed])], tmp_path / "out")
    worst = dict(rows[0], robust_acc_worst=rows[0]["robust_acc_worst"] + 0.01)  # the robust count alone agrees
    with pytest.raises(ValueError, match="different results \\(robust_acc_worst: "):
        er.merge([_store(tmp_path / "e", rows[:1]), _store(tmp_path / "f", [worst])], tmp_path / "out")
    diag = json.loads((ROOT / "docs/raw/eot_diagnostic.json").read_text())
    other = {d: dict(v, eot=v["eot"] + 1) for d, v in diag.items()}
    with pytest.raises(ValueError, match="EOT diagnostics of"):
        er.merge([_store(tmp_path / "c", rows[:1], diag), _store(tmp_path / "d", rows[1:2], other)], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no stored rows"):
        er.merge([tmp_path / "missing"], tmp_path / "out")
