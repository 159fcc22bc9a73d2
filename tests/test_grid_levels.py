"""benchmarks/drivers/grid_levels.py: one resumable DC evaluation per (denoiser, smallest level), and its report."""

from __future__ import annotations

import json

import pytest

from .conftest import load_benchmark

GL = load_benchmark("grid_levels")


def test_run_stores_one_row_per_cell_skips_stored_cells_and_renders(tmp_path, capsys):
    raw, records = tmp_path / "raw.jsonl", tmp_path / "records"
    argv = [
        "run",
        "--split",
        "test",
        "--sigma-mins",
        "0.0001",
        "0.6",
        "--n",
        "2",
        "--offset",
        "200",
        "--steps",
        "1",
        "--records",
        str(records),
        "--raw",
        str(raw),
        "--no-progress",
    ]
    GL.main(argv)
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    assert [r["sigma_min"] for r in rows] == [0.0001, 0.6]
    assert all(len(r["robust_flags"]) == 2 and r["robust"]["total"] == 2 for r in rows)
    assert rows[1]["levels"][0] == pytest.approx(0.6) and rows[0]["levels"][0] == pytest.approx(0.0001)
    assert rows[0]["passes_per_image"] == 16  # a multi-head DC: one pass per level scores every class
    assert "--grid-sigma-min 0.6" in rows[1]["command"] and "--grid-sigma-min" not in rows[0]["command"]
    capsys.readouterr()
    GL.main(argv)  # a rerun finds both cells stored and computes nothing
    assert capsys.readouterr().out.count("stored, skipped") == 2 and len(raw.read_text().splitlines()) == 2
    out = tmp_path / "doc.md"
    notes = tmp_path / "notes.md"
    notes.write_text("Hand-written analysis.\n")
    GL.main(["doc", "--raw", str(raw), "--notes", str(notes), "--out", str(out)])
    text = out.read_text()
    assert "| denoiser | sigma_min 0.0001 | sigma_min 0.6 |" in text and "Test images 200-201" in text
    assert text.rstrip().endswith("Hand-written analysis.")


@pytest.mark.parametrize("bad", ["0", "3", "-1"])
def test_a_smallest_level_outside_the_grid_is_refused(bad, capsys):
    with pytest.raises(SystemExit):
        GL.main(["run", "--sigma-mins", bad])
    assert "grid_sigma_min (the noise grid's smallest level) must be in (0, 3.0)" in capsys.readouterr().err


def test_an_unknown_denoiser_is_refused(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="nope"):
        GL.main(
            [
                "run",
                "--denoisers",
                "nope",
                "--n",
                "2",
                "--steps",
                "1",
                "--raw",
                str(tmp_path / "r.jsonl"),
                "--records",
                str(tmp_path / "rec"),
            ]
        )
