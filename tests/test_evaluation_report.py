"""benchmarks/evaluation_report.py: one document evaluates one named denoiser."""

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
    er.doc(type("A", (), {"records": str(tmp_path), "out": str(tmp_path / "evaluation.md"), "notes": "",
                          "n_eval": 10})())
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
