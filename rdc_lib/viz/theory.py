"""Plotly figures for the optimal diffusion classifier story (notebook 05, docs/paper.md section 6).

Data in (tensors, arrays, lists, the dataclasses of ``rdc_lib.experiments.theory`` or their ``to_dict()``), a new
``go.Figure`` out; nothing is displayed and no state is kept.

- :func:`denoiser_comparison_figure`: image grid, one row per denoiser (noisy input, learned, optimal),
  one column per noise level.
- :func:`dominant_images_figure`: the training image that dominates D*'s softmax at each level.
- :func:`dominance_figure`: how hard the softmax is (largest weight, and how often the dominant image is
  the input's nearest neighbour) against sigma.
- :func:`nn_agreement_figure`: agreement of classifiers with the 1-nearest-neighbour rule.
- :func:`gap_curves_figure`: per-level denoising error of the learned and the optimal denoiser, and
  their gap, on test and training images.
- :func:`margin_by_sigma_figure`: each level's share of the logit margin.
- :func:`accuracy_comparison_figure`: clean / robust accuracies with 95% Wilson intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .core import image_trace

__all__ = [
    "SERIES_COLORS",
    "accuracy_comparison_figure",
    "denoiser_comparison_figure",
    "dominance_figure",
    "dominant_images_figure",
    "gap_curves_figure",
    "margin_by_sigma_figure",
    "nn_agreement_figure",
]

SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_IMAGE_AXIS = dict(visible=False, constrain="domain")


def _np(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=float)


def _field(obj: Any, key: str) -> Any:
    """``obj.key`` for dataclasses, ``obj[key]`` for dicts (``to_dict()`` output)."""
    if isinstance(obj, Mapping):
        if key not in obj:
            raise ValueError(f"missing field {key!r}; got keys {sorted(obj)}")
        return obj[key]
    if not hasattr(obj, key):
        raise ValueError(f"missing field {key!r} on {type(obj).__name__}")
    return getattr(obj, key)


def _color(i: int) -> str:
    return SERIES_COLORS[i % len(SERIES_COLORS)]


def _add_curve(fig: go.Figure, col: int, x: Any, y: Any, name: str, group: str, line: dict, **trace: Any) -> None:
    """One lines+markers curve (x, y of equal length) of legend group ``group`` in panel (1, ``col``)."""
    fig.add_trace(
        go.Scatter(x=x, y=y, mode="lines+markers", name=name, line=line, legendgroup=group, **trace), row=1, col=col
    )


def _image_axes(fig: go.Figure, rows: int, cols: int) -> None:
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            sub = fig.get_subplot(r, c)
            fig.update_xaxes(_IMAGE_AXIS, row=r, col=c)
            fig.update_yaxes(dict(_IMAGE_AXIS, scaleanchor=sub.xaxis.plotly_name.replace("axis", "")), row=r, col=c)


def denoiser_comparison_figure(series: Mapping[str, Any], sigmas: Any, *, title: str = "", size: int = 90) -> go.Figure:
    """Rows = ``series`` (name -> images (T, C, H, W) in [0, 1]), columns = the T noise levels ``sigmas``.

    Typically {'noisy input': ..., 'learned D': ..., 'optimal D*': ...} from
    ``rdc_lib.experiments.analysis.denoise_across_sigmas``; one grey heatmap trace per cell.
    """
    s = _np(sigmas).reshape(-1)
    if not series:
        raise ValueError("series is empty; pass name -> images (T, C, H, W)")
    arrays = {name: _np(v) for name, v in series.items()}
    for name, a in arrays.items():
        if a.ndim != 4 or a.shape[0] != s.shape[0]:
            raise ValueError(f"series {name!r} must have shape (T={s.shape[0]}, C, H, W), got {a.shape}")
    rows, cols = len(arrays), s.shape[0]
    titles = [f"sigma={v:.3g}" if r == 0 else "" for r in range(rows) for v in s]
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=0.01,
        vertical_spacing=0.04,
        row_titles=list(arrays),
    )
    for r, (name, a) in enumerate(arrays.items(), start=1):
        for c in range(cols):
            fig.add_trace(image_trace(a[c], name=f"{name}, sigma={s[c]:.3g}"), row=r, col=c + 1)
    _image_axes(fig, rows, cols)
    fig.update_annotations(font_size=10)
    fig.update_layout(
        title=title or "denoised images across noise levels (class-conditional on the true label)",
        width=max(400, size * cols + 140),
        height=size * rows + 110,
        margin=dict(l=10, r=90, t=80, b=10),
    )
    return fig


def dominant_images_figure(
    query: Any, dominant: Any, weights: Any, sigmas: Any, *, nearest: Any | None = None, title: str = "", size: int = 90
) -> go.Figure:
    """One row: the query image, [its nearest training image], then D*'s dominant training image per level.

    ``dominant`` (T, C, H, W), ``weights`` (T,) its softmax weight, ``sigmas`` (T,).
    """
    q, d, w, s = _np(query), _np(dominant), _np(weights).reshape(-1), _np(sigmas).reshape(-1)
    if d.ndim != 4 or d.shape[0] != s.shape[0] or w.shape[0] != s.shape[0]:
        raise ValueError(
            f"dominant must be (T, C, H, W) and weights (T,) with T = len(sigmas) = {s.shape[0]}, "
            f"got {d.shape} and {w.shape}"
        )
    imgs = [q] + ([_np(nearest)] if nearest is not None else []) + list(d)
    titles = (
        ["query"] + (["nearest"] if nearest is not None else []) + [f"s={sv:.2g}<br>w={wv:.2f}" for sv, wv in zip(s, w)]
    )
    fig = make_subplots(rows=1, cols=len(imgs), subplot_titles=titles, horizontal_spacing=0.01)
    for i, img in enumerate(imgs):
        fig.add_trace(image_trace(img, name=titles[i].replace("<br>", " ")), row=1, col=i + 1)
    _image_axes(fig, 1, len(imgs))
    fig.update_annotations(font_size=10)
    fig.update_layout(
        title=title or "training image with the largest softmax weight in D* at each level",
        width=max(400, size * len(imgs) + 40),
        height=size + 130,
        margin=dict(l=10, r=10, t=90, b=10),
    )
    return fig


def dominance_figure(curves: Mapping[str, Any], *, title: str = "") -> go.Figure:
    """name -> ``Dominance`` (or its dict): mean largest weight and P(dominant = nearest neighbour) vs sigma.

    Two panels, one line per name in each (2 traces per name).
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("largest softmax weight (mean over images)", "dominant image = nearest training image"),
    )
    for i, (name, dom) in enumerate(curves.items()):
        s = _np(_field(dom, "sigmas")).reshape(-1)
        top = _np(_field(dom, "top_weight"))
        match = _np(_field(dom, "matches_nn"))
        if top.ndim != 2 or top.shape[1] != s.shape[0] or match.shape != top.shape:
            raise ValueError(
                f"{name!r}: top_weight and matches_nn must be (B, T={s.shape[0]}), got {top.shape}, {match.shape}"
            )
        color = _color(i)
        _add_curve(fig, 1, s, top.mean(0), f"{name}: weight", name, dict(color=color))
        _add_curve(fig, 2, s, match.mean(0), f"{name}: = nearest", name, dict(color=color, dash="dot"))
    for c in (1, 2):
        fig.update_xaxes(title_text="noise level sigma (model space)", type="log", row=1, col=c)
        fig.update_yaxes(range=[0, 1.05], row=1, col=c)
    fig.update_layout(title=title or "the optimal denoiser is a nearest-neighbour lookup at small sigma", height=400)
    return fig


