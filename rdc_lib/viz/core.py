"""Plotly figure builders for the notebooks: data in (tensors, arrays, dataclasses), ``go.Figure`` out.

This module holds what the figures share (class colours, image traces, image grids, tables); the figures of
each notebook are beside it: ``bayes`` (01), ``lm`` (02), ``attacks`` (03), ``sweep`` (04), ``theory``,
``levels``, ``certified``, ``fresh_noise``.

No function here displays anything or keeps state; each returns a new figure. Images are
(C, H, W) in [0, 1]: one channel is drawn as a grey heatmap (rows flipped so the picture is
upright), three channels as an RGB ``go.Image``. Perturbations use a diverging colour scale
centred on 0. Builders used by the explorers (``lm_step_figure``, ``attack_step_figure``) return
the same number and kinds of traces for every (example, step), so a ``FigureWidget`` can copy the
trace data over in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["CLASS_COLORS", "image_grid_figure", "image_trace", "table_figure"]

CLASS_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_IMAGE_AXIS = dict(visible=False, constrain="domain")


def _np(t: Any) -> np.ndarray:
    """A numpy float array from a tensor / array / list (detached, on the CPU)."""
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=float)


def _color(k: int) -> str:
    return CLASS_COLORS[k % len(CLASS_COLORS)]


def image_trace(img: Any, *, diverging: bool = False, scale: float | None = None, name: str = "") -> go.BaseTraceType:
    """A trace drawing one image (C, H, W): grey heatmap (C = 1) or RGB image (C = 3).

    ``diverging``: a perturbation, drawn red/blue around 0 with range +-``scale`` (default: its max |value|).
    """
    a = _np(img)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (C, H, W) with C in (1, 3), got {a.shape}")
    if a.shape[0] == 3 and not diverging:
        return go.Image(z=np.clip(a.transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8), name=name)
    z = a.mean(0)[::-1]  # flip rows: heatmap rows grow upwards
    if diverging:
        s = scale if scale is not None else max(float(np.abs(z).max()), 1e-12)
        return go.Heatmap(
            z=z,
            zmin=-s,
            zmax=s,
            zmid=0.0,
            colorscale="RdBu",
            showscale=False,
            name=name,
            hovertemplate="%{z:.4f}<extra></extra>",
        )
    return go.Heatmap(
        z=z, zmin=0.0, zmax=1.0, colorscale="gray", showscale=False, name=name, hovertemplate="%{z:.3f}<extra></extra>"
    )


def _square_axes(fig: go.Figure, n: int, row: int = 1, start_col: int = 1) -> None:
    for j in range(n):
        fig.update_xaxes(_IMAGE_AXIS, row=row, col=start_col + j)
        fig.update_yaxes(
            dict(_IMAGE_AXIS, scaleanchor=fig.get_subplot(row, start_col + j).xaxis.plotly_name.replace("axis", "")),
            row=row,
            col=start_col + j,
        )


def image_grid_figure(
    images: Any,
    titles: Sequence[str] | None = None,
    *,
    cols: int = 8,
    diverging: bool = False,
    title: str = "",
    size: int = 110,
) -> go.Figure:
    """Images (N, C, H, W) in a grid of ``cols`` columns, one subplot title each."""
    imgs = _np(images)
    if imgs.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {imgs.shape}")
    n = imgs.shape[0]
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    titles = list(titles) if titles is not None else [""] * n
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles + [""] * (rows * cols - n),
        horizontal_spacing=0.02,
        vertical_spacing=0.12 / max(rows, 1),
    )
    scale = max(float(np.abs(imgs).max()), 1e-12) if diverging else None
    for i in range(n):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(image_trace(imgs[i], diverging=diverging, scale=scale, name=titles[i]), row=r, col=c)
    for r in range(1, rows + 1):
        _square_axes(fig, cols, row=r)
    fig.update_annotations(font_size=11)
    fig.update_layout(
        title=title, width=max(320, size * cols + 60), height=size * rows + 90, margin=dict(l=10, r=10, t=70, b=10)
    )
    return fig


def table_figure(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "", fill: Sequence[str] | None = None
) -> go.Figure:
    """A plotly table; ``fill`` gives one background colour per row (e.g. red for failed checks)."""
    cols = list(zip(*rows)) if rows else [[] for _ in header]
    colors = [list(fill)] * len(header) if fill is not None else None
    cells = dict(values=[list(c) for c in cols], align="left", height=24)
    if colors is not None:
        cells["fill_color"] = colors
    fig = go.Figure(go.Table(header=dict(values=list(header), align="left", fill_color="#dde4ee"), cells=cells))
    fig.update_layout(
        title=title, height=90 + 26 * (len(rows) + 1), margin=dict(l=10, r=10, t=50 if title else 10, b=10)
    )
    return fig
