"""Plotly figure builders for the notebooks: data in (tensors, arrays, dataclasses), ``go.Figure`` out.

No function here displays anything or keeps state; each returns a new figure. Images are
(C, H, W) in [0, 1]: one channel is drawn as a grey heatmap (rows flipped so the picture is
upright), three channels as an RGB ``go.Image``. Perturbations use a diverging colour scale
centred on 0. Builders used by the explorers (``lm_step_figure``, ``attack_step_figure``) return
the same number and kinds of traces for every (example, step), so a ``FigureWidget`` can copy the
trace data over in place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..defenses.classifier import POSTERIOR_SCALE_NOTE

__all__ = [
    "accuracy_vs_eps_figure",
    "attack_step_figure",
    "cost_figure",
    "elbo_sum_figure",
    "elbo_terms_figure",
    "finite_difference_figure",
    "gradient_cosine_figure",
    "image_grid_figure",
    "image_trace",
    "lm_curves_figure",
    "lm_step_figure",
    "logits_over_iterations_figure",
    "loss_surface_3d_figure",
    "loss_surface_figure",
    "noise_spread_figure",
    "posterior_change_figure",
    "posterior_figure",
    "table_figure",
]

CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf")
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
        return go.Heatmap(z=z, zmin=-s, zmax=s, zmid=0.0, colorscale="RdBu", showscale=False, name=name,
                          hovertemplate="%{z:.4f}<extra></extra>")
    return go.Heatmap(z=z, zmin=0.0, zmax=1.0, colorscale="gray", showscale=False, name=name,
                      hovertemplate="%{z:.3f}<extra></extra>")


def _square_axes(fig: go.Figure, n: int, row: int = 1, start_col: int = 1) -> None:
    for j in range(n):
        fig.update_xaxes(_IMAGE_AXIS, row=row, col=start_col + j)
        fig.update_yaxes(dict(_IMAGE_AXIS, scaleanchor=fig.get_subplot(row, start_col + j).xaxis.plotly_name.replace(
            "axis", "")), row=row, col=start_col + j)


def image_grid_figure(images: Any, titles: Sequence[str] | None = None, *, cols: int = 8, diverging: bool = False,
                      title: str = "", size: int = 110) -> go.Figure:
    """Images (N, C, H, W) in a grid of ``cols`` columns, one subplot title each."""
    imgs = _np(images)
    if imgs.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {imgs.shape}")
    n = imgs.shape[0]
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    titles = list(titles) if titles is not None else [""] * n
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles + [""] * (rows * cols - n),
                        horizontal_spacing=0.02, vertical_spacing=0.12 / max(rows, 1))
    scale = max(float(np.abs(imgs).max()), 1e-12) if diverging else None
    for i in range(n):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(image_trace(imgs[i], diverging=diverging, scale=scale, name=titles[i]), row=r, col=c)
    for r in range(1, rows + 1):
        _square_axes(fig, cols, row=r)
    fig.update_annotations(font_size=11)
    fig.update_layout(title=title, width=max(320, size * cols + 60), height=size * rows + 90,
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


# ------------------------------------------------------------------------- Bayes' rule (notebook 01)

def elbo_terms_figure(sigmas: Any, terms: Any, *, label: int | None = None, title: str = "") -> go.Figure:
    """Per-level weighted diffusion loss w_t E||D(x_t; sigma_t, y) - x||^2 (K, T) against sigma, one line
    per class (left), and each class's loss relative to the mean over classes at that level (right)."""
    s, t = _np(sigmas), _np(terms)
    if t.ndim != 2 or t.shape[1] != s.shape[0]:
        raise ValueError(f"terms must have shape (K, T) with T = len(sigmas) = {s.shape[0]}, got {t.shape}")
    rel = t / np.maximum(t.mean(0, keepdims=True), 1e-30) - 1.0
    fig = make_subplots(rows=1, cols=2, subplot_titles=("weighted loss per level",
                                                        "relative to the mean over classes"))
    for k in range(t.shape[0]):
        true = label is not None and k == label
        style = dict(mode="lines+markers", line=dict(color=_color(k), width=4 if true else 1.5),
                     marker=dict(size=4), legendgroup=str(k))
        name = f"class {k}" + (" (label)" if true else "")
        fig.add_trace(go.Scatter(x=s, y=t[k], name=name, **style), row=1, col=1)
        fig.add_trace(go.Scatter(x=s, y=rel[k], name=name, showlegend=False, **style), row=1, col=2)
    fig.update_xaxes(title_text="noise level sigma (model space)")
    fig.update_yaxes(title_text="w_t x squared error", row=1, col=1)
    fig.update_yaxes(title_text="loss / class mean - 1", tickformat=".0%", row=1, col=2)
    fig.update_layout(title=title or "per-level weighted diffusion loss, one line per class", legend_title="class y",
                      height=430)
    return fig