def nn_agreement_figure(agreement: Mapping[str, float], *, title: str = "") -> go.Figure:
    """Bars: fraction of images on which each classifier (name) predicts the 1-NN label (one trace)."""
    names = list(agreement)
    values = [float(agreement[n]) for n in names]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=values,
            text=[f"{100 * v:.1f}%" for v in values],
            textposition="outside",
            marker_color=[_color(i) for i in range(len(names))],
            name="agreement",
        )
    )
    fig.update_layout(
        title=title or "agreement with the 1-nearest-neighbour rule (l2, training set)",
        yaxis=dict(title="fraction of images", range=[0, 1.1]),
        height=380,
        showlegend=False,
    )
    return fig


def gap_curves_figure(curves: Mapping[str, Any], *, title: str = "") -> go.Figure:
    """name (e.g. 'test', 'train') -> ``GapCurves`` (or its dict): errors and gap against sigma.

    Left: the learned (solid) and optimal (dashed) denoisers' mean squared error per level; right: the gap
    learned - optimal with a zero line. Three traces per name.
    """
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("denoising error E||D - x||^2 (per pixel)", "gap: learned - optimal")
    )
    for i, (name, c) in enumerate(curves.items()):
        s = _np(_field(c, "sigmas")).reshape(-1)
        learned, optimal, gap = (_np(_field(c, k)).reshape(-1) for k in ("learned", "optimal", "gap"))
        if not (learned.shape == optimal.shape == gap.shape == s.shape):
            raise ValueError(f"{name!r}: sigmas, learned, optimal and gap must all have shape (T,)")
        color = _color(i)
        _add_curve(fig, 1, s, learned, f"{name}: learned", name, dict(color=color))
        _add_curve(fig, 1, s, optimal, f"{name}: optimal", name, dict(color=color, dash="dash"))
        _add_curve(fig, 2, s, gap, f"{name}: gap", name, dict(color=color, width=3))
    fig.add_hline(y=0.0, line_dash="dot", line_color="black", row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="noise level sigma (model space)", type="log", row=1, col=col)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title=title or "learned vs optimal denoiser, per noise level", height=420)
    return fig


