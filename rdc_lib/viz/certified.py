"""Figures of notebook 06 (certified robustness): certified vs empirical accuracy, one image's smoothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .core import CLASS_COLORS, _np, image_trace


def certified_vs_empirical_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "") -> go.Figure:
    """Accuracy vs pixel-space l2 radius: certified (solid, lower bound) and empirical (dashed, upper bound)
    for every row of ``summarize`` (keys 'label', 'certified', optional 'empirical'), 95% Wilson bands."""
    fig = go.Figure()
    for i, row in enumerate(rows):
        color = CLASS_COLORS[i % len(CLASS_COLORS)]
        for kind, dash in (("certified", "solid"), ("empirical", "dash")):
            if kind not in row:
                continue
            radii = sorted(row[kind], key=float)
            acc = [row[kind][r] for r in radii]
            fig.add_trace(
                go.Scatter(
                    x=[float(r) for r in radii],
                    y=[a["value"] for a in acc],
                    mode="lines+markers",
                    name=f"{row['label']} {kind}",
                    line={"color": color, "dash": dash},
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [a["high"] - a["value"] for a in acc],
                        "arrayminus": [a["value"] - a["low"] for a in acc],
                        "thickness": 1,
                    },
                )
            )
    fig.update_layout(
        title=title or "Certified (solid) never above empirical (dashed) robust accuracy",
        xaxis_title="l2 radius (pixel space, images in [0, 1])",
        yaxis_title="accuracy",
        yaxis_range=[-0.02, 1.02],
        height=420,
    )
    return fig


def smoothing_explorer_figure(
    x: Any,
    noisy: Any,
    preds: Sequence[int],
    counts: Any,
    cert: Mapping[str, Any],
    *,
    label: int,
    pixel_sigma: float,  # the smoothing noise std, pixel space [0, 1]
    title: str = "",
) -> go.Figure:
    """One image: the clean image, some noisy draws with the base prediction, and the class counts of the
    estimation draws with the certificate (p_A lower bound, radius)."""
    k = len(noisy)
    fig = make_subplots(
        rows=2,
        cols=max(k + 1, 2),
        specs=[[{}] * max(k + 1, 2), [{"colspan": max(k + 1, 2)}] + [None] * (max(k + 1, 2) - 1)],
        subplot_titles=[f"clean (label {label})"]
        + [f"f = {p}" for p in preds]
        + [""] * (max(k + 1, 2) - k - 1)
        + ["estimation draws per class"],
        vertical_spacing=0.12,
    )
    fig.add_trace(image_trace(x), row=1, col=1)
    for j in range(k):
        fig.add_trace(image_trace(noisy[j].clip(0, 1) if hasattr(noisy[j], "clip") else noisy[j]), row=1, col=j + 2)
    c = _np(counts)
    fig.add_trace(
        go.Bar(
            x=list(range(len(c))), y=c, marker_color=[CLASS_COLORS[i % 10] for i in range(len(c))], showlegend=False
        ),
        row=2,
        col=1,
    )
    for ax in range(1, k + 2):
        fig.update_xaxes(visible=False, row=1, col=ax)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor=f"x{ax if ax > 1 else ''}", row=1, col=ax)
    verdict = "abstain" if cert["prediction"] < 0 else f"class {cert['prediction']}, radius {cert['radius']:.3f}"
    fig.update_layout(
        title=title or f"sigma = {pixel_sigma:g}: p_A >= {cert['p_lower']:.3f} -> {verdict}",
        height=480,
        showlegend=False,
    )
    return fig
