"""Figures of attacks and their checks (notebook 03): logits over an attack's iterations, one attack step per
example (the explorer's builder: the same traces for every (example, step)), loss surfaces, finite differences and
gradient cosines. Data in, ``go.Figure`` out (rdc_lib.viz.core).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .core import _color, _np, _square_axes, image_trace

__all__ = [
    "attack_step_figure",
    "finite_difference_figure",
    "gradient_cosine_figure",
    "logits_over_iterations_figure",
    "loss_surface_3d_figure",
    "loss_surface_figure",
]


def logits_over_iterations_figure(traj: Any, example: int, *, title: str = "") -> go.Figure:
    """Logits (S, K) of one image along the attack's queries, one line per class (label in bold)."""
    logits = _np(traj.logits[example])
    length = int(traj.length[example])
    label = int(traj.labels[example])
    fig = go.Figure()
    for k in range(logits.shape[1]):
        fig.add_trace(
            go.Scatter(
                x=list(range(length)),
                y=logits[:length, k],
                mode="lines",
                name=f"class {k}" + (" (label)" if k == label else ""),
                line=dict(color=_color(k), width=4 if k == label else 1.5),
            )
        )
    fig.update_layout(
        title=title or "logits along the attack",
        xaxis=dict(title="query (0 = clean)", dtick=max(1, length // 10)),
        yaxis_title="logit",
        height=380,
    )
    return fig


def _relative_margins(traj: Any, example: int) -> np.ndarray:
    """Margins (S,) of one image divided by |clean margin|: 1 at the clean point, < 0 once misclassified."""
    m = _np(traj.margins()[example])
    return m / max(abs(float(m[0])), 1e-12)


def attack_step_figure(trajs: Mapping[str, Any], example: int, step: int) -> go.Figure:
    """Per model: the perturbation x_step - x at one query (top row), and below, the margin
    z_y - max_{k != y} z_k relative to the clean margin along the queries of every model, with the
    step marked (models' logit scales differ by orders of magnitude, so each is divided by its own
    clean margin). Trace count and kinds are the same for every (example, step)."""
    names = list(trajs)
    m = len(names)
    fig = make_subplots(
        rows=2,
        cols=m,
        row_heights=[0.55, 0.45],
        vertical_spacing=0.14,
        specs=[[{} for _ in names], [{"colspan": m}] + [None] * (m - 1)],
        subplot_titles=[f"{n}: x_{step} - x" for n in names] + ["margin / clean margin (1: clean, < 0: misclassified)"],
    )
    scale = max(max(float(np.abs(_np(t.x[example] - t.x[example, :1])).max()) for t in trajs.values()), 1e-12)
    for j, name in enumerate(names):
        t = trajs[name]
        s = max(0, min(int(step), t.queries - 1))
        fig.add_trace(
            image_trace(_np(t.x[example, s] - t.x[example, 0]), diverging=True, scale=scale, name=name),
            row=1,
            col=j + 1,
        )
    for j, name in enumerate(names):
        t = trajs[name]
        margin = _relative_margins(t, example)
        length = int(t.length[example])
        fig.add_trace(
            go.Scatter(x=list(range(length)), y=margin[:length], mode="lines", name=name, line=dict(color=_color(j))),
            row=2,
            col=1,
        )
    for j, name in enumerate(names):
        t = trajs[name]
        s = max(0, min(int(step), t.queries - 1))
        fig.add_trace(
            go.Scatter(
                x=[min(s, int(t.length[example]) - 1)],
                y=[_relative_margins(t, example)[s]],
                mode="markers",
                marker=dict(size=13, color=_color(j), line=dict(width=1)),
                name=f"{name} now",
                showlegend=False,
            ),
            row=2,
            col=1,
        )
    _square_axes(fig, m)
    fig.add_hline(y=0, line_dash="dot", row=2, col=1)
    fig.update_xaxes(title_text="query (0 = clean)", row=2, col=1)
    label = int(next(iter(trajs.values())).labels[example])
    fig.update_layout(
        title=f"image {example} (label {label}), query {step}",
        height=560,
        width=900,
        margin=dict(l=20, r=20, t=80, b=40),
    )
    return fig


def loss_surface_figure(surfaces: Mapping[str, Any], *, title: str = "") -> go.Figure:
    """One heatmap per model of the loss on the (gradient-sign, random-sign) plane (LossSurface)."""
    names = list(surfaces)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.12)
    for j, name in enumerate(names):
        s = surfaces[name]
        right = fig.get_subplot(1, j + 1).xaxis.domain[1]
        fig.add_trace(
            go.Heatmap(
                x=_np(s.b),
                y=_np(s.a),
                z=_np(s.loss),
                colorscale="Viridis",
                colorbar=dict(x=right + 0.005, xanchor="left", len=0.85, thickness=10),
                hovertemplate="grad %{y:.3f}, rand %{x:.3f}: loss %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=j + 1,
        )
        fig.add_trace(
            go.Contour(
                x=_np(s.b),
                y=_np(s.a),
                z=_np(s.correct).astype(float),
                showscale=False,
                contours=dict(start=0.5, end=0.5, coloring="lines"),
                colorscale=[[0, "white"], [1, "white"]],
                line=dict(width=2.5),
                hoverinfo="skip",
            ),
            row=1,
            col=j + 1,
        )
        fig.update_xaxes(title_text="random direction", row=1, col=j + 1)
        fig.update_yaxes(title_text="gradient-sign direction" if j == 0 else None, row=1, col=j + 1)
    fig.update_layout(title=title or "cross-entropy around the image (white line: decision boundary)", height=400)
    return fig


def loss_surface_3d_figure(surface: Any, *, title: str = "") -> go.Figure:
    """A 3-D surface of one LossSurface (gradient-sign axis x random axis)."""
    fig = go.Figure(go.Surface(x=_np(surface.b), y=_np(surface.a), z=_np(surface.loss), colorscale="Viridis"))
    fig.update_layout(
        title=title or "loss surface",
        height=480,
        scene=dict(xaxis_title="random direction", yaxis_title="gradient-sign direction", zaxis_title="cross-entropy"),
    )
    return fig


def finite_difference_figure(checks: Mapping[str, Any], *, title: str = "") -> go.Figure:
    """Autograd directional derivative vs central finite difference, one panel per model (each its own
    scale: the models' derivatives differ by orders of magnitude), the diagonal dotted."""
    names = list(checks)
    fig = make_subplots(
        rows=1,
        cols=len(names),
        horizontal_spacing=0.06,
        subplot_titles=[f"{n}: max rel. error {checks[n].max_rel_error:.2g}" for n in names],
    )
    for j, name in enumerate(names):
        c = checks[name]
        ad, fd = _np(c.autograd).reshape(-1), _np(c.finite_diff).reshape(-1)
        lo, hi = float(min(ad.min(), fd.min())), float(max(ad.max(), fd.max()))
        fig.add_trace(
            go.Scatter(
                x=fd,
                y=ad,
                mode="markers",
                marker=dict(size=9, color=_color(j)),
                name=name,
                hovertemplate="FD %{x:.3g}, autograd %{y:.3g}<extra></extra>",
            ),
            row=1,
            col=j + 1,
        )
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                line=dict(dash="dot", color="black"),
                showlegend=False,
                hoverinfo="skip",
            ),
            row=1,
            col=j + 1,
        )
        fig.update_xaxes(title_text="finite difference", row=1, col=j + 1)
    fig.update_yaxes(title_text="autograd", row=1, col=1)
    fig.update_layout(
        title=title or "directional derivatives: autograd vs finite differences (dotted: equal)",
        height=380,
        showlegend=False,
    )
    return fig


def gradient_cosine_figure(
    cosines: Mapping[str, Any], eot: Mapping[str, Any] | None = None, *, title: str = ""
) -> go.Figure:
    """Per model: mean pairwise cosine between gradients of independent draws, with the suggested EOT."""
    names = list(cosines)
    values = [float(cosines[n].mean) for n in names]
    text = [f"{v:.3f}" + (f" (EOT {eot[n].eot})" if eot and n in eot else "") for n, v in zip(names, values)]
    fig = go.Figure(go.Bar(x=names, y=values, text=text, textposition="outside", marker_color="#2ca02c"))
    fig.update_layout(
        title=title or "gradient cosine similarity across random draws",
        yaxis=dict(title="mean pairwise cosine", range=[min(0.0, min(values) - 0.1), 1.15]),
        height=380,
    )
    return fig
