"""benchmarks/timing/bench_dc_cost.py: passes, parameters and timed gradients per denoiser, and its refusals."""

from __future__ import annotations

import json

import pytest

from .conftest import load_benchmark

COST = load_benchmark("bench_dc_cost")


def test_rows_count_passes_by_heads_and_time_both_defenses(tmp_path, capsys):
    out = tmp_path / "cost.json"
    COST.main(
        [
            "--denoisers",
            "digits_film_single",
            "digits_film_multi_distill9_h16_long",
            "--defenses",
            "dc",
            "rdc",
            "--n",
            "1",
            "--T",
            "2",
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())
    assert [(r["defense"], r["heads"]) for r in rows] == [
        ("dc", "single"),
        ("dc", "multi"),
        ("rdc", "single"),
        ("rdc", "multi"),
    ]
    assert [r["dc_passes_per_image"] for r in rows] == [20, 2, 20, 2]  # T x K for single, T for multi
    assert all(r["gradient_s_per_image"] > 0 and r["forward_s_per_image"] > 0 for r in rows)
    assert rows[0]["gradient_vs_first"] == 1.0 and rows[2]["gradient_vs_first"] == 1.0
    assert rows[1]["params"] > rows[0]["params"]  # the per-head layers
    assert "digits_film_multi_distill9_h16_long" in capsys.readouterr().out


def test_bad_arguments_are_refused_with_their_names(capsys):
    with pytest.raises(SystemExit):
        COST.main(["--n", "0"])
    assert "--n and --repeats must be >= 1, got 0 and 3" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        COST.main(["--denoisers", "no_such_denoiser", "--n", "1", "--repeats", "1"])
