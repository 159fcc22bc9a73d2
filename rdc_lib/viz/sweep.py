"""The figure of a robustness sweep (notebook 04): accuracy against the attack budget, Wilson intervals as error
bars, untrusted and unchecked points marked. Data in, ``go.Figure`` out (rdc_lib.viz.core).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from .core import _color

__all__ = ["accuracy_vs_eps_figure"]


def accuracy_vs_eps_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "") -> go.Figure:
    """Robust accuracy against eps, one line per (defense, attack), Wilson 95% intervals as error bars.

    Each row: defense, attack, eps, robust_acc, robust {low, high}, clean_acc, clean {low, high},
    trusted. eps = 0 shows the clean accuracy; an untrusted point (trusted False) is drawn as an open 'x', a
    point whose checks did not run (trusted None, "not checked") as a hollow circle.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["defense"], r["attack"]), []).append(r)
    fig = go.Figure()
    top = max([r["eps"] for r in rows] + [1e-12])
    for j, ((defense, attack), rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["eps"])
        clean = rs[0]
        xs = [0.0] + [r["eps"] for r in rs]
        shift = (j - (len(groups) - 1) / 2) * 0.008 * top  # dodge: overlapping error bars side by side
        ys = [clean["clean_acc"]] + [r["robust_acc"] for r in rs]
        lo = [clean["clean"]["low"]] + [r["robust"]["low"] for r in rs]
        hi = [clean["clean"]["high"]] + [r["robust"]["high"] for r in rs]
        symbols = ["circle"] + [{True: "circle", False: "x-open", None: "circle-open"}[r.get("trusted")] for r in rs]
        fig.add_trace(
            go.Scatter(
                x=[x + shift for x in xs],
                y=ys,
                customdata=xs,
                mode="lines+markers",
                name=f"{defense} / {attack}",
                line=dict(color=_color(j)),
                marker=dict(symbol=symbols, size=10),
                hovertemplate="eps %{customdata:g}: %{y:.3f}<extra>" + f"{defense} / {attack}</extra>",
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[h - y for h, y in zip(hi, ys)],
                    arrayminus=[y - lo_ for y, lo_ in zip(ys, lo)],
                    thickness=1.2,
                ),
            )
        )
    fig.update_layout(
        title=title or "accuracy against the attack budget (eps = 0: clean; bars: Wilson 95%; lines dodged sideways)",
        xaxis_title="eps",
        yaxis=dict(title="accuracy", range=[-0.02, 1.02]),
        height=450,
    )
    return fig
