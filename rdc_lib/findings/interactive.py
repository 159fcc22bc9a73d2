"""The findings figures for the notebook: a :class:`~rdc_lib.findings.data.FigureData` as a plotly figure.

The same data the docs' SVG figures draw (:mod:`rdc_lib.findings.svg`); hovering a point shows its count, its
95% interval and the command that measured it. Untrusted points (a check failed) are drawn as open markers
(bars: hatched) and named in the hover text; points whose checks did not run as open grey markers.
"""

from __future__ import annotations

import plotly.graph_objects as go

from .data import COLOURS, FigureData, Point

__all__ = ["plotly_figure", "trust_word"]


def trust_word(p: Point) -> str:
    """'checks passed', 'UNTRUSTED (a check failed)' or 'not checked'."""
    return {True: "checks passed", False: "UNTRUSTED (a check failed)"}.get(p.trusted, "not checked")


def _arrays(points: tuple[Point, ...], k: float) -> dict:
    has = [p.low is not None for p in points]
    return dict(
        array=[k * (p.high - p.y) if h else 0 for p, h in zip(points, has)],
        arrayminus=[k * (p.y - p.low) if h else 0 for p, h in zip(points, has)],
        visible=any(has),
    )


def _hover(p: Point) -> str:
    return f"{p.hover}<br>{trust_word(p)}"


def _symbol(p: Point, dashed: bool) -> str:
    base = "square" if dashed else "circle"
    return base if p.trusted else f"{base}-open"


def plotly_figure(fd: FigureData) -> go.Figure:
    """An interactive plotly figure of ``fd`` (hover: count, interval, command, trust)."""
    k = 100.0 if fd.percent else 1.0
    fig = go.Figure()
    if fd.kind == "hbar":
        for i, s in enumerate(fd.series):
            colour = COLOURS[i % len(COLOURS)]
            fig.add_trace(
                go.Bar(
                    y=[p.x for p in s.points],
                    x=[k * p.y for p in s.points],
                    orientation="h",
                    name=s.name,
                    error_x=_arrays(s.points, k),
                    hovertext=[_hover(p) for p in s.points],
                    hoverinfo="text",
                    marker=dict(
                        color=[colour if p.trusted else "white" for p in s.points],
                        line=dict(color=colour, width=1.5),
                        pattern=dict(shape=["/" if p.trusted is False else "" for p in s.points]),
                    ),
                )
            )
        fig.update_layout(
            barmode="group",
            yaxis=dict(autorange="reversed"),
            xaxis_title=fd.xlabel,
            height=160 + 38 * len({p.x for s in fd.series for p in s.points}),
        )
    elif fd.kind in ("lines", "scatter"):
        groups = list(dict.fromkeys(s.group or s.name for s in fd.series))
        for s in fd.series:
            colour = COLOURS[groups.index(s.group or s.name) % len(COLOURS)]
            fig.add_trace(
                go.Scatter(
                    x=[p.x for p in s.points],
                    y=[k * p.y for p in s.points],
                    name=s.name,
                    mode="markers+text" if fd.kind == "scatter" else "lines+markers",
                    text=[p.tag for p in s.points] if fd.kind == "scatter" else None,
                    textposition="middle right",
                    line=dict(color=colour, dash="dash" if s.dashed else "solid"),
                    error_y=_arrays(s.points, k),
                    marker=dict(size=9, color=colour, symbol=[_symbol(p, s.dashed) for p in s.points]),
                    hovertext=[_hover(p) for p in s.points],
                    hoverinfo="text",
                )
            )
        fig.update_layout(xaxis_title=fd.xlabel, yaxis_title=fd.ylabel, height=480)
        if fd.log_x:
            fig.update_xaxes(type="log")
    elif fd.kind == "heatmap":
        cols = list(dict.fromkeys(p.x for s in fd.series for p in s.points))
        cell = lambda s, c: next((p for p in s.points if p.x == c), None)
        fig.add_trace(
            go.Heatmap(
                x=cols,
                y=[s.name for s in fd.series],
                colorscale="Viridis",
                colorbar=dict(title="robust %"),
                z=[[k * cell(s, c).y if cell(s, c) else None for c in cols] for s in fd.series],
                text=[[f"{k * cell(s, c).y:.1f}%" if cell(s, c) else "" for c in cols] for s in fd.series],
                texttemplate="%{text}",
                hovertext=[[_hover(cell(s, c)) if cell(s, c) else "" for c in cols] for s in fd.series],
                hoverinfo="text",
            )
        )
        fig.update_layout(xaxis_title=fd.xlabel, yaxis_title=fd.ylabel, height=420)
    else:
        raise ValueError(f"unknown figure kind {fd.kind!r}; expected hbar, lines, scatter or heatmap")
    if fd.reference:
        line = dict(color="black", dash="dot", width=1)
        if fd.kind == "hbar":
            fig.add_vline(x=k * fd.reference[0], line=line, annotation_text=fd.reference[1])
        else:
            fig.add_hline(y=k * fd.reference[0], line=line, annotation_text=fd.reference[1])
    fig.update_layout(
        title=fd.title,
        template="plotly_white",
        legend=dict(orientation="h", y=-0.25),
        margin=dict(l=10, r=10, t=50, b=10),
    )
    return fig
