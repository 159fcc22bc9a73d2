"""The headline rows of docs/results.md: only long, checked AutoAttack-style runs are accepted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rdc_lib.evaluation import EvalConfig

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("_results_table", ROOT / "benchmarks" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLE = _script()


def _result(**over) -> dict:
    cfg = EvalConfig(defense="dc", attack="autoattack", n=200, steps=50, heads="single", noise_mode="fixed",
                     timesteps=16, n_target_classes=3, square_queries=500, denoiser="digits_film_single")
    row = {**cfg.__dict__, "clean": {"correct": 199, "total": 200, "value": 0.995, "low": 0.97, "high": 1.0},
           "robust": {"correct": 120, "total": 200, "value": 0.6, "low": 0.53, "high": 0.67}, "robust_acc": 0.6,
           "trusted": True, "seconds": 10.0, "checks": {"gradients": {"passed": True}},
           "provenance": {"commit": "abc", "dirty": False, "command": "python -m rdc_lib.cli eval --defense dc --json"}}
    row.update(over)
    return row


def _write(tmp_path: Path, row: dict) -> Path:
    path = tmp_path / "run.out"
    path.write_text("progress line\n" + json.dumps(row) + "\n")
    return path


def test_a_long_checked_run_is_accepted_with_its_key_and_command(tmp_path):
    row = TABLE.headline_row(_write(tmp_path, _result()))
    assert row["key"] == EvalConfig(**{k: row[k] for k in EvalConfig.__dataclass_fields__}).key()
    assert row["command"] == "rdc eval --defense dc --json"


@pytest.mark.parametrize("over, words", [
    ({"n": 64}, "64 images"),
    ({"steps": 25}, "25 APGD iterations"),
    ({"attack": "apgd-ce"}, "attack 'apgd-ce'"),
    ({"checks": {}}, "no sanity checks"),
])
def test_short_or_unchecked_runs_are_refused_naming_why(tmp_path, over, words):
    with pytest.raises(SystemExit, match=words):
        TABLE.headline_row(_write(tmp_path, _result(**over)))


def test_a_file_without_the_json_result_is_refused(tmp_path):
    path = tmp_path / "run.out"
    path.write_text("eval dc/autoattack: 10/200 img\n")
    with pytest.raises(SystemExit, match="not the JSON result"):
        TABLE.headline_row(path)
    with pytest.raises(SystemExit, match="no output"):
        TABLE.headline_row(tmp_path / "missing.out")
