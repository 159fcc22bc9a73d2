"""Figure of notebook 03's fixed-against-fresh-noise section (data: rdc_lib.evaluation.fresh_noise.FixedVsFresh)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["fixed_vs_fresh_figure"]

_COLORS = {"clean": "#9e9e9e", "fixed-noise attack": "#1f77b4", "EOT attack": "#d62728"}


def fixed_vs_fresh_figure(result: Any, *, title: str = "") -> go.Figure:
    """Left: per image, how many of the N stochastic draws misclassify the clean image, the fixed-noise attack's
    example and the EOT attack's example (a star marks images the fixed-noise defense keeps). Right: the robust
    count of the N images under each reading: fixed noise (one deterministic call), one stochastic call (expected
    over the draws) and worst of N (every draw right)."""
    n, draws = result.n, result.n_draws
    names = [
        f"image {i} (label {int(result.labels[i])})" + (" *" if bool(result.fixed_robust[i]) else "") for i in range(n)
    ]
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.58, 0.42],
        horizontal_spacing=0.12,
        subplot_titles=(f"draws (of {draws}) that misclassify the image", f"robust images (of {n}) by reading"),
    )
    series = (
        ("clean", result.wrong_clean),
        ("fixed-noise attack", result.wrong_fixed_adv),
        ("EOT attack", result.wrong_eot_adv),
    )
    for name, wrong in series:
        fig.add_trace(
            go.Bar(
                x=names,
                y=wrong.tolist(),
                name=name,
                marker_color=_COLORS[name],
                legendgroup=name,
                hovertemplate="%{x}: %{y} of " + str(draws) + " draws wrong<extra>" + name + "</extra>",
            ),
            row=1,
            col=1,
        )
    counts = result.counts()
    worst = f"worst_of_{draws}"
    readings = ["fixed noise<br>(one call)", "stochastic<br>one call (mean)", f"stochastic<br>worst of {draws}"]
    for key, name in (("fixed_attack", "fixed-noise attack"), ("eot_attack", "EOT attack")):
        c = counts[key]
        values = [c.get("fixed_noise"), c["one_call_expected"], c[worst]]
        fig.add_trace(
            go.Bar(
                x=readings,
                y=values,
                name=name,
                marker_color=_COLORS[name],
                legendgroup=name,
                showlegend=False,
                text=[None if v is None else f"{v:.3g}" for v in values],
                textposition="outside",
            ),
            row=1,
            col=2,
        )
    fig.update_yaxes(title_text="misclassifying draws", range=[0, draws + 0.5], row=1, col=1)
    fig.update_yaxes(title_text="robust images", range=[0, n + 0.8], row=1, col=2)
    fig.update_layout(
        barmode="group",
        height=430,
        title=title
        or (
            "fixed against fresh noise (* = the fixed-noise defense keeps the image): one wrong draw of "
            f"{draws} removes an image from the worst-of-{draws} count"
        ),
        legend={"orientation": "h", "y": -0.25},
    )
    return fig
