"""Figures of Bayes' rule and the diffusion classifier (notebook 01): ELBO terms and sums, posteriors,
the noise of a stochastic DC and the cost of a call. Data in, ``go.Figure`` out (rdc_lib.viz.core).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .core import _color, _np

__all__ = ["cost_figure", "elbo_sum_figure", "elbo_terms_figure", "noise_spread_figure", "posterior_figure"]


def elbo_terms_figure(sigmas: Any, terms: Any, *, label: int | None = None, title: str = "") -> go.Figure:
    """Per-level weighted diffusion loss w_t E||D(x_t; sigma_t, y) - x||^2 (K, T) against sigma, one line
    per class (left), and each class's loss relative to the mean over classes at that level (right)."""
    s, t = _np(sigmas), _np(terms)
    if t.ndim != 2 or t.shape[1] != s.shape[0]:
        raise ValueError(f"terms must have shape (K, T) with T = len(sigmas) = {s.shape[0]}, got {t.shape}")
    rel = t / np.maximum(t.mean(0, keepdims=True), 1e-30) - 1.0
    fig = make_subplots(rows=1, cols=2, subplot_titles=("weighted loss per level", "relative to the mean over classes"))
    for k in range(t.shape[0]):
        true = label is not None and k == label
        style = dict(
            mode="lines+markers",
            line=dict(color=_color(k), width=4 if true else 1.5),
            marker=dict(size=4),
            legendgroup=str(k),
        )
        name = f"class {k}" + (" (label)" if true else "")
        fig.add_trace(go.Scatter(x=s, y=t[k], name=name, **style), row=1, col=1)
        fig.add_trace(go.Scatter(x=s, y=rel[k], name=name, showlegend=False, **style), row=1, col=2)
    fig.update_xaxes(title_text="noise level sigma (model space)")
    fig.update_yaxes(title_text="w_t x squared error", row=1, col=1)
    fig.update_yaxes(title_text="loss / class mean - 1", tickformat=".0%", row=1, col=2)
    fig.update_layout(
        title=title or "per-level weighted diffusion loss, one line per class", legend_title="class y", height=430
    )
    return fig


def elbo_sum_figure(totals: Any, *, label: int | None = None, title: str = "") -> go.Figure:
    """Sum over levels L(x, y) per class (K,): the DC's logit is -L(x, y) + log p(y) (docs/paper.md section 3)."""
    v = _np(totals).reshape(-1)
    colors = ["#d62728" if label is not None and k == label else "#7f7f7f" for k in range(v.shape[0])]
    fig = go.Figure(
        go.Bar(
            x=[str(k) for k in range(v.shape[0])],
            y=v,
            marker_color=colors,
            text=[f"{x:.4f}" for x in v],
            textposition="outside",
            name="L(x, y)",
        )
    )
    lo, hi = float(v.min()), float(v.max())
    pad = max(hi - lo, 1e-6)
    fig.update_layout(
        title=title or "ELBO sum L(x, y) = sum_t w_t ||D - x||^2 per class (lowest wins)",
        xaxis_title="class y",
        yaxis=dict(title="L(x, y)", range=[lo - 0.5 * pad, hi + 0.5 * pad]),
        height=380,
        showlegend=False,
    )
    return fig


def posterior_figure(posteriors: Mapping[str, Any], *, label: int | None = None, title: str = "") -> go.Figure:
    """Grouped bars of posteriors p(y | x) (K,) under several priors / scales, keyed by series name (name the
    scale in it: ``rdc_lib.defenses.classifier.POSTERIOR_SCALE_NOTE`` or the temperature)."""
    fig = go.Figure()
    for name, p in posteriors.items():
        v = _np(p).reshape(-1)
        fig.add_trace(go.Bar(x=[str(k) for k in range(v.shape[0])], y=v, name=name))
    if label is not None:
        fig.add_vline(x=label, line_dash="dot", line_color="black", annotation_text="label")
    fig.update_layout(
        title=title or "posterior p(y | x) after Bayes' rule",
        barmode="group",
        xaxis_title="class y",
        yaxis=dict(title="p(y | x)", range=[0, 1]),
        height=400,
    )
    return fig


def noise_spread_figure(spread: Any, *, title: str = "") -> go.Figure:
    """Mean std of logit differences over noise draws against T, one line per setting (a NoiseSpread)."""
    fig = go.Figure()
    for name, values in spread.std.items():
        fig.add_trace(go.Scatter(x=spread.timesteps_list, y=values, mode="lines+markers", name=name))
    fig.update_layout(
        title=title
        or (f"spread of logit differences z_y - z_j over {spread.n_draws} noise draws ({spread.n_images} images)"),
        xaxis=dict(title="T (noise levels)", type="log", tickvals=spread.timesteps_list),
        yaxis=dict(title="std over draws (mean over images, j != y)", type="log"),
        height=420,
    )
    return fig


def cost_figure(
    names: Sequence[str], passes: Sequence[float], seconds: Sequence[float], *, title: str = ""
) -> go.Figure:
    """Side by side: network passes and measured seconds per classifier call."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("network passes per call", "measured seconds per call"))
    panels = (
        (passes, [f"{p:,.0f}" for p in passes], "#1f77b4", "passes"),
        (seconds, [f"{s:.2f} s" for s in seconds], "#ff7f0e", "seconds"),
    )
    for col, (values, text, colour, name) in enumerate(panels, start=1):
        fig.add_trace(
            go.Bar(x=list(names), y=list(values), text=text, textposition="auto", marker_color=colour, name=name),
            row=1,
            col=col,
        )
    fig.update_layout(title=title or "cost of one diffusion-classifier call", showlegend=False, height=380)
    return fig
