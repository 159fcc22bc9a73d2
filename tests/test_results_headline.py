"""The headline rows of docs/results.md: only long, checked AutoAttack-style runs (or contiguous shards of one,
the first carrying the sanity checks) are accepted."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from rdc_lib.evaluation import EvalConfig

from .conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


TABLE = load_benchmark("results_table")


def _result(n: int = 200, offset: int = 0, correct: int | None = None, **over) -> dict:
    correct = n * 3 // 5 if correct is None else correct
    cfg = EvalConfig(
        defense="dc",
        attack="autoattack",
        n_images=n,
        offset=offset,
        steps=50,
        heads="single",
        noise_mode="fixed",
        timesteps=16,
        n_target_classes=3,
        square_queries=500,
        denoiser="digits_film_single",
        run_checks=over.pop("run_checks", True),
    )
    row = {
        **cfg.flat(),
        "clean": {"correct": n, "total": n, "value": 1.0, "low": 0.9, "high": 1.0},
        "robust": {"correct": correct, "total": n, "value": correct / n, "low": 0.0, "high": 1.0},
        "robust_acc": correct / n,
        "trusted": True,
        "seconds": 10.0,
        "checks": {"gradients": {"passed": True}} if cfg.run_checks else {},
        "provenance": {
            "commit": "abc",
            "dirty": False,
            "versions": {"torch": "2.13.0+cpu"},
            "checkpoints": {},
            "command": f"python -m rdc_lib.cli eval --defense dc --offset {offset} --json",
        },
    }
    row.update(over)
    return row


def _write(tmp_path: Path, row: dict, name: str = "run.out") -> Path:
    path = tmp_path / name
    path.write_text("progress line\n" + json.dumps(row) + "\n")
    return path


def _row(tmp_path: Path, *results: dict, records: list[Path] = ()) -> dict:
    return TABLE.headline_row(
        [TABLE.read_result(_write(tmp_path, r, f"{i}.out")) for i, r in enumerate(results)], list(records)
    )


def test_a_long_checked_run_is_accepted_with_its_key_and_command(tmp_path):
    row = _row(tmp_path, _result())
    assert row["key"] == EvalConfig(**{k: row[k] for k in EvalConfig.flat_defaults() if k in row}).key()
    assert row["command"] == "rdc eval --defense dc --offset 0 --json"


def test_contiguous_shards_combine_counts_intervals_and_seconds(tmp_path):
    a, b = _result(100, 0, 50), _result(100, 100, 70, run_checks=False)
    records = [_records(tmp_path, a, set(range(50)), "a.jsonl"), _records(tmp_path, b, set(range(100, 170)), "b.jsonl")]
    row = _row(tmp_path, b, a, records=records)
    assert (row["n"], row["offset"], row["robust"]["correct"], row["robust"]["total"]) == (200, 0, 120, 200)
    assert row["robust_worst"]["correct"] == 120 and row["robust_acc_avg"] == row["robust_acc_worst"] == 0.6
    assert row["robust"]["low"] < 0.6 < row["robust"]["high"] and row["seconds"] == 20.0
    assert row["checks"] == {"gradients": {"passed": True}} and [s["offset"] for s in row["shards"]] == [0, 100]
    with pytest.raises(SystemExit, match="needs their per-image records"):
        _row(tmp_path, b, a)


@pytest.mark.parametrize(
    "results, words",
    [
        ([dict(n=64)], "64 images"),
        ([dict(steps=25)], "25 APGD iterations"),
        ([dict(attack="apgd-ce")], "attack 'apgd-ce'"),
        ([dict(checks={})], "no sanity checks"),
        ([dict(n=100), dict(n=100, offset=120, run_checks=False)], "not contiguous"),
        ([dict(n=100), dict(n=100, offset=100, run_checks=False, eps=0.2)], "differ in eps"),
        ([dict(n=100, run_checks=False), dict(n=100, offset=100)], "no sanity checks on the first shard"),
    ],
)
def test_short_unchecked_or_gapped_runs_are_refused_naming_why(tmp_path, results, words):
    with pytest.raises(SystemExit, match=words):
        _row(tmp_path, *[_result(**r) for r in results])


def test_a_file_without_the_json_result_is_refused(tmp_path):
    path = tmp_path / "run.out"
    path.write_text("eval dc/autoattack: 10/200 img\n")
    with pytest.raises(SystemExit, match="not the JSON result"):
        TABLE.read_result(path)
    with pytest.raises(SystemExit, match="no output"):
        TABLE.read_result(tmp_path / "missing.out")


def test_import_then_doc_puts_the_headline_first(tmp_path):
    a, b = _result(100, 0, 50), _result(100, 100, 70, run_checks=False)
    files = [str(_write(tmp_path, a, "a.out")), str(_write(tmp_path, b, "b.out"))]
    records = [
        str(_records(tmp_path, a, set(range(50)), "a.jsonl")),
        str(_records(tmp_path, b, set(range(100, 170)), "b.jsonl")),
    ]
    TABLE.import_rows(Namespace(files=files, records=str(tmp_path), per_image=records))
    (tmp_path / "results.jsonl").write_text((ROOT / "docs" / "raw" / "results.jsonl").read_text())
    TABLE.doc(Namespace(records=str(tmp_path), out=str(tmp_path / "results.md"), notes=""))
    text = (tmp_path / "results.md").read_text()
    assert text.index("## Headline") < text.index("## Five defenses")
    assert "**60.0%** (120/200" in text and "images 100-199" in text


def test_outside_attack_rows_are_listed_under_the_headline(tmp_path):
    TABLE.import_rows(Namespace(files=[str(_write(tmp_path, _result()))], records=str(tmp_path), per_image=[]))
    row = {
        "config": _result(),
        "first": 32,
        "survivors": 21,
        "still_robust": 20,
        "attacks": ["apgd-ce", "square"],
        "broken_by": {"apgd-ce": 1, "square": 0},
        "steps": 100,
        "square_queries": 1000,
        "seconds": 5.0,
        "provenance": {
            "commit": "abc",
            "dirty": False,
            "command": "python benchmarks/drivers/crosscheck_torchattacks.py run R",
        },
    }
    (tmp_path / "crosscheck_torchattacks.jsonl").write_text(json.dumps(row) + "\n")
    text = "\n".join(TABLE.headline_lines(tmp_path / "headline.jsonl"))
    assert (
        "| 21 (of 32) |" in text and "apgd-ce 1, square 0 | 20 |" in text and "crosscheck_torchattacks.py run R" in text
    )


def _records(tmp_path: Path, result: dict, robust: set[int], name: str) -> Path:
    """A records file of the run behind ``result``: its header and one record per image (every image clean)."""
    head = {"config": EvalConfig.from_stored(result).identity(), "code": "test"}
    recs = [
        {
            "index": i,
            "label": 0,
            "clean_pred": 0,
            "robust_first": i in robust,
            "robust_all": i in robust,
            "robust_frac": float(i in robust),
            "linf": 0.1,
            "l2": 0.5,
        }
        for i in range(result["offset"], result["offset"] + result["n"])
    ]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in [head, *recs]))
    return path


def test_per_image_records_give_paired_counts_and_a_mcnemar_p(tmp_path):
    dc = _result(200, 0, 100)
    rdc = {**_result(200, 0, 140), "defense": "rdc"}
    files = [str(_write(tmp_path, r, f"{r['defense']}.out")) for r in (dc, rdc)]
    records = [
        _records(tmp_path, dc, set(range(100)), "dc.jsonl"),
        _records(tmp_path, rdc, set(range(40, 180)), "rdc.jsonl"),
    ]
    TABLE.import_rows(Namespace(files=files, records=str(tmp_path), per_image=[str(p) for p in records]))
    rows = [json.loads(l) for l in (tmp_path / "headline.jsonl").read_text().splitlines()]
    assert [len(r["robust_images"]) for r in rows] == [100, 140]
    text = "\n".join(TABLE.headline_lines(tmp_path / "headline.jsonl"))
    # both keep 40-99 (60), dc alone 0-39 (40), rdc alone 100-179 (80), neither 180-199 (20)
    assert "| dc (digits_film_single) | rdc (eta 8/255) (digits_film_single) | 200 | 60 | 40 | 80 | 20 |" in text


def test_records_that_disagree_with_the_result_or_are_missing_are_refused(tmp_path):
    dc = _result(200, 0, 100)
    files = [str(_write(tmp_path, dc, "dc.out"))]
    wrong = _records(tmp_path, dc, set(range(90)), "dc.jsonl")  # 90 robust in the records, 100 in the result
    with pytest.raises(SystemExit, match="count 90 robust images, the result 100"):
        TABLE.import_rows(Namespace(files=files, records=str(tmp_path), per_image=[str(wrong)]))
    other = _records(tmp_path, {**dc, "eps": 0.2}, set(range(100)), "other.jsonl")  # another configuration
    with pytest.raises(SystemExit, match="no records file"):
        TABLE.import_rows(Namespace(files=files, records=str(tmp_path), per_image=[str(other)]))


def test_read_outcomes_reads_any_code_versions_records_and_names_a_bad_file(tmp_path):
    from rdc_lib.evaluation.records import read_outcomes

    dc = _result(40, 0, 10)
    config, robust = read_outcomes(_records(tmp_path, dc, set(range(10)), "dc.jsonl"))
    assert config["n"] == 40 and sum(robust.values()) == 10 and sorted(robust) == list(range(40))
    (tmp_path / "bad.jsonl").write_text('{"index": 0}\n')
    with pytest.raises(ValueError, match="bad.jsonl: not an `rdc eval` records file"):
        read_outcomes(tmp_path / "bad.jsonl")
    (tmp_path / "cut.jsonl").write_text(json.dumps({"config": {}}) + '\n{"index": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not a per-image record"):
        read_outcomes(tmp_path / "cut.jsonl")


def test_crosscheck_takes_the_survivors_among_the_first_images(tmp_path):
    cross = load_benchmark("crosscheck_torchattacks")
    dc = _result(40, 0, 10)
    path = _records(tmp_path, dc, {1, 5, 30}, "dc.jsonl")
    cfg, idx = cross.survivors(path, 8)
    assert cfg.defense == "dc" and idx == [1, 5]
    with pytest.raises(SystemExit, match="only 40 records, asked for the first 64"):
        cross.survivors(path, 64)


def test_rdc_rows_are_named_with_their_lm_radius():
    rt = load_benchmark("results_table")
    assert rt.defense_label({"defense": "rdc"}) == "rdc (eta 8/255)"  # stored before the radius was recorded
    assert rt.defense_label({"defense": "rdc", "lm_eta": 0.1}) == "rdc (eta 0.1)"
    assert rt.defense_label({"defense": "dc", "lm_eta": 0.1}) == "dc"
    assert rt.defense_label({"defense": "dc", "grid_sigma_min": 0.45}) == "dc (levels from sigma 0.45)"
    assert (
        rt.defense_label({"defense": "rdc", "lm_eta": 0.1, "grid_sigma_min": 0.45})
        == "rdc (eta 0.1, levels from sigma 0.45)"
    )
    assert rt.defense_label({"defense": "dc", "grid_sigma_min": 1e-4}) == "dc"
    assert (
        rt.defense_label({"defense": "dc", "grid_sigma_min": 0.6, "timesteps": 32})
        == "dc (levels from sigma 0.6, T 32)"
    )
    assert rt.defense_label({"defense": "dc", "timesteps": 16}) == "dc"
    assert rt.defense_label({"defense": "cnn", "timesteps": 32}) == "cnn"  # CNNs have no levels


def test_each_headline_row_names_the_images_its_choices_were_made_on():
    from rdc_lib.core.choices import CHOSEN_ON, DEFAULT_DENOISERS, ROBUST_GRID_SIGMA_MIN

    multi = DEFAULT_DENOISERS["multi"]
    assert TABLE.chosen_on({"defense": "cnn", "denoiser": ""}) == "none"
    assert TABLE.chosen_on({"defense": "dc", "denoiser": "digits_film_multi_distill9"}) == "none"
    assert TABLE.chosen_on({"defense": "dc", "denoiser": multi}) == CHOSEN_ON[("denoiser", multi)] == "test 0-199"
    assert (
        TABLE.chosen_on({"defense": "rdc", "denoiser": multi, "grid_sigma_min": ROBUST_GRID_SIGMA_MIN})
        == "test 0-199 + test 200-359"
    )
    text = (ROOT / "docs" / "results.md").read_text()
    assert "| images | chosen on | clean |" in text
    # the shipped defaults' rows are in results.md, the study's other candidates in denoisers.md (issue 39)
    text += (ROOT / "docs" / "denoisers.md").read_text()
    rows = [json.loads(l) for l in (ROOT / "docs" / "raw" / "headline.jsonl").read_text().splitlines() if l.strip()]
    assert all(f"(from {r['offset']}) | {TABLE.chosen_on(r)} |" in text for r in rows)
