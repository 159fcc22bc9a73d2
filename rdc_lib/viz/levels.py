"""Figure of notebook 01's noise-level section (data: rdc_lib.experiments.levels.LevelView and GridLevelRow)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .core import CLASS_COLORS

__all__ = ["level_figure"]

_INPUT_COLORS = {"clean": "#2ca02c", "adversarial (paper grid)": "#1f77b4", "adversarial (this grid)": "#d62728"}


def _margin(logits: Any, label: int) -> float:
    """z_y - max_{k != y} z_k of one image's (K,) logits."""
    z = logits.clone()
    zy = float(z[label])
    z[label] = float("-inf")
    return zy - float(z.max())


def level_figure(view: Any, rows: Sequence[Any], example: int, *, label: int, title: str = "") -> go.Figure:
    """Four panels for the grid from ``view.sigma_min``: quadrature weights per level, class gap per level, the DC's
    margin on image ``example`` (clean, adversarial made on the paper grid, adversarial made on this grid; divided
    by the clean margin: 1 = clean, below 0 = misclassified) and the measured robust accuracies ``rows``
    (GridLevelRow, one line per denoiser) against sigma_min with the current grid marked."""
    fig = make_subplots(
        rows=2,
        cols=2,
        vertical_spacing=0.2,
        horizontal_spacing=0.12,
        subplot_titles=(
            f"quadrature weights ({view.weight_share_below(0.45):.0%} below sigma 0.45)",
            "class gap per level (wrong-class minus true-class error)",
            f"DC margin on image {example}, relative to the clean margin",
            "measured DC robust accuracy (docs/grid_levels.md)",
        ),
    )
    s = view.sigmas.tolist()

    def per_level(what: str, y_format: str) -> dict:  # the top panels: one value per level, no legend entry
        return dict(x=s, showlegend=False, hovertemplate=f"sigma %{{x:.3g}}: {what} %{{y:{y_format}}}<extra></extra>")

    weights = go.Bar(
        y=view.weights.tolist(), name="weight w_t", marker_color="#7f7f7f", width=0.06, **per_level("w", ".3g")
    )
    fig.add_trace(weights, row=1, col=1)
    gap = go.Scatter(
        y=view.gap.tolist(),
        mode="lines+markers",
        name="class gap",
        line={"color": "#9467bd"},
        **per_level("gap", ".4f"),
    )
    fig.add_trace(gap, row=1, col=2)
    fig.add_hline(y=0, line={"color": "black", "width": 1, "dash": "dot"}, row=1, col=2)
    clean = _margin(view.logits["clean"][example], label)
    names = list(view.logits)
    rel = [_margin(view.logits[k][example], label) / abs(clean) if clean else 0.0 for k in names]
    preds = [int(view.logits[k][example].argmax()) for k in names]
    fig.add_trace(
        go.Bar(
            x=names,
            y=rel,
            marker_color=[_INPUT_COLORS.get(k, "#999999") for k in names],
            text=[f"predicts {p}" + (" (right)" if p == label else " (WRONG)") for p in preds],
            textposition="outside",
            showlegend=False,
            hovertemplate="%{x}: %{y:.2f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.add_hline(y=0, line={"color": "black", "width": 1}, row=2, col=1)
    denoisers = sorted({r.denoiser for r in rows})
    for i, name in enumerate(denoisers):
        pts = [r for r in rows if r.denoiser == name]
        fig.add_trace(
            go.Scatter(
                x=[r.sigma_min for r in pts],
                y=[r.robust["value"] for r in pts],
                mode="lines+markers",
                name=f"{name} (T = {pts[0].timesteps}, images {pts[0].offset}-{pts[0].offset + pts[0].n - 1})",
                line={"color": CLASS_COLORS[i % len(CLASS_COLORS)]},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [r.robust["high"] - r.robust["value"] for r in pts],
                    "arrayminus": [r.robust["value"] - r.robust["low"] for r in pts],
                    "thickness": 1,
                },
            ),
            row=2,
            col=2,
        )
    fig.add_vline(x=view.sigma_min, line={"color": "#d62728", "dash": "dash"}, row=2, col=2)
    fig.update_xaxes(title_text="sigma (model space)", range=[-0.1, 3.05], row=1, col=1)
    fig.update_xaxes(title_text="sigma (model space)", range=[-0.1, 3.05], row=1, col=2)
    fig.update_xaxes(title_text="grid's smallest level sigma_min", row=2, col=2)
    fig.update_yaxes(title_text="robust accuracy", range=[0, 1], row=2, col=2)
    lo = min(min(rel), -0.5)
    fig.update_yaxes(range=[lo * 1.3, max(max(rel), 1.0) * 1.35], row=2, col=1)
    fig.update_layout(
        height=700,
        legend={"orientation": "h", "y": -0.12},
        title=title or (f"the DC on the grid of {len(s)} levels from sigma_min = {view.sigma_min:g}"),
    )
    return fig