def elbo_sum_figure(totals: Any, *, label: int | None = None, title: str = "") -> go.Figure:
    """Sum over levels L(x, y) per class (K,): the DC's logit is -L(x, y) + log p(y) (docs/paper.md section 3)."""
    v = _np(totals).reshape(-1)
    colors = ["#d62728" if label is not None and k == label else "#7f7f7f" for k in range(v.shape[0])]
    fig = go.Figure(go.Bar(x=[str(k) for k in range(v.shape[0])], y=v, marker_color=colors,
                           text=[f"{x:.4f}" for x in v], textposition="outside", name="L(x, y)"))
    lo, hi = float(v.min()), float(v.max())
    pad = max(hi - lo, 1e-6)
    fig.update_layout(title=title or "ELBO sum L(x, y) = sum_t w_t ||D - x||^2 per class (lowest wins)",
                      xaxis_title="class y", yaxis=dict(title="L(x, y)", range=[lo - 0.5 * pad, hi + 0.5 * pad]),
                      height=380, showlegend=False)
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
    fig.update_layout(title=title or "posterior p(y | x) after Bayes' rule", barmode="group", xaxis_title="class y",
                      yaxis=dict(title="p(y | x)", range=[0, 1]), height=400)
    return fig


def noise_spread_figure(spread: Any, *, title: str = "") -> go.Figure:
    """Mean std of logit differences over noise draws against T, one line per setting (a NoiseSpread)."""
    fig = go.Figure()
    for name, values in spread.std.items():
        fig.add_trace(go.Scatter(x=spread.timesteps_list, y=values, mode="lines+markers", name=name))
    fig.update_layout(title=title or (f"spread of logit differences z_y - z_j over {spread.n_draws} noise draws "
                                      f"({spread.n_images} images)"),
                      xaxis=dict(title="T (noise levels)", type="log", tickvals=spread.timesteps_list),
                      yaxis=dict(title="std over draws (mean over images, j != y)", type="log"), height=420)
    return fig


