"""The noise-level explorer's data (rdc_lib.experiments.levels, notebook 01 section 6), its figure and its widget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rdc_lib.core.paths import checkpoint_path, default_denoiser
from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.experiments.levels import level_views, read_grid_level_rows
from rdc_lib.models import load_denoiser
from rdc_lib.viz.levels import level_figure

pytestmark = pytest.mark.usefixtures("one_thread")

RAW = Path(__file__).resolve().parents[1] / "docs" / "raw" / "grid_levels.jsonl"


def test_read_grid_level_rows_reads_the_measured_rows():
    rows = read_grid_level_rows(RAW)
    raw = [json.loads(line) for line in RAW.read_text().splitlines() if line.strip()]
    assert len(rows) == len(raw) >= 2
    assert [(r.denoiser, r.sigma_min) for r in rows] == sorted((r.denoiser, r.sigma_min) for r in rows)
    by_key = {(r["denoiser"], r["sigma_min"]): r for r in raw}
    for r in rows:
        assert r.robust == by_key[(r.denoiser, r.sigma_min)]["robust"] and r.timesteps == 16


def test_read_grid_level_rows_names_a_missing_file_and_a_bad_row(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks/drivers/grid_levels.py"):
        read_grid_level_rows(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(RAW.read_text().splitlines()[0] + "\n" + json.dumps({"denoiser": "x", "sigma_min": 0.1}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: a grid-level row needs the field 'timesteps'"):
        read_grid_level_rows(bad)


@pytest.fixture(scope="module")
def setup():
    x, y = load_dataset("digits", "test")
    return load_denoiser(checkpoint_path(default_denoiser("multi"))), x[:2], y[:2], x[:8], y[:8]


def test_level_views_weights_gaps_and_the_paper_grid_examples(setup):
    den, x, y, gx, gy = setup
    calls = []

    def attack(dc):  # a stand-in attack: shifts the images by an amount that depends on the grid it attacks
        calls.append(dc)
        shift = 0.05 if len(calls) == 1 else 0.1
        return lambda xx, yy: (xx + shift).clamp(0, 1)

    views = level_views(den, x, y, [1e-4, 0.6], attack, timesteps=4, gap_x=gx, gap_y=gy, seed=0)
    assert len(views) == 2 and len(calls) == 2
    paper, high = views
    for v, s in zip(views, (1e-4, 0.6)):
        grid = make_grid(4, sigma_min=s)
        assert torch.allclose(v.weights, grid.weights.float()) and torch.allclose(v.sigmas, grid.sigmas.float())
        assert v.gap.shape == (4,) and set(v.logits) == {"clean", "adversarial (paper grid)", "adversarial (this grid)"}
        dc = DiffusionClassifier(den, grid, noise_mode="fixed", seed=0).eval()
        with torch.no_grad():
            assert torch.allclose(v.logits["clean"], dc(x), atol=1e-5)
            # the paper-grid examples are the first grid's attack's pixels, read by this grid's DC
            assert torch.allclose(v.logits["adversarial (paper grid)"], dc((x + 0.05).clamp(0, 1)), atol=1e-5)
    assert torch.equal(paper.logits["adversarial (paper grid)"], paper.logits["adversarial (this grid)"])
    assert not torch.allclose(high.logits["adversarial (paper grid)"], high.logits["adversarial (this grid)"])
    assert paper.weight_share_below(0.45) > 0.5 and high.weight_share_below(0.45) == 0.0
    assert high.predictions()["clean"] == high.logits["clean"].argmax(1).tolist()


def test_level_views_rejects_unordered_starts(setup):
    den, x, y, gx, gy = setup
    for bad in ([], [0.6, 0.3], [0.3, 0.3]):
        with pytest.raises(ValueError, match="sigma_mins"):
            level_views(den, x, y, bad, lambda dc: lambda a, b: a, timesteps=4, gap_x=gx, gap_y=gy, seed=0)


def test_level_figure_and_explorer_follow_the_slider(setup):
    pytest.importorskip("ipywidgets")
    from rdc_lib.viz.widgets import level_explorer

    den, x, y, gx, gy = setup
    views = level_views(den, x, y, [1e-4, 0.6], lambda dc: lambda a, b: a, timesteps=4, gap_x=gx, gap_y=gy, seed=0)
    rows = read_grid_level_rows(RAW)
    fig = level_figure(views[1], rows, 0, label=int(y[0]))
    assert list(fig.data[0].y) == pytest.approx(views[1].weights.tolist())
    assert list(fig.data[2].y)[0] == pytest.approx(1.0)  # the clean margin relative to itself
    measured = [t for t in fig.data if t.type == "scatter" and t.error_y.array is not None]
    assert sum(len(t.x) for t in measured) == len(rows)
    box = level_explorer(views, rows, y.tolist())
    slider, figure = box.children[0].children[1], box.children[1]
    before = list(figure.data[0].y)
    slider.value = 1
    assert list(figure.data[0].y) == pytest.approx(views[1].weights.tolist()) and list(figure.data[0].y) != before
    assert any(s.x0 == 0.6 for s in figure.layout.shapes)  # the current-level marker moved
