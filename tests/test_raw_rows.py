"""Every raw row under docs/raw is traceable and adds up (issue 37).

- Provenance: every row of every file (a JSON-lines line, a CSV row, a JSON record) carries a provenance
  (rdc_lib.evaluation.provenance.provenance) or an explicit not-recorded marker
  (rdc_lib.evaluation.provenance.not_recorded).
- Headline rows: every count and rate agrees with the row's per-image outcomes (``robust_images``), and a row
  merged from shards carries one provenance its shards share.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from rdc_lib.evaluation.provenance import NOT_RECORDED, mark, not_recorded, provenance_problem
from rdc_lib.evaluation.stats import wilson

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "docs" / "raw"


def _numbers(obj: dict) -> bool:
    """Whether a JSON object holds a measured number directly (not only in nested records)."""
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj.values())


def json_rows(obj: object, where: str) -> list[tuple[str, dict]]:
    """The rows of a JSON value: the object itself when it carries a provenance or holds numbers directly, else
    the rows of its nested objects (a file of named records, e.g. one EOT diagnostic per defense); objects that
    hold no number at all (lists of open items) are no rows."""
    if isinstance(obj, list):
        return [r for i, v in enumerate(obj) for r in json_rows(v, f"{where}[{i}]")]
    if not isinstance(obj, dict):
        return []
    if "provenance" in obj or _numbers(obj):
        return [(where, obj)]
    return [r for k, v in obj.items() for r in json_rows(v, f"{where}.{k}")]


def raw_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for every row of a raw file (.jsonl: each line; .csv: each row, its provenance a JSON cell;
    .json: see json_rows)."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [(f"{path.name}:{i}", json.loads(line)) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if path.suffix == ".csv":
        rows = []
        for i, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
            prov = row.get("provenance")
            rows.append((f"{path.name}:{i}", {**row, "provenance": json.loads(prov) if prov else None}))
        return rows
    if path.suffix == ".json":
        return json_rows(json.loads(text), path.name)
    raise ValueError(f"{path}: a raw file of an unknown kind (expected .jsonl, .json or .csv)")


def provenance_holes(raw: Path) -> list[str]:
    """'file:row: problem' for every raw row without a provenance or an explicit marker."""
    holes = []
    for path in sorted(raw.iterdir()):
        if path.is_file():
            holes += [f"{where}: {problem}" for where, row in raw_rows(path) if (problem := provenance_problem(row))]
    return holes


def test_every_raw_row_carries_provenance_or_an_explicit_marker():
    assert sorted({p.suffix for p in RAW.iterdir()}) == [".csv", ".json", ".jsonl"]
    holes = provenance_holes(RAW)
    assert not holes, (
        "raw rows without provenance (record rdc_lib.evaluation.provenance.provenance(...) or mark them with "
        "rdc_lib.evaluation.provenance.not_recorded(...)):\n" + "\n".join(holes)
    )


def test_the_walk_finds_a_row_without_provenance_in_each_kind_of_file(tmp_path):
    full = {"commit": "a" * 40, "dirty": False, "checkpoints": {}, "versions": {}, "command": "x", "utc": "t"}
    (tmp_path / "a.jsonl").write_text(json.dumps({"n": 1, "provenance": full}) + "\n" + json.dumps({"n": 2}) + "\n")
    buf = io.StringIO()
    csv.writer(buf).writerows(
        [["eps", "robust_acc", "provenance"], [0.1, 0.5, ""], [0.2, 0.4, json.dumps(not_recorded("old row"))]]
    )
    (tmp_path / "b.csv").write_text(buf.getvalue())
    (tmp_path / "c.json").write_text(
        json.dumps({"dc": {"eot": 2, "provenance": full}, "rdc": {"eot": 3}, "open": [{"figure": "to measure"}]})
    )
    (tmp_path / "d.json").write_text(json.dumps({"n": 3, "provenance": {"commit": "a", "dirty": False}}))
    (tmp_path / "e.json").write_text(json.dumps({"n": 3, "provenance": {**not_recorded("x"), "note": ""}}))
    assert provenance_holes(tmp_path) == [
        "a.jsonl:2: no provenance (expected rdc_lib.evaluation.provenance.provenance(...) or an explicit "
        "not_recorded(...) marker)",
        "b.csv:2: no provenance (expected rdc_lib.evaluation.provenance.provenance(...) or an explicit "
        "not_recorded(...) marker)",
        "c.json.rdc: no provenance (expected rdc_lib.evaluation.provenance.provenance(...) or an explicit "
        "not_recorded(...) "
        "marker)",
        "d.json: provenance without checkpoints, versions, command, utc",
        "e.json: a not-recorded marker without a note",
    ]


def test_a_marker_shows_beside_its_figure():
    assert mark({"provenance": not_recorded("old", "abc1234")}) == f" ({NOT_RECORDED})"
    assert mark({}) == f" ({NOT_RECORDED})"
    full = {"commit": "a" * 40, "dirty": True, "checkpoints": {}, "versions": {}, "command": "x", "utc": "t"}
    assert mark({"provenance": full}) == " (dirty)" and mark({"provenance": {**full, "dirty": False}}) == ""


# --------------------------------------------------------------------------- headline rows add up


def _headline() -> list[tuple[int, dict]]:
    return [(i, json.loads(l)) for i, l in enumerate((RAW / "headline.jsonl").read_text().splitlines(), 1) if l.strip()]


def headline_disagreements(row: dict) -> list[str]:
    """What in a headline row disagrees with its per-image outcomes or with itself ([] when nothing)."""
    out = []
    n, rob, worst = row["n"], row["robust"], row["robust_worst"]
    images = row.get("robust_images")
    if images is not None:
        if len(images) != rob["correct"] or any(not row["offset"] <= i < row["offset"] + n for i in images):
            out.append(f"robust_images ({len(images)}) disagree with robust {rob['correct']}/{n}")
    for name, counted in (("clean", row["clean"]), ("robust", rob), ("robust_worst", worst)):
        if counted["total"] != n or counted != wilson(counted["correct"], n).as_dict():
            out.append(f"{name} is not a count over the row's {n} images ({counted['correct']}/{counted['total']})")
    if worst["correct"] > rob["correct"] or row["robust_acc_worst"] > min(row["robust_acc_avg"], row["robust_acc"]):
        out.append(
            f"worst case above the single call or the average ({worst['correct']} > {rob['correct']} or "
            f"robust_acc_worst {row['robust_acc_worst']} above {row['robust_acc_avg']} / {row['robust_acc']})"
        )
    if (
        row["robust_acc"] != rob["value"]
        or row["robust_acc_worst"] != worst["value"]
        or row["clean_acc"] != row["clean"]["value"]
    ):
        out.append("an accuracy differs from its count")
    if row["n_eval"] == 1 and (worst["correct"] != rob["correct"] or row["robust_acc_avg"] != rob["value"]):
        out.append("with one re-classification the worst case and the average must equal the single call")
    stats = row.get("attack_stats")
    incomplete = "attack_stats" in row.get("not_recorded", {})
    if (
        stats is not None
        and not incomplete
        and row["verify"] == 1
        and sum(s["n"] for s in stats) != row["clean"]["correct"]
    ):
        out.append(
            f"attack_stats cover {sum(s['n'] for s in stats)} attacked images, the row "
            f"{row['clean']['correct']} clean ones"
        )
    if stats is None and not incomplete:
        out.append("attack_stats missing without a not_recorded note")
    shards = row.get("shards", [])
    if shards:
        if sum(s["n"] for s in shards) != n or shards[0]["offset"] != row["offset"]:
            out.append("the shards do not cover the row's images")
        commits = {(s["provenance"]["commit"], s["provenance"]["dirty"]) for s in shards}
        if commits != {(row["provenance"]["commit"], row["provenance"]["dirty"])}:
            out.append(f"shards of other code than the row's provenance: {sorted(commits)}")
    return out


def test_every_headline_row_adds_up():
    bad = {i: problems for i, r in _headline() if (problems := headline_disagreements(r))}
    assert not bad, bad


def test_the_check_catches_the_rows_the_old_merge_wrote():
    """The old merge kept the first shard's worst case, attack stats and provenance: line 11 read robust 168/200
    with a worst case of 47/50 (0.94)."""
    row = dict(_headline())[11]
    first = row["shards"][0]
    old = {
        **{k: v for k, v in row.items() if k != "not_recorded"},
        "robust_worst": wilson(47, 50).as_dict(),
        "robust_acc_worst": 0.94,
        "robust_acc_avg": 0.94,
        "attack_stats": first["attack_stats"],
        "provenance": first["provenance"],
    }
    problems = headline_disagreements(old)
    assert any("robust_worst is not a count" in p for p in problems)
    assert any("worst case above the single call" in p for p in problems)
    assert any("attack_stats cover" in p for p in problems)


@pytest.mark.parametrize("line", [4, 11, 14, 16, 17])
def test_the_repaired_rows_say_what_was_not_kept(line):
    row = dict(_headline())[line]
    assert len(row["shards"]) > 1 and row["repaired"]
    assert row["max_linf"] is None and row["max_l2"] is None and row["attack_stats"] is None
    assert set(row["not_recorded"]) == {"max_linf", "max_l2", "attack_stats"}
    assert "attack_stats" in row["shards"][0] and "max_linf" in row["shards"][0]
