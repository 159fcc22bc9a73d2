"""benchmarks/common.py: raw rows with provenance, markdown tables, accuracy intervals, notes templates."""

from __future__ import annotations

import json

import pytest

from benchmarks.common import (
    Notes,
    accuracy,
    append_row,
    bracketed,
    counted,
    interval,
    measured_on,
    pct,
    read_rows,
    stamped,
    table,
    write_rows,
)
from rdc_lib.evaluation.provenance import PROVENANCE_KEYS
from rdc_lib.evaluation.stats import wilson


def test_rows_round_trip_and_missing_file(tmp_path):
    raw = tmp_path / "sub" / "rows.jsonl"
    assert read_rows(raw) == []
    with pytest.raises(FileNotFoundError, match="rows.jsonl does not exist"):
        read_rows(raw, missing_ok=False)
    write_rows(raw, [{"b": 1, "a": 2}, {"c": 3}], sort_keys=True)
    assert raw.read_text() == '{"a": 2, "b": 1}\n{"c": 3}\n' and not raw.with_name("rows.jsonl.tmp").exists()
    raw.write_text(raw.read_text() + "\n\n")  # blank lines are skipped
    assert read_rows(raw) == [{"a": 2, "b": 1}, {"c": 3}]


def test_append_row_stamps_provenance_and_keeps_a_given_one(tmp_path):
    raw = tmp_path / "rows.jsonl"
    row = append_row(raw, {"x": 1})
    assert set(PROVENANCE_KEYS) <= set(row["provenance"]) and row["command"] == row["provenance"]["command"]
    given = {"x": 2, "command": "rdc eval --n 4", "provenance": {"commit": "abc"}}
    assert append_row(raw, given) == given
    assert [json.loads(l)["x"] for l in raw.read_text().splitlines()] == [1, 2]
    assert stamped({"command": "mine"}, {"command": "other"}) == {"command": "mine", "provenance": {"command": "other"}}


def test_table_and_intervals():
    assert table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]
    acc = wilson(4, 32)
    as_dict = acc.as_dict()
    lo, hi = f"{100 * acc.low:.0f}", f"{100 * acc.high:.0f}"
    assert pct(0.125) == "12.5%" and pct(0.125, 0) == "12%"
    assert interval(acc) == interval(as_dict) == f"{lo}-{hi}"
    assert accuracy(as_dict) == f"12.5% (4/32, {lo}-{hi})"
    assert bracketed(as_dict) == f"12% [{lo}, {hi}]"
    assert counted(as_dict, "†") == f"4/32 = 12%† [{lo}, {hi}]"
    with pytest.raises(ValueError, match="expected an accuracy"):
        accuracy({"value": 0.5})


def test_notes_blocks_join_paragraphs_keep_tables_and_code(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text(
        "<!--\na comment for the reader\n-->\n\n<!-- intro -->\n# Title\n\nA wrapped\nparagraph of {n:.1f}.\n\n"
        "```\nsource x\n{cmd}\n```\n\n<!-- table -->\n| a | b |\n|---|---|\n| one | a wrapped\n  cell |\n"
    )
    notes = Notes(path)
    assert notes("intro", n=2, cmd="run it") == "# Title\n\nA wrapped paragraph of 2.0.\n\n```\nsource x\nrun it\n```"
    assert notes("table") == "| a | b |\n|---|---|\n| one | a wrapped cell |"
    with pytest.raises(KeyError, match="has no block <!-- nope --> \\(it has: intro, table\\)"):
        notes("nope")
    with pytest.raises(FileNotFoundError, match="notes template"):
        Notes(tmp_path / "missing.md")


def test_measured_on_says_which_denoisers_are_shipped_defaults():
    from rdc_lib.core.choices import DEFAULT_DENOISERS

    line = measured_on(["digits_multi", DEFAULT_DENOISERS["single"], "digits_multi", "my_model"])
    assert line.startswith("Measured on `digits_multi` (the retired multi-head model, not a shipped default), ")
    assert f"`{DEFAULT_DENOISERS['single']}` (the shipped single-head default)" in line
    assert "`my_model` (not a shipped default)" in line and line.count("digits_multi`") == 1
    assert line.endswith(f"`{DEFAULT_DENOISERS['multi']}`.")
