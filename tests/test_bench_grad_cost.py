"""benchmarks/timing/bench_grad_cost.py: old vs new attack gradients in one run, their equality, and its refusals."""

from __future__ import annotations

import json

import pytest

from .conftest import load_benchmark

BENCH = load_benchmark("bench_grad_cost")


def test_one_row_per_case_and_loss_with_equal_gradients(tmp_path, capsys):
    out = tmp_path / "grad.json"
    BENCH.main(
        [
            "--denoisers",
            "digits_film_single",
            "--cases",
            "dc-fixed",
            "--losses",
            "ce",
            "dlr",
            "dlr-targeted",
            "--n",
            "2",
            "--T",
            "2",
            "--rounds",
            "1",
            "--best-batches",
            "8",
            "--json",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [r["loss"] for r in rows] == ["ce", "dlr", "dlr-targeted"]
    assert all(r["rel_diff"] < 1e-5 and r["s_old"] > 0 and r["s_new"] > 0 for r in rows)
    # 2 images x 10 classes x 2 levels forward; DLR's backward recomputes at most 3 classes per image
    assert all(r["rows_old"] == 40 for r in rows)
    assert rows[0]["rows_new"] == 40 and 40 < rows[1]["rows_new"] <= 40 + 2 * 3 * 2
    assert len(data["mix"]) == 1 and data["mix"][0]["speedup"] > 0
    assert "ensemble mix" in capsys.readouterr().out


def test_bad_arguments_are_refused_with_their_names(capsys):
    with pytest.raises(SystemExit):
        BENCH.main(["--n", "0"])
    assert "--n, --rounds and --eot must be >= 1, got 0, 5, 2" in capsys.readouterr().err
