"""Figures of likelihood maximization (notebook 02): the LM curves, the posterior before and after, and one LM
step of one example (the explorer's builder: the same traces for every (example, step)). Data in, ``go.Figure`` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..defenses.classifier import POSTERIOR_SCALE_NOTE
from .core import _color, _np, _square_axes, image_trace

__all__ = ["lm_curves_figure", "lm_step_figure", "posterior_change_figure"]


def lm_curves_figure(
    lm: Any, *, title: str = "", colors: Sequence[int] | None = None, dashed: Sequence[bool] | None = None
) -> go.Figure:
    """Three panels along the LM steps, one line per image: LM loss, fixed-noise bound, p(label).

    ``colors`` (a colour index per image) and ``dashed`` (per image) pair related inputs, e.g. the clean
    and the adversarial version of one image.
    """
    n = lm.images.shape[0] - 1
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "LM objective at step k (its own sigma, eps)",
            "unconditional diffusion loss (fixed eps)",
            f"p(label | x_k) (Bayes, d = {lm.pixels} pixels)",
        ),
    )
    steps = list(range(n + 1))
    p_true = _np(lm.probs)[:, np.arange(lm.labels.shape[0]), _np(lm.labels).astype(int)]  # (N + 1, B)
    loss, bound = _np(lm.lm_loss), _np(lm.bound)
    for b, name in enumerate(lm.names):
        color = _color(b if colors is None else colors[b])
        dash = "dash" if dashed is not None and dashed[b] else "solid"
        common = dict(mode="lines+markers", line=dict(color=color, dash=dash), legendgroup=name)
        if n:
            fig.add_trace(go.Scatter(x=steps[:-1], y=loss[:, b], name=name, **common), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=bound[:, b], name=name, showlegend=not n, **common), row=1, col=2)
        fig.add_trace(go.Scatter(x=steps, y=p_true[:, b], name=name, showlegend=False, **common), row=1, col=3)
    for c in (1, 2, 3):
        fig.update_xaxes(title_text="LM step k", dtick=1, row=1, col=c)
    fig.update_layout(title=title or "likelihood maximization, step by step", height=420)
    return fig


def posterior_change_figure(
    before: Any,
    after: Any,
    labels: Any,
    names: Sequence[str],
    *,
    pixels: int,
    title: str = "",
    before_name: str = "before LM",
    after_name: str = "after LM",
) -> go.Figure:
    """p(label | x) per image before and after, from (B, K) Bayes posteriors of images of ``pixels`` values
    (``rdc_lib.defenses.classifier.bayes_posterior``; the scale is named on the figure), as grouped bars."""
    b, a, y = _np(before), _np(after), _np(labels).astype(int)
    idx = np.arange(y.shape[0])
    fig = go.Figure(
        [go.Bar(x=list(names), y=b[idx, y], name=before_name), go.Bar(x=list(names), y=a[idx, y], name=after_name)]
    )
    fig.update_layout(
        title=(title or "posterior of the true class before / after")
        + f"<br><sup>{POSTERIOR_SCALE_NOTE.format(d=pixels)}</sup>",
        barmode="group",
        yaxis=dict(title="p(label | x)", range=[0, 1]),
        height=420,
    )
    return fig


def lm_step_figure(lm: Any, example: int, step: int) -> go.Figure:
    """One image of an LMTrajectories at one step: the iterate, its change from the input,
    the posterior, and the fixed-noise loss curve with the step marked (4 traces, fixed kinds)."""
    n = lm.images.shape[0] - 1
    step = max(0, min(int(step), n))
    imgs = _np(lm.images[:, example])  # (N + 1, C, H, W)
    probs = _np(lm.probs[:, example])  # (N + 1, K)
    bound = _np(lm.bound[:, example])
    label = int(lm.labels[example])
    delta_scale = max(float(np.abs(imgs - imgs[:1]).max()), 1e-12)
    fig = make_subplots(
        rows=1,
        cols=4,
        column_widths=[0.2, 0.2, 0.3, 0.3],
        subplot_titles=(
            f"x_{step}",
            f"x_{step} - x_0",
            f"p(y | x_{step}), Bayes, d = {lm.pixels}",
            "unconditional loss",
        ),
    )
    fig.add_trace(image_trace(imgs[step], name="iterate"), row=1, col=1)
    fig.add_trace(image_trace(imgs[step] - imgs[0], diverging=True, scale=delta_scale, name="change"), row=1, col=2)
    colors = ["#d62728" if k == label else "#7f7f7f" for k in range(probs.shape[1])]
    fig.add_trace(
        go.Bar(x=[str(k) for k in range(probs.shape[1])], y=probs[step], marker_color=colors, name="posterior"),
        row=1,
        col=3,
    )
    fig.add_trace(
        go.Scatter(
            x=list(range(n + 1)),
            y=bound,
            mode="lines+markers",
            name="loss",
            marker=dict(
                size=[14 if k == step else 6 for k in range(n + 1)],
                color=["#d62728" if k == step else "#1f77b4" for k in range(n + 1)],
            ),
        ),
        row=1,
        col=4,
    )
    _square_axes(fig, 2)
    fig.update_yaxes(range=[0, 1.05], row=1, col=3)  # probabilities: the same axis for every step and image
    fig.update_xaxes(title_text="class", row=1, col=3)
    fig.update_xaxes(title_text="LM step", dtick=1, row=1, col=4)
    fig.update_layout(
        title=f"{lm.names[example]}: LM step {step} of {n}",
        showlegend=False,
        height=330,
        width=1000,
        margin=dict(l=20, r=20, t=70, b=40),
    )
    return fig
