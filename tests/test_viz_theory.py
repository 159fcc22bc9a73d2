"""Figure builders of rdc_lib.viz.theory: go.Figure out, the expected traces, ValueError on bad input."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from rdc_lib.experiments.theory import Dominance, GapCurves
from rdc_lib.viz import theory as vt


def _dominance(b: int = 3, t: int = 4, seed: int = 0) -> Dominance:
    g = torch.Generator().manual_seed(seed)
    return Dominance(
        sigmas=torch.logspace(-2, 0, t),
        top_index=torch.randint(0, 5, (b, t), generator=g),
        top_weight=torch.rand(b, t, generator=g),
        effective_count=1 + torch.rand(b, t, generator=g),
        nn_index=torch.randint(0, 5, (b,), generator=g),
    )


def _gap(t: int = 5) -> GapCurves:
    s = torch.logspace(-2, 0.5, t)
    learned, optimal = s**2 * 0.1 + 0.01, s**2 * 0.1
    return GapCurves(sigmas=s, learned=learned, optimal=optimal, gap=learned - optimal)


def test_denoiser_comparison_one_heatmap_per_cell_in_row_order():
    sig = [0.05, 0.2, 1.0]
    series = {"noisy": torch.rand(3, 1, 8, 8), "learned": torch.rand(3, 1, 8, 8), "optimal": torch.zeros(3, 1, 8, 8)}
    fig = vt.denoiser_comparison_figure(series, sig)
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 9 and all(isinstance(tr, go.Heatmap) for tr in fig.data)
    assert [tr.name for tr in fig.data[:3]] == ["noisy, sigma=0.05", "noisy, sigma=0.2", "noisy, sigma=1"]
    assert np.allclose(np.asarray(fig.data[-1].z), 0.0)  # last row = 'optimal' zeros
    # the image is drawn upright (rows flipped for the heatmap)
    img = series["learned"][1, 0].numpy()
    assert np.allclose(np.asarray(fig.data[4].z), img[::-1])


def test_denoiser_comparison_rejects_wrong_number_of_levels():
    with pytest.raises(ValueError, match="T=2"):
        vt.denoiser_comparison_figure({"a": torch.rand(3, 1, 8, 8)}, [0.1, 1.0])
    with pytest.raises(ValueError, match="empty"):
        vt.denoiser_comparison_figure({}, [0.1])


def test_dominant_images_figure_query_nearest_and_levels():
    fig = vt.dominant_images_figure(
        torch.rand(1, 8, 8),
        torch.rand(4, 1, 8, 8),
        torch.tensor([1.0, 0.9, 0.5, 0.1]),
        [0.01, 0.1, 0.5, 1.0],
        nearest=torch.rand(1, 8, 8),
    )
    assert len(fig.data) == 6
    assert [tr.name for tr in fig.data[:2]] == ["query", "nearest"]
    assert "w=0.90" in fig.layout.annotations[3].text
    no_nn = vt.dominant_images_figure(torch.rand(1, 8, 8), torch.rand(4, 1, 8, 8), torch.ones(4), [0.1] * 4)
    assert len(no_nn.data) == 5
    with pytest.raises(ValueError, match="weights"):
        vt.dominant_images_figure(torch.rand(1, 8, 8), torch.rand(4, 1, 8, 8), torch.ones(3), [0.1] * 4)


@pytest.mark.parametrize("as_dict", [False, True])
def test_dominance_figure_two_traces_per_series_with_means(as_dict):
    doms = {"test": _dominance(seed=0), "train": _dominance(seed=1)}
    data = {k: (v.to_dict() if as_dict else v) for k, v in doms.items()}
    fig = vt.dominance_figure(data)
    assert len(fig.data) == 4
    assert [tr.name for tr in fig.data] == ["test: weight", "test: = nearest", "train: weight", "train: = nearest"]
    assert np.allclose(fig.data[0].y, doms["test"].top_weight.mean(0).numpy())
    assert np.allclose(fig.data[3].y, doms["train"].matches_nn.float().mean(0).numpy())
    assert fig.layout.xaxis.type == "log"


def test_dominance_figure_missing_field():
    with pytest.raises(ValueError, match="top_weight"):
        vt.dominance_figure({"x": {"sigmas": [0.1], "matches_nn": [[True]]}})


def test_nn_agreement_figure_one_bar_trace():
    fig = vt.nn_agreement_figure({"optimal / test": 0.95, "learned / test": 0.8})
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Bar)
    assert list(fig.data[0].y) == [0.95, 0.8] and list(fig.data[0].text) == ["95.0%", "80.0%"]


@pytest.mark.parametrize("as_dict", [False, True])
def test_gap_curves_three_traces_per_split(as_dict):
    curves = {"test": _gap(), "train": _gap()}
    fig = vt.gap_curves_figure({k: (v.to_dict() if as_dict else v) for k, v in curves.items()})
    assert len(fig.data) == 6
    assert [tr.name for tr in fig.data[:3]] == ["test: learned", "test: optimal", "test: gap"]
    assert np.allclose(fig.data[2].y, curves["test"].gap.numpy())
    assert fig.data[2].xaxis == "x2"  # the gap is in the right panel


def test_gap_curves_shape_mismatch():
    bad = _gap().to_dict()
    bad["gap"] = bad["gap"][:-1]
    with pytest.raises(ValueError, match="shape"):
        vt.gap_curves_figure({"test": bad})


def test_margin_by_sigma_figure_lines_and_shares():
    curves = {"a": ([0.1, 1.0], [3.0, 1.0]), "b": (torch.tensor([0.1, 1.0]), torch.zeros(2))}
    fig = vt.margin_by_sigma_figure(curves, share=False)
    assert [tr.name for tr in fig.data] == ["a", "b"]
    assert list(fig.data[0].y) == [3.0, 1.0]
    both = vt.margin_by_sigma_figure(curves)
    assert [tr.name for tr in both.data] == ["a", "a: share", "b", "b: share"]
    assert np.allclose(both.data[1].y, [0.75, 0.25]) and np.allclose(both.data[3].y, 0.0)  # zero margin: no share
    assert both.data[1].xaxis == "x2"
    with pytest.raises(ValueError, match="same shape"):
        vt.margin_by_sigma_figure({"a": ([0.1], [1.0, 2.0])})


def test_accuracy_comparison_grouped_bars_with_wilson_errors():
    rows = [
        dict(model="optimal DC", split="test", metric="clean", value=0.9, low=0.8, high=0.95, correct=9, total=10),
        dict(model="optimal DC", split="test", metric="robust", value=0.5, low=0.3, high=0.7, correct=5, total=10),
        dict(model="learned DC", split="test", metric="clean", value=1.0, low=0.7, high=1.0, correct=10, total=10),
        dict(model="learned DC", split="test", metric="robust", value=0.0, low=0.0, high=0.3, correct=0, total=10),
    ]
    fig = vt.accuracy_comparison_figure(rows)
    assert [tr.name for tr in fig.data] == ["clean", "robust"]
    robust = fig.data[1]
    assert list(robust.x) == ["optimal DC<br>test", "learned DC<br>test"]
    assert np.allclose(robust.error_y.array, [0.2, 0.3]) and np.allclose(robust.error_y.arrayminus, [0.2, 0.0])
    assert list(robust.customdata) == ["5/10", "0/10"]
    assert fig.layout.barmode == "group"
    with pytest.raises(ValueError, match="low"):
        vt.accuracy_comparison_figure([dict(model="m", split="s", metric="clean", value=1.0, high=1.0)])
