"""ipywidgets explorers over the notebooks' figures, with a static fallback.

An explorer is a plotly ``FigureWidget`` driven by two controls, named as the browser test expects
(tests/browser/test_jupyterlab.py): an ``IntSlider`` with description ``'step'`` and a ``Dropdown``
with description ``'example'``; optional extra controls ("knobs") recompute the data. The figure
comes from a pure builder (:mod:`rdc_lib.viz.lm`, :mod:`rdc_lib.viz.attacks`) called with (example, step);
on every change the new figure's trace data are copied into the widget in one batch update, so the builder stays
the only place that knows how to draw.

Without a frontend (papermill, nbval, ``interactive=False``) widget callbacks never fire, so
:func:`show_explorer` always displays the static figure(s) first and builds the explorer only when
asked to; if ipywidgets/anywidget are missing it says so and keeps the static result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import IPython.display as ipd  # called as ipd.display(...): late-bound, so a patched display is honoured
import ipywidgets as widgets
import plotly.graph_objects as go

from .attacks import attack_step_figure
from .levels import level_figure
from .lm import lm_step_figure

__all__ = [
    "Explorer",
    "attack_explorer",
    "copy_figure",
    "level_explorer",
    "lm_explorer",
    "show_explorer",
    "step_explorer",
]


def copy_figure(target: go.FigureWidget, source: go.Figure) -> None:
    """Make ``target`` show ``source``: trace data in place (same count and kinds), else replaced; title too."""
    with target.batch_update():
        same = len(target.data) == len(source.data) and all(a.type == b.type for a, b in zip(target.data, source.data))
        if same:
            for old, new in zip(target.data, source.data):
                spec = new.to_plotly_json()
                spec.pop("type", None)
                old.update(spec, overwrite=True)
        else:
            target.data = []
            target.add_traces(list(source.data))
        target.layout.title = source.layout.title
        target.layout.annotations = source.layout.annotations


@dataclass
class Explorer:
    """A built explorer: ``widget`` (what to display), its ``figure``, the controls, and ``redraw()``."""

    widget: Any
    figure: go.FigureWidget
    step: Any
    example: Any
    knobs: dict[str, Any] = field(default_factory=dict)
    status: Any = None
    redraw: Callable[[], None] = lambda: None


def step_explorer(
    figure_fn: Callable[[int, int], go.Figure],  # (example index, step) -> figure
    *,
    examples: Sequence[str],  # one label per example (the dropdown's options)
    n_steps: int,  # the step slider runs 0..n_steps
    knobs: Mapping[str, Any] | None = None,  # name -> ipywidgets value widget
    recompute: Callable[..., int] | None = None,  # (**knob values) -> new n_steps; called on knob changes
    step: int = 0,
) -> Explorer:
    """Build (not display) an explorer: 'example' dropdown + 'step' slider (+ knobs) over a FigureWidget."""
    if not examples:
        raise ValueError("examples must name at least one example")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    knobs = dict(knobs or {})
    if knobs and recompute is None:
        raise ValueError("knobs need a recompute function (**knob values) -> n_steps")
    step_w = widgets.IntSlider(
        value=min(step, n_steps), min=0, max=n_steps, description="step", continuous_update=False
    )
    example_w = widgets.Dropdown(options=[(name, i) for i, name in enumerate(examples)], value=0, description="example")
    status = widgets.Label(value="")
    fig = go.FigureWidget(figure_fn(example_w.value, step_w.value))

    def redraw(_change: object = None) -> None:
        copy_figure(fig, figure_fn(example_w.value, step_w.value))

    def on_knob(_change: object = None) -> None:
        status.value = "recomputing..."
        try:
            n = recompute(**{name: w.value for name, w in knobs.items()})
        except Exception as exc:  # shown next to the controls: a widget callback has no output cell
            status.value = f"error: {type(exc).__name__}: {exc}"
            return
        step_w.max = max(0, int(n))
        step_w.value = min(step_w.value, step_w.max)
        redraw()
        status.value = ""

    step_w.observe(redraw, names="value")
    example_w.observe(redraw, names="value")
    for w in knobs.values():
        w.observe(on_knob, names="value")
    rows = [widgets.HBox([example_w, step_w])]
    if knobs:
        rows.append(widgets.HBox(list(knobs.values())))
    box = widgets.VBox([*rows, status, fig])
    return Explorer(box, fig, step_w, example_w, knobs, status, redraw)


def show_explorer(
    build: Callable[[], Explorer],
    *,
    interactive: bool,
    static: go.Figure | Sequence[go.Figure] | None = None,
) -> Explorer | None:
    """Display ``static`` figure(s), then (if ``interactive``) the explorer ``build()`` returns.

    Returns the explorer, or None when not interactive or when ipywidgets / anywidget are missing
    (a note says so; the static figures stay).
    """
    figures = [] if static is None else [static] if isinstance(static, go.Figure) else list(static)
    for f in figures:
        ipd.display(f)
    if not interactive:
        return None
    try:
        explorer = build()
    except ImportError as exc:
        note = f"*Interactive explorer unavailable ({exc}); the static figures above show the result.*"
        ipd.display(ipd.Markdown(note))
        return None
    ipd.display(explorer.widget)
    return explorer


# ------------------------------------------------------------------------------ the two explorers


def lm_explorer(
    initial: Any,  # LMTrajectories
    compute: Callable[[float, int], Any],  # (eta, lm_steps) -> LMTrajectories
    *,
    eta_max: float = 0.25,
    steps_max: int = 20,
) -> Explorer:
    """Explorer over likelihood-maximization trajectories (notebook 02).

    'example' picks the image, 'step' the LM iterate; the 'eta' and 'LM steps' knobs rerun LM on
    every image with ``compute`` and redraw.
    """
    state = {"lm": initial}
    cfg = initial.config
    knobs = {
        "eta": widgets.FloatSlider(
            value=cfg.eta,
            min=0.0,
            max=max(eta_max, cfg.eta),
            step=1 / 255,
            readout_format=".4f",
            description="eta",
            continuous_update=False,
        ),
        "lm_steps": widgets.IntSlider(
            value=cfg.steps, min=0, max=max(steps_max, cfg.steps), description="LM steps", continuous_update=False
        ),
    }

    def recompute(eta: float, lm_steps: int) -> int:
        state["lm"] = compute(float(eta), int(lm_steps))
        return state["lm"].steps

    return step_explorer(
        lambda i, k: lm_step_figure(state["lm"], i, k),
        examples=initial.names,
        n_steps=initial.steps,
        knobs=knobs,
        recompute=recompute,
    )


def attack_explorer(trajs: Mapping[str, Any], names: Sequence[str] | None = None) -> Explorer:
    """Explorer over attack trajectories of several models (notebook 03): 'step' = attack query, 'example' = image."""
    first = next(iter(trajs.values()))
    n = first.x.shape[0]
    names = list(names) if names is not None else [f"image {i} (label {int(first.labels[i])})" for i in range(n)]
    longest = max(t.queries for t in trajs.values()) - 1
    return step_explorer(lambda i, k: attack_step_figure(trajs, i, k), examples=names, n_steps=longest)


def level_explorer(views: Sequence[Any], rows: Sequence[Any], labels: Sequence[int]) -> Any:
    """Explorer over the noise grid's smallest level (notebook 01): a 'smallest level' slider over the
    ``views`` (rdc_lib.experiments.levels.LevelView, precomputed, so moving it only redraws) and an 'example' dropdown
    over the images; the figure is :func:`rdc_lib.viz.levels.level_figure`. Returns the ipywidgets box."""
    if not views:
        raise ValueError("views must hold at least one LevelView")
    level_w = widgets.SelectionSlider(
        options=[(f"{v.sigma_min:g}", i) for i, v in enumerate(views)],
        value=0,
        description="smallest level",
        continuous_update=False,
        style={"description_width": "initial"},
    )
    example_w = widgets.Dropdown(
        options=[(f"image {i} (label {int(y)})", i) for i, y in enumerate(labels)], value=0, description="example"
    )

    def figure() -> go.Figure:
        e = example_w.value
        return level_figure(views[level_w.value], rows, e, label=int(labels[e]))

    fig = go.FigureWidget(figure())

    def redraw(_change: object = None) -> None:
        new = figure()
        copy_figure(fig, new)
        with fig.batch_update():  # the current-level marker (a shape) and the margin panel's range move too
            fig.layout.shapes = new.layout.shapes
            fig.layout.yaxis3.range = new.layout.yaxis3.range

    level_w.observe(redraw, names="value")
    example_w.observe(redraw, names="value")
    return widgets.VBox([widgets.HBox([example_w, level_w]), fig])
