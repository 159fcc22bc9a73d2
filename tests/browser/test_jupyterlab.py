"""The JupyterLab experience in a real browser: headless Chromium opens each explorer notebook,
runs all cells, moves the 'step' slider and picks another 'example', and checks that the plotly
FigureWidget redrew, that no cell failed, that the widgets rendered, and that the browser console
stayed clean. Screenshots before/after the interaction go to ``artifacts/browser/``.

Add a notebook with one line in ``CASES``. The convention the defaults expect: the explorer's
controls are ipywidgets with ``description`` 'step' (IntSlider) and 'example' (Dropdown or
IntSlider), and the figure they drive is a ``plotly.graph_objects.FigureWidget`` (the first plotly
div that is a widget view; static ``go.Figure`` outputs, drawn by plotly's mime renderer, are
ignored). "Redrew" means the traces (``data``: z, x, y, ...) of that div changed; a layout-only
change (title, shapes) does not count.

Run: ``pytest -m browser tests/browser -rs`` (needs ``scripts/install_browser.sh``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .conftest import LabServer

pytestmark = pytest.mark.browser

# The FigureWidget's plotly div; a static go.Figure output is also a .js-plotly-plot, rendered by the
# plotly mime renderer (class jp-RenderedPlotly), so it is excluded.
FIGURE_WIDGET = ".jp-OutputArea-output .js-plotly-plot:not(.jp-RenderedPlotly)"


def control(label: str) -> str:
    """Playwright selector of the ipywidgets control (slider or dropdown) whose description is ``label``."""
    has_label = f':has(> label.widget-label:text-is("{label}"))'
    return f".widget-slider{has_label}, .widget-dropdown{has_label}"


@dataclass(frozen=True)
class ExplorerCase:
    """One notebook to drive. Selectors are Playwright selectors; times in seconds."""

    notebook: str  # path relative to the repository root
    step: str = control("step")  # IntSlider, moved to its other end with End (or Home)
    example: str = control("example")  # Dropdown (picks another option) or IntSlider (End/Home)
    figure: str = FIGURE_WIDGET  # the FigureWidget's plotly div
    run_timeout_s: float = 150.0  # kernel start + run all cells

    @property
    def id(self) -> str:
        return Path(self.notebook).stem


CASES = [
    ExplorerCase("tests/browser/fixtures/explorer.ipynb"),
    ExplorerCase("notebooks/02_likelihood_maximization.ipynb", run_timeout_s=420.0),
    ExplorerCase("notebooks/03_attack_visualization.ipynb", run_timeout_s=420.0),
]

KERNEL_TIMEOUT_MS = 120_000
RENDER_TIMEOUT_MS = 90_000
REDRAW_TIMEOUT_MS = 60_000
WIDGET_PROBLEMS = ("Loading widget...", "Error displaying widget", "IntSlider(", "FigureWidget(", "Dropdown(")
# Console messages that say nothing about our notebooks (none needed so far).
BENIGN_CONSOLE = (re.compile(r"favicon\.ico"),)

# --- JavaScript run in the page (window.jupyterapp is exposed by --LabApp.expose_app_in_browser)

JS_KERNEL_READY = """(path) => {
  const app = window.jupyterapp;
  const panel = app && app.shell && app.shell.currentWidget;
  if (!panel || !panel.context || panel.context.path !== path || !panel.sessionContext) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

JS_RUN_ALL = """() => {
  window.__rdcRunAll = {done: false, ok: null, error: null};
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    (ok) => { window.__rdcRunAll = {done: true, ok: ok, error: null}; },
    (err) => { window.__rdcRunAll = {done: true, ok: false, error: String(err)}; });
}"""

# Finished = the run-all promise resolved, the kernel is idle, and every code cell has run
# (galata's waitForRun criterion); a failed cell stops run-all, so "done" alone also ends the wait.
JS_RUN_FINISHED = """() => {
  const state = window.__rdcRunAll;
  if (!state || !state.done) return false;
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.status === 'idle';
}"""

JS_CELL_REPORT = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.model.cells;
  const report = {unrun: [], errors: [], stderr: []};
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    if (cell.sharedModel.getSource().trim() && cell.executionCount == null) report.unrun.push(i);
    for (const out of cell.outputs.toJSON()) {
      if (out.output_type === 'error') report.errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
      const text = Array.isArray(out.text) ? out.text.join('') : (out.text || '');
      if (out.output_type === 'stream' && out.name === 'stderr' && text.includes('Traceback'))
        report.stderr.push(`cell ${i}: ${text.slice(0, 500)}`);
    }
  }
  return report;
}"""

# Output areas (not the code: the source mentions IntSlider( too) free of the problem texts.
JS_OUTPUT_PROBLEMS = """(problems) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const text = Array.from(panel.node.querySelectorAll('.jp-OutputArea-output'))
    .map((el) => el.innerText || '').join('\\n');
  return problems.filter((p) => text.includes(p));
}"""

# A JSON fingerprint of the plotly div's traces (typed arrays as lists, plotly's private '_' keys
# dropped); the layout is left out so that a changed title alone does not count as a redraw.
JS_FIGURE_STATE = """(el) => {
  const clean = (key, value) => {
    if (typeof key === 'string' && key.startsWith('_')) return undefined;
    if (ArrayBuffer.isView(value)) return Array.from(value);
    return value;
  };
  return JSON.stringify(el.data || null, clean);
}"""

JS_FIGURE_CHANGED = f"([el, before]) => ({JS_FIGURE_STATE})(el) !== before"


class _Clock:
    """Seconds spent in each phase, printed with the test's output."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.laps: list[str] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps.append(f"{name} {now - self.last:.1f}")
        self.last = now

    def __str__(self) -> str:
        return ", ".join(self.laps)