def margin_by_sigma_figure(curves: Mapping[str, tuple[Any, Any]], *, share: bool = True, title: str = "") -> go.Figure:
    """name -> (sigmas (T,), mean per-level margin contribution (T,)).

    Left panel: the contributions themselves (one line per name). With ``share`` a right panel shows each
    level's share of the total (contribution / sum over levels), which puts classifiers whose margins differ
    by orders of magnitude on one scale (a second line per name).
    """
    fig = make_subplots(
        rows=1,
        cols=2 if share else 1,
        subplot_titles=(
            ("contribution to z_y - z_r", "share of the margin") if share else ("contribution to z_y - z_r",)
        ),
    )
    for i, (name, (sig, val)) in enumerate(curves.items()):
        s, v = _np(sig).reshape(-1), _np(val).reshape(-1)
        if s.shape != v.shape:
            raise ValueError(f"{name!r}: sigmas and values must have the same shape, got {s.shape} and {v.shape}")
        color = _color(i)
        _add_curve(fig, 1, s, v, name, name, dict(color=color))
        if share:
            total = float(v.sum())
            frac = v / total if abs(total) > 1e-30 else np.zeros_like(v)
            _add_curve(fig, 2, s, frac, f"{name}: share", name, dict(color=color, dash="dot"), showlegend=False)
    for col in range(1, 3 if share else 2):
        fig.add_hline(y=0.0, line_dash="dot", line_color="black", row=1, col=col)
        fig.update_xaxes(title_text="noise level sigma (model space)", type="log", row=1, col=col)
    fig.update_layout(
        title=title or "where the margin comes from: w_t (error of runner-up - error of true class)", height=420
    )
    return fig


def accuracy_comparison_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "") -> go.Figure:
    """Grouped bars with 95% Wilson error bars; one trace per ``metric``.

    Each row: {'model', 'split', 'metric' (e.g. 'clean', 'robust'), 'value', 'low', 'high'} (values in [0, 1];
    'correct' and 'total' are shown on hover when present). Bars are grouped by 'model / split'.
    """
    if not rows:
        raise ValueError("rows is empty; pass dicts with model, split, metric, value, low, high")
    groups: list[str] = []
    metrics: list[str] = []
    for r in rows:
        for key in ("model", "split", "metric", "value", "low", "high"):
            if key not in r:
                raise ValueError(f"row {dict(r)} is missing {key!r}")
        g = f"{r['model']}<br>{r['split']}"
        if g not in groups:
            groups.append(g)
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
    fig = go.Figure()
    for i, m in enumerate(metrics):
        sel = {f"{r['model']}<br>{r['split']}": r for r in rows if r["metric"] == m}
        xs = [g for g in groups if g in sel]
        v = np.array([float(sel[g]["value"]) for g in xs])
        lo = np.array([float(sel[g]["low"]) for g in xs])
        hi = np.array([float(sel[g]["high"]) for g in xs])
        counts = [f"{sel[g].get('correct', '?')}/{sel[g].get('total', '?')}" for g in xs]
        fig.add_trace(
            go.Bar(
                x=xs,
                y=v,
                name=m,
                marker_color=_color(i),
                error_y=dict(type="data", symmetric=False, array=hi - v, arrayminus=v - lo),
                text=[f"{100 * x:.0f}%" for x in v],
                textposition="outside",
                customdata=counts,
                hovertemplate="%{x}: %{y:.3f} (%{customdata})<extra>" + m + "</extra>",
            )
        )
    fig.update_layout(
        title=title or "accuracy with 95% Wilson intervals",
        barmode="group",
        yaxis=dict(title="accuracy", range=[0, 1.15]),
        height=440,
    )
    return fig