def cost_figure(names: Sequence[str], passes: Sequence[float], seconds: Sequence[float], *,
                title: str = "") -> go.Figure:
    """Side by side: network passes and measured seconds per classifier call."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("network passes per call", "measured seconds per call"))
    fig.add_trace(go.Bar(x=list(names), y=list(passes), text=[f"{p:,.0f}" for p in passes], textposition="auto",
                         marker_color="#1f77b4", name="passes"), row=1, col=1)
    fig.add_trace(go.Bar(x=list(names), y=list(seconds), text=[f"{s:.2f} s" for s in seconds], textposition="auto",
                         marker_color="#ff7f0e", name="seconds"), row=1, col=2)
    fig.update_layout(title=title or "cost of one diffusion-classifier call", showlegend=False, height=380)
    return fig


# --------------------------------------------------------------------- likelihood maximization (02)

def lm_curves_figure(lm: Any, *, title: str = "", colors: Sequence[int] | None = None,
                     dashed: Sequence[bool] | None = None) -> go.Figure:
    """Three panels along the LM steps, one line per image: LM loss, fixed-noise bound, p(label).

    ``colors`` (a colour index per image) and ``dashed`` (per image) pair related inputs, e.g. the clean
    and the adversarial version of one image.
    """
    n = lm.images.shape[0] - 1
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "LM objective at step k (its own sigma, eps)", "unconditional diffusion loss (fixed eps)",
        f"p(label | x_k) (Bayes, d = {lm.pixels} pixels)"))
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


def posterior_change_figure(before: Any, after: Any, labels: Any, names: Sequence[str], *, pixels: int,
                            title: str = "", before_name: str = "before LM", after_name: str = "after LM") -> go.Figure:
    """p(label | x) per image before and after, from (B, K) Bayes posteriors of images of ``pixels`` values
    (``rdc_lib.defenses.classifier.bayes_posterior``; the scale is named on the figure), as grouped bars."""
    b, a, y = _np(before), _np(after), _np(labels).astype(int)
    idx = np.arange(y.shape[0])
    fig = go.Figure([go.Bar(x=list(names), y=b[idx, y], name=before_name),
                     go.Bar(x=list(names), y=a[idx, y], name=after_name)])
    fig.update_layout(title=(title or "posterior of the true class before / after")
                      + f"<br><sup>{POSTERIOR_SCALE_NOTE.format(d=pixels)}</sup>", barmode="group",
                      yaxis=dict(title="p(label | x)", range=[0, 1]), height=420)
    return fig


def lm_step_figure(lm: Any, example: int, step: int) -> go.Figure:
    """One image of an LMTrajectories at one step: the iterate, its change from the input,
    the posterior, and the fixed-noise loss curve with the step marked (4 traces, fixed kinds)."""
    n = lm.images.shape[0] - 1
    step = max(0, min(int(step), n))
    imgs = _np(lm.images[:, example])                   # (N + 1, C, H, W)
    probs = _np(lm.probs[:, example])                   # (N + 1, K)
    bound = _np(lm.bound[:, example])
    label = int(lm.labels[example])
    delta_scale = max(float(np.abs(imgs - imgs[:1]).max()), 1e-12)
    fig = make_subplots(rows=1, cols=4, column_widths=[0.2, 0.2, 0.3, 0.3], subplot_titles=(
        f"x_{step}", f"x_{step} - x_0", f"p(y | x_{step}), Bayes, d = {lm.pixels}", "unconditional loss"))
    fig.add_trace(image_trace(imgs[step], name="iterate"), row=1, col=1)
    fig.add_trace(image_trace(imgs[step] - imgs[0], diverging=True, scale=delta_scale, name="change"), row=1, col=2)
    colors = ["#d62728" if k == label else "#7f7f7f" for k in range(probs.shape[1])]
    fig.add_trace(go.Bar(x=[str(k) for k in range(probs.shape[1])], y=probs[step], marker_color=colors,
                         name="posterior"), row=1, col=3)
    fig.add_trace(go.Scatter(x=list(range(n + 1)), y=bound, mode="lines+markers", name="loss",
                             marker=dict(size=[14 if k == step else 6 for k in range(n + 1)],
                                         color=["#d62728" if k == step else "#1f77b4" for k in range(n + 1)])),
                  row=1, col=4)
    _square_axes(fig, 2)
    fig.update_yaxes(range=[0, 1.05], row=1, col=3)  # probabilities: the same axis for every step and image
    fig.update_xaxes(title_text="class", row=1, col=3)
    fig.update_xaxes(title_text="LM step", dtick=1, row=1, col=4)
    fig.update_layout(title=f"{lm.names[example]}: LM step {step} of {n}", showlegend=False, height=330,
                      width=1000, margin=dict(l=20, r=20, t=70, b=40))
    return fig


# ----------------------------------------------------------------------------- attacks (notebook 03)

def logits_over_iterations_figure(traj: Any, example: int, *, title: str = "") -> go.Figure:
    """Logits (S, K) of one image along the attack's queries, one line per class (label in bold)."""
    logits = _np(traj.logits[example])
    length = int(traj.length[example])
    label = int(traj.labels[example])
    fig = go.Figure()
    for k in range(logits.shape[1]):
        fig.add_trace(go.Scatter(x=list(range(length)), y=logits[:length, k], mode="lines",
                                 name=f"class {k}" + (" (label)" if k == label else ""),
                                 line=dict(color=_color(k), width=4 if k == label else 1.5)))
    fig.update_layout(title=title or "logits along the attack", xaxis=dict(title="query (0 = clean)",
                      dtick=max(1, length // 10)), yaxis_title="logit", height=380)
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
    fig = make_subplots(rows=2, cols=m, row_heights=[0.55, 0.45], vertical_spacing=0.14,
                        specs=[[{} for _ in names], [{"colspan": m}] + [None] * (m - 1)],
                        subplot_titles=[f"{n}: x_{step} - x" for n in names]
                        + ["margin / clean margin (1: clean, < 0: misclassified)"])
    scale = max(max(float(np.abs(_np(t.x[example] - t.x[example, :1])).max()) for t in trajs.values()), 1e-12)
    for j, name in enumerate(names):
        t = trajs[name]
        s = max(0, min(int(step), t.queries - 1))
        fig.add_trace(image_trace(_np(t.x[example, s] - t.x[example, 0]), diverging=True, scale=scale, name=name),
                      row=1, col=j + 1)
    for j, name in enumerate(names):
        t = trajs[name]
        margin = _relative_margins(t, example)
        length = int(t.length[example])
        fig.add_trace(go.Scatter(x=list(range(length)), y=margin[:length], mode="lines", name=name,
                                 line=dict(color=_color(j))), row=2, col=1)
    for j, name in enumerate(names):
        t = trajs[name]
        s = max(0, min(int(step), t.queries - 1))
        fig.add_trace(go.Scatter(x=[min(s, int(t.length[example]) - 1)], y=[_relative_margins(t, example)[s]],
                                 mode="markers", marker=dict(size=13, color=_color(j), line=dict(width=1)),
                                 name=f"{name} now", showlegend=False), row=2, col=1)
    _square_axes(fig, m)
    fig.add_hline(y=0, line_dash="dot", row=2, col=1)
    fig.update_xaxes(title_text="query (0 = clean)", row=2, col=1)
    label = int(next(iter(trajs.values())).labels[example])
    fig.update_layout(title=f"image {example} (label {label}), query {step}", height=560, width=900,
                      margin=dict(l=20, r=20, t=80, b=40))
    return fig


def loss_surface_figure(surfaces: Mapping[str, Any], *, title: str = "") -> go.Figure:
    """One heatmap per model of the loss on the (gradient-sign, random-sign) plane (LossSurface)."""
    names = list(surfaces)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.12)
    for j, name in enumerate(names):
        s = surfaces[name]
        right = fig.get_subplot(1, j + 1).xaxis.domain[1]
        fig.add_trace(go.Heatmap(x=_np(s.b), y=_np(s.a), z=_np(s.loss), colorscale="Viridis",
                                 colorbar=dict(x=right + 0.005, xanchor="left", len=0.85, thickness=10),
                                 hovertemplate="grad %{y:.3f}, rand %{x:.3f}: loss %{z:.3f}<extra></extra>"),
                      row=1, col=j + 1)
        fig.add_trace(go.Contour(x=_np(s.b), y=_np(s.a), z=_np(s.correct).astype(float), showscale=False,
                                 contours=dict(start=0.5, end=0.5, coloring="lines"),
                                 colorscale=[[0, "white"], [1, "white"]], line=dict(width=2.5), hoverinfo="skip"),
                      row=1, col=j + 1)
        fig.update_xaxes(title_text="random direction", row=1, col=j + 1)
        fig.update_yaxes(title_text="gradient-sign direction" if j == 0 else None, row=1, col=j + 1)
    fig.update_layout(title=title or "cross-entropy around the image (white line: decision boundary)", height=400)
    return fig


def loss_surface_3d_figure(surface: Any, *, title: str = "") -> go.Figure:
    """A 3-D surface of one LossSurface (gradient-sign axis x random axis)."""
    fig = go.Figure(go.Surface(x=_np(surface.b), y=_np(surface.a), z=_np(surface.loss), colorscale="Viridis"))
    fig.update_layout(title=title or "loss surface", height=480, scene=dict(
        xaxis_title="random direction", yaxis_title="gradient-sign direction", zaxis_title="cross-entropy"))
    return fig


def finite_difference_figure(checks: Mapping[str, Any], *, title: str = "") -> go.Figure:
    """Autograd directional derivative vs central finite difference, one panel per model (each its own
    scale: the models' derivatives differ by orders of magnitude), the diagonal dotted."""
    names = list(checks)
    fig = make_subplots(rows=1, cols=len(names), horizontal_spacing=0.06, subplot_titles=[
        f"{n}: max rel. error {checks[n].max_rel_error:.2g}" for n in names])
    for j, name in enumerate(names):
        c = checks[name]
        ad, fd = _np(c.autograd).reshape(-1), _np(c.finite_diff).reshape(-1)
        lo, hi = float(min(ad.min(), fd.min())), float(max(ad.max(), fd.max()))
        fig.add_trace(go.Scatter(x=fd, y=ad, mode="markers", marker=dict(size=9, color=_color(j)), name=name,
                                 hovertemplate="FD %{x:.3g}, autograd %{y:.3g}<extra></extra>"), row=1, col=j + 1)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="black"),
                                 showlegend=False, hoverinfo="skip"), row=1, col=j + 1)
        fig.update_xaxes(title_text="finite difference", row=1, col=j + 1)
    fig.update_yaxes(title_text="autograd", row=1, col=1)
    fig.update_layout(title=title or "directional derivatives: autograd vs finite differences (dotted: equal)",
                      height=380, showlegend=False)
    return fig