def _wait(page, js: str, arg=None, timeout_ms: int = RENDER_TIMEOUT_MS, what: str = "") -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(js, arg=arg, timeout=timeout_ms, polling=250)
    except PlaywrightTimeout:
        raise AssertionError(f"timed out after {timeout_ms / 1000:.0f} s waiting for {what}") from None


def _wait_widgets_clean(page) -> None:
    """Wait until no output shows a widget placeholder, widget error or raw widget repr."""
    js = f"(problems) => ({JS_OUTPUT_PROBLEMS})(problems).length === 0"
    try:
        _wait(page, js, arg=list(WIDGET_PROBLEMS), what="widget outputs without problem texts")
    except AssertionError:
        found = page.evaluate(JS_OUTPUT_PROBLEMS, list(WIDGET_PROBLEMS))
        raise AssertionError(f"outputs still show {found} after {RENDER_TIMEOUT_MS / 1000:.0f} s") from None


def _figure_state(figure) -> str:
    return figure.evaluate(JS_FIGURE_STATE)


def _wait_figure_change(page, figure, before: str, what: str) -> str:
    handle = figure.element_handle()
    _wait(
        page,
        JS_FIGURE_CHANGED,
        arg=[handle, before],
        timeout_ms=REDRAW_TIMEOUT_MS,
        what=f"the FigureWidget to redraw after {what}",
    )
    return _figure_state(figure)


def _move_slider(slider) -> None:
    """Focus the slider handle and jump to the other end: End (Home when already at the maximum)."""
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    now, top = (float(handle.get_attribute(a) or "nan") for a in ("aria-valuenow", "aria-valuemax"))
    handle.press("Home" if now >= top else "End")


def _pick_other_example(control_locator) -> None:
    select = control_locator.locator("select")
    if select.count():
        values = select.evaluate("s => Array.from(s.options).map(o => o.value)")
        current = select.input_value()
        others = [v for v in values if v != current]
        assert others, f"the 'example' dropdown offers a single option: {values}"
        select.select_option(others[-1])
    else:
        _move_slider(control_locator)


