"""rdc_lib.evaluation.shards: two real shards of one evaluation merge into exactly the single run's result, every
count and rate recomputed from the per-image records; shards that are not one run are refused naming why."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rdc_lib.evaluation import EvalConfig, evaluate
from rdc_lib.evaluation.provenance import eval_provenance
from rdc_lib.evaluation.shards import ShardError, merge_provenance, merge_shards

# A cheap real evaluation: the CNN under PGD with a random start, re-classified 2 times, sanity checks on the
# first shard (32 images, the checks' minimum); chunks of 16 so that each shard is whole chunks of the single run.
CFG = EvalConfig(
    defense="cnn", attack="pgd", norm="linf", eps=0.1, n_images=64, steps=5, chunk=16, n_eval=2, run_checks=True
)
SHARDS = (CFG.replace(n_images=32), CFG.replace(n_images=32, offset=32, run_checks=False))


def _result(cfg: EvalConfig, records: Path) -> dict:
    res = evaluate(cfg, records_dir=records, progress=False)
    res["provenance"] = eval_provenance(cfg, argv=["rdc", "eval", f"--offset={cfg.offset}"])
    res["command"] = res["provenance"]["command"]
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, list[dict], list[Path]]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("shards")
    single = _result(CFG, tmp / "single")
    shards = [_result(c, tmp / "shards") for c in SHARDS]
    return single, shards, sorted((tmp / "shards").glob("*.jsonl"))


def test_two_shards_merge_into_the_single_runs_result_field_by_field(runs):
    single, shards, records = runs
    merged = merge_shards(shards[::-1], records)  # any order
    assert single["robust"]["correct"] < single["clean"]["correct"], "the attack must break some images"
    assert 0 < len(single["attack_stats"]) and single["checks"]
    # the first shard alone is not the answer (a merge that copied it, as the old one did, fails below)
    assert all(shards[0][k] != single[k] for k in ("robust", "robust_worst", "clean", "attack_stats"))
    only_merged = {"shards"}
    assert set(merged) - only_merged == set(single)
    differs = {"seconds", "provenance", "command"}  # wall time, and the commands that made each
    for key in sorted(set(single) - differs):
        assert merged[key] == single[key], key
    assert merged["seconds"] == pytest.approx(sum(s["seconds"] for s in shards))
    prov, one = merged["provenance"], single["provenance"]
    assert {k: prov[k] for k in ("commit", "dirty", "checkpoints", "versions")} == {
        k: one[k] for k in ("commit", "dirty", "checkpoints", "versions")
    }
    assert prov["command"] == merged["command"] == "rdc eval --offset=0 && rdc eval --offset=32"
    assert [(s["offset"], s["n"], s["run_checks"]) for s in merged["shards"]] == [(0, 32, True), (32, 32, False)]


def test_the_merge_recomputes_rather_than_copies(runs):
    """A shard whose own summary was tampered with is refused: the records, not the summary, are the truth."""
    _, shards, records = runs
    bad = {
        **shards[1],
        "robust_worst": {**shards[1]["robust_worst"], "correct": shards[1]["robust_worst"]["correct"] + 1},
    }
    with pytest.raises(ShardError, match="robust_worst images, the result"):
        merge_shards([shards[0], bad], records)
    stale = {**shards[1], "robust_acc_worst": 0.0, "max_l2": 99.0}  # fields the merge never reads from a shard
    assert merge_shards([shards[0], stale], records) == merge_shards(shards, records)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda s: {**s, "provenance": {**s["provenance"], "commit": "0" * 40}}, "different code: .* has commit"),
        (lambda s: {**s, "provenance": {**s["provenance"], "dirty": not s["provenance"]["dirty"]}}, "has dirty"),
        (lambda s: {**s, "provenance": {**s["provenance"], "versions": {"torch": "0"}}}, "has versions"),
        (lambda s: {**s, "eps": 0.2}, r"different configurations: images 0-31 and images 32-63 differ in eps"),
        (lambda s: {**s, "denoiser": "digits_multi"}, "differ in denoiser"),
        (
            lambda s: {
                **s,
                "provenance": {**s["provenance"], "checkpoints": {k: "f" * 64 for k in s["provenance"]["checkpoints"]}},
            },
            "different checkpoints: data/checkpoints/",
        ),
        (lambda s: {**s, "offset": 40}, "not contiguous: images 0-31 then images 40-71"),
        (lambda s: {k: v for k, v in s.items() if k != "provenance"}, "carries no provenance"),
    ],
)
def test_shards_that_are_not_one_run_are_refused_naming_the_difference(runs, change, words):
    _, shards, records = runs
    with pytest.raises(ShardError, match=words):
        merge_shards([shards[0], change(shards[1])], records)


def _records_of(records: list[Path], offset: int) -> Path:
    return next(p for p in records if f'"offset": {offset},' in p.read_text().splitlines()[0])


def test_shards_need_their_records(runs, tmp_path):
    _, shards, records = runs
    first, second = _records_of(records, 0), _records_of(records, 32)
    with pytest.raises(ShardError, match="needs their per-image records"):
        merge_shards(shards, [])
    with pytest.raises(ShardError, match="no records file for images 32-63"):
        merge_shards(shards, [first])
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(second.read_text().splitlines()[:-1]) + "\n")  # without its last image
    with pytest.raises(ShardError, match="lack 1 of images 32-63 \\(first 63\\)"):
        merge_shards(shards, [first, cut])


def test_one_whole_run_keeps_its_own_counts_without_records(runs):
    single, _, _ = runs
    merged = merge_shards([single], [])
    assert {k: merged[k] for k in single} == single


def test_merge_provenance_unions_checkpoints_and_joins_commands():
    base = {"commit": "a" * 40, "dirty": False, "versions": {"torch": "2"}}
    prov = merge_provenance(
        [
            ("A", {**base, "checkpoints": {"x": "1", "cnn": "2"}, "command": "one", "utc": "2026-01-01"}),
            ("B", {**base, "checkpoints": {"x": "1"}, "command": "two", "utc": "2026-01-02"}),
        ]
    )
    assert prov == {**base, "checkpoints": {"cnn": "2", "x": "1"}, "command": "one && two", "utc": "2026-01-02"}


def test_a_resumed_shard_leaves_its_attack_summaries_marked_incomplete(runs, tmp_path):
    single, shards, records = runs
    resumed = _result(SHARDS[1], records[0].parent)  # every record is stored: nothing is attacked again
    assert resumed["attack_stats"] == [] and resumed["robust"] == shards[1]["robust"]
    merged = merge_shards([shards[0], resumed], records)
    assert merged["robust_worst"] == single["robust_worst"]  # the counts come from the records all the same
    attacked = single["clean"]["correct"]
    covered = sum(c["n"] for c in shards[0]["attack_stats"])
    assert merged["not_recorded"] == {
        "attack_stats": f"cover {covered} of the {attacked} attacked images (a resumed "
        "run reports only the chunks it attacked itself)"
    }
    assert "not_recorded" not in merge_shards(shards, records)