def gradient_cosine_figure(cosines: Mapping[str, Any], eot: Mapping[str, Any] | None = None, *,
                           title: str = "") -> go.Figure:
    """Per model: mean pairwise cosine between gradients of independent draws, with the suggested EOT."""
    names = list(cosines)
    values = [float(cosines[n].mean) for n in names]
    text = [f"{v:.3f}" + (f" (EOT {eot[n].eot})" if eot and n in eot else "") for n, v in zip(names, values)]
    fig = go.Figure(go.Bar(x=names, y=values, text=text, textposition="outside", marker_color="#2ca02c"))
    fig.update_layout(title=title or "gradient cosine similarity across random draws", yaxis=dict(
        title="mean pairwise cosine", range=[min(0.0, min(values) - 0.1), 1.15]), height=380)
    return fig


# ------------------------------------------------------------------------------ sweep (notebook 04)

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
        fig.add_trace(go.Scatter(
            x=[x + shift for x in xs], y=ys, customdata=xs, mode="lines+markers", name=f"{defense} / {attack}",
            line=dict(color=_color(j)), marker=dict(symbol=symbols, size=10),
            hovertemplate="eps %{customdata:g}: %{y:.3f}<extra>" + f"{defense} / {attack}</extra>",
            error_y=dict(type="data", symmetric=False, array=[h - y for h, y in zip(hi, ys)],
                         arrayminus=[y - lo_ for y, lo_ in zip(ys, lo)], thickness=1.2),
        ))
    fig.update_layout(title=title or "accuracy against the attack budget (eps = 0: clean; bars: Wilson 95%; "
                                     "lines dodged sideways)",
                      xaxis_title="eps", yaxis=dict(title="accuracy", range=[-0.02, 1.02]), height=450)
    return fig


def table_figure(header: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "",
                 fill: Sequence[str] | None = None) -> go.Figure:
    """A plotly table; ``fill`` gives one background colour per row (e.g. red for failed checks)."""
    cols = list(zip(*rows)) if rows else [[] for _ in header]
    colors = [list(fill)] * len(header) if fill is not None else None
    cells = dict(values=[list(c) for c in cols], align="left", height=24)
    if colors is not None:
        cells["fill_color"] = colors
    fig = go.Figure(go.Table(header=dict(values=list(header), align="left", fill_color="#dde4ee"), cells=cells))
    fig.update_layout(title=title, height=90 + 26 * (len(rows) + 1), margin=dict(l=10, r=10, t=50 if title else 10,
                                                                                 b=10))
    return fig