def test_chromium_smoke(chromium, artifacts_dir) -> None:
    """Launch-and-screenshot of about:blank: the browser half works on this machine."""
    page = chromium.new_page(viewport={"width": 640, "height": 360})
    try:
        page.goto("about:blank")
        page.set_content("<h1 id='hello'>rdc browser smoke test</h1>")
        assert page.locator("#hello").inner_text() == "rdc browser smoke test"
        shot = artifacts_dir / "smoke_about_blank.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 1000
    finally:
        page.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_explorer_in_jupyterlab(
    case: ExplorerCase, chromium, lab_server: LabServer, artifacts_dir, browser_viewport
) -> None:
    from playwright.sync_api import expect

    path = lab_server.root.stage(case.notebook)
    context = chromium.new_context(viewport=browser_viewport)
    page = context.new_page()
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    shots = {name: artifacts_dir / f"{case.id}_{name}.png" for name in ("before", "after", "failure")}
    for shot in shots.values():
        shot.unlink(missing_ok=True)
    clock = _Clock()
    try:
        page.goto(lab_server.lab_url(path), wait_until="domcontentloaded", timeout=RENDER_TIMEOUT_MS)
        _wait(page, "() => !!(window.jupyterapp && window.jupyterapp.started)", what="window.jupyterapp")
        page.evaluate("() => window.jupyterapp.started")
        clock.lap("lab loaded")
        _wait(page, JS_KERNEL_READY, arg=path, timeout_ms=KERNEL_TIMEOUT_MS, what=f"a connected idle kernel for {path}")
        clock.lap("kernel idle")

        mode = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.notebookConfig.windowingMode")
        assert mode == "none", f"scripts/lab_settings/overrides.json not applied: windowingMode {mode!r}"

        page.evaluate(JS_RUN_ALL)
        _wait(
            page,
            JS_RUN_FINISHED,
            timeout_ms=int(case.run_timeout_s * 1000),
            what=f"notebook:run-all-cells to finish ({path})",
        )
        clock.lap("run all")
        run = page.evaluate("() => window.__rdcRunAll")
        report = page.evaluate(JS_CELL_REPORT)
        assert not report["errors"] and not report["stderr"], f"cells failed: {report}"
        assert run["ok"] and not report["unrun"], f"run-all did not complete: {run}, {report}"

        notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first
        tracebacks = notebook.locator(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]', has_text="Traceback"
        )
        expect(tracebacks).to_have_count(0, timeout=5_000)

        step = page.locator(case.step).first
        example = page.locator(case.example).first
        figure = page.locator(case.figure).first
        expect(page.locator(".widget-slider").first).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        expect(step).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        expect(example).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        expect(figure).to_be_visible(timeout=RENDER_TIMEOUT_MS)
        _wait_widgets_clean(page)
        _wait(
            page,
            "(el) => Array.isArray(el.data) && el.data.length > 0",
            arg=figure.element_handle(),
            what="the FigureWidget to draw its traces",
        )

        clock.lap("widgets rendered")
        page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # more room for the pictures
        figure.scroll_into_view_if_needed()
        page.wait_for_timeout(500)  # let plotly finish its transition before the picture
        state0 = _figure_state(figure)
        page.screenshot(path=str(shots["before"]))

        _move_slider(step)
        state1 = _wait_figure_change(page, figure, state0, "moving the 'step' slider to its other end")
        _pick_other_example(example)
        _wait_figure_change(page, figure, state1, "picking another 'example'")

        clock.lap("two redraws")
        figure.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots["after"]))

        report = page.evaluate(JS_CELL_REPORT)
        assert not report["errors"] and not report["stderr"], f"cells failed after the interaction: {report}"
        _wait_widgets_clean(page)
        problems = [m for m in console if not any(p.search(m) for p in BENIGN_CONSOLE)]
        assert not problems, "browser console errors:\n" + "\n".join(problems)
    except BaseException:
        try:
            page.screenshot(path=str(shots["failure"]))
        except Exception:  # the page may be gone
            pass
        try:  # a blocking dialog (e.g. the kernel picker for an unknown kernelspec) explains most hangs
            dialogs = page.locator(".jp-Dialog").all_inner_texts()
        except Exception:
            dialogs = []
        print(f"--- open dialogs ---\n{dialogs}")
        print(f"--- console ({len(console)} errors) ---\n" + "\n".join(console))
        print(f"--- jupyter lab log tail ---\n{lab_server.log_tail()}")
        raise
    finally:
        print(f"--- timings (s) --- {clock}")
        context.close()
        lab_server.shutdown_kernels()
