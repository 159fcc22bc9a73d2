"""Figure builders (rdc_lib.viz), the measurements behind them (rdc_lib.experiments.analysis, .timing,
.trajectories) and the explorers (rdc_lib.viz.widgets), on tiny inputs and tiny random models."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from torch import nn

from rdc_lib import viz
from rdc_lib.attacks import build_attack
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion.lm import LMConfig
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.evaluation import wilson
from rdc_lib.evaluation.grad import FiniteDifferenceCheck, GradientCosine, suggest_eot

from .conftest import tiny_denoiser

K = 10


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Linear(nn.Module):
    """A fixed linear classifier on 8x8 images (fast, differentiable, deterministic)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.fc = nn.Linear(64, K)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(K, 64, generator=_gen(seed)))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=_gen(seed))


def _types(fig: go.Figure) -> list[str]:
    return [t.type for t in fig.data]


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


@pytest.fixture(scope="module")
def lm_small():
    den = tiny_denoiser("multi")
    dc = DiffusionClassifier(den, make_grid(4), noise_mode="fixed")
    x, y = _images(3), torch.tensor([0, 1, 2])
    return viz.lm_trajectories(den, dc, x, y, LMConfig(steps=2), seed=0), den, dc, x, y


@pytest.fixture(scope="module")
def attack_trajs():
    x = _images(2, seed=1)
    out = {}
    for name, seed in (("A", 0), ("B", 1)):
        model = Linear(seed)
        y_model = model(x).argmax(1)  # attack from correctly classified points
        out[name] = viz.record_attack(model, x, y_model, lambda m: build_attack("pgd", m, eps=0.3, steps=4, seed=0))
    return out


# ------------------------------------------------------------------------------------ builders


def test_image_trace_grey_rgb_and_diverging():
    img = torch.rand(1, 8, 8)
    h = viz.image_trace(img)
    assert h.type == "heatmap" and h.zmin == 0 and h.zmax == 1
    assert (torch.tensor(h.z) == img[0].flip(0)).all()  # rows flipped: the picture is upright
    d = viz.image_trace(img - 0.5, diverging=True)
    assert d.type == "heatmap" and d.zmid == 0 and d.zmax == pytest.approx(float((img - 0.5).abs().max()))
    assert viz.image_trace(torch.rand(3, 8, 8)).type == "image"
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        viz.image_trace(torch.rand(2, 8, 8))


def test_image_grid_one_trace_per_image():
    fig = viz.image_grid_figure(torch.rand(5, 1, 8, 8), [f"t{i}" for i in range(5)], cols=3)
    assert isinstance(fig, go.Figure) and _types(fig) == ["heatmap"] * 5
    assert [a.text for a in fig.layout.annotations][:5] == [f"t{i}" for i in range(5)]
    with pytest.raises(ValueError, match="N, C, H, W"):
        viz.image_grid_figure(torch.rand(1, 8, 8))


def test_elbo_figures():
    sig, terms = make_grid(6).sigmas, torch.rand(K, 6)
    fig = viz.elbo_terms_figure(sig, terms, label=2)
    assert _types(fig) == ["scatter"] * (2 * K) and fig.data[4].line.width > fig.data[0].line.width
    rel = np.stack([np.asarray(tr.y) for tr in fig.data[1::2]])  # right panel: relative to the class mean
    assert np.allclose(rel, (terms / terms.mean(0, keepdim=True) - 1).numpy(), atol=1e-6)
    assert np.allclose(rel.mean(0), 0, atol=1e-6)
    with pytest.raises(ValueError, match="K, T"):
        viz.elbo_terms_figure(sig, torch.rand(K, 5))
    bars = viz.elbo_sum_figure(terms.sum(-1), label=2)
    assert _types(bars) == ["bar"] and len(bars.data[0].y) == K


def test_posterior_and_spread_and_cost():
    p = torch.rand(K).softmax(0)
    fig = viz.posterior_figure({"a": p, "b": p.flip(0)}, label=1)
    assert _types(fig) == ["bar", "bar"] and [t.name for t in fig.data] == ["a", "b"]
    spread = viz.NoiseSpread([2, 4], {"x": [0.2, 0.1], "y": [0.1, 0.05]}, n_draws=3, n_images=1)
    fig = viz.noise_spread_figure(spread)
    assert _types(fig) == ["scatter", "scatter"] and list(fig.data[0].x) == [2, 4]
    fig = viz.cost_figure(["single", "multi"], [320, 32], [1.0, 0.2])
    assert _types(fig) == ["bar", "bar"] and list(fig.data[0].y) == [320, 32]


def test_lm_figures(lm_small):
    lm = lm_small[0]
    fig = viz.lm_curves_figure(lm)
    assert _types(fig) == ["scatter"] * 9  # 3 panels x 3 images
    paired = viz.lm_curves_figure(lm, colors=[0, 1, 0], dashed=[False, False, True])
    assert paired.data[0].line.color == paired.data[6].line.color and paired.data[6].line.dash == "dash"
    step = viz.lm_step_figure(lm, 1, 2)
    assert _types(step) == ["heatmap", "heatmap", "bar", "scatter"]
    assert (torch.tensor(step.data[0].z) == lm.images[2, 1, 0].flip(0)).all()
    assert list(step.data[2].y) == pytest.approx(lm.probs[2, 1].tolist())
    # the explorer relies on the same trace kinds at every step, and on the data changing with it
    other = viz.lm_step_figure(lm, 1, 0)
    assert _types(other) == _types(step) and not _same(other.data[1].z, step.data[1].z)
    fig = viz.posterior_change_figure(lm.probs[0], lm.probs[-1], lm.labels, lm.names, pixels=lm.pixels)
    assert _types(fig) == ["bar", "bar"] and len(fig.data[0].y) == 3
    assert "d = 64 pixels" in fig.layout.title.text  # the posterior's scale is named on every posterior figure
    assert (
        "d = 64" in step.layout.annotations[2].text and "d = 64" in viz.lm_curves_figure(lm).layout.annotations[2].text
    )


def test_attack_figures(attack_trajs):
    fig = viz.attack_step_figure(attack_trajs, 0, 2)
    assert _types(fig) == ["heatmap", "heatmap", "scatter", "scatter", "scatter", "scatter"]
    again = viz.attack_step_figure(attack_trajs, 1, 0)
    assert _types(again) == _types(fig)
    assert not np.asarray(again.data[0].z).any()  # query 0 is the clean point: no perturbation
    fig = viz.logits_over_iterations_figure(attack_trajs["A"], 0)
    assert _types(fig) == ["scatter"] * K and len(fig.data[0].x) == int(attack_trajs["A"].length[0])


def test_loss_surface_figures():
    s = viz.LossSurface(
        torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3), torch.rand(3, 3), torch.ones(3, 3, dtype=torch.bool)
    )
    fig = viz.loss_surface_figure({"m1": s, "m2": s})
    assert _types(fig) == ["heatmap", "contour", "heatmap", "contour"]
    assert _types(viz.loss_surface_3d_figure(s)) == ["surface"]


def test_check_figures():
    fd = FiniteDifferenceCheck(True, torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), 0.01, 1e-3, 0.05)
    fig = viz.finite_difference_figure({"m": fd, "n": fd})
    assert _types(fig) == ["scatter"] * 4 and len(fig.data[0].x) == 6  # per model: points + diagonal
    assert np.allclose(fig.data[0].x, fd.finite_diff.reshape(-1))
    assert np.allclose(fig.data[0].y, fd.autograd.reshape(-1))
    cos = GradientCosine(torch.tensor([0.5, 0.7]), torch.rand(2, 1), 0.6, 2)
    fig = viz.gradient_cosine_figure({"m": cos}, {"m": suggest_eot(cos)})
    assert _types(fig) == ["bar"] and "EOT" in fig.data[0].text[0]


def test_accuracy_vs_eps_and_table():
    def row(defense, eps, robust, trusted=True):
        return {
            "defense": defense,
            "attack": "pgd",
            "eps": eps,
            "robust_acc": robust / 8,
            "clean_acc": 1.0,
            "robust": wilson(robust, 8).as_dict(),
            "clean": wilson(8, 8).as_dict(),
            "trusted": trusted,
        }

    rows = [row("dc", 0.1, 2, trusted=False), row("dc", 0.05, 5), row("cnn", 0.05, 3)]
    fig = viz.accuracy_vs_eps_figure(rows)
    assert _types(fig) == ["scatter", "scatter"]
    dc = fig.data[0]
    assert list(dc.customdata) == [0.0, 0.05, 0.1] and list(dc.y) == [1.0, 5 / 8, 2 / 8]  # sorted, clean first
    assert np.allclose(np.asarray(dc.x) - np.asarray(dc.customdata), dc.x[0])  # one sideways shift per line
    assert abs(dc.x[0]) < 0.01 and dc.x[0] != fig.data[1].x[0]
    assert list(dc.marker.symbol) == ["circle", "circle", "x-open"]
    assert dc.error_y.array[1] == pytest.approx(wilson(5, 8).high - 5 / 8)
    table = viz.table_figure(["a", "b"], [[1, 2], [3, 4]], fill=["#fff", "#f00"])
    assert _types(table) == ["table"] and [list(c) for c in table.data[0].cells.values] == [[1, 3], [2, 4]]


# --------------------------------------------------------------------------------- measurements


def test_logit_difference_std_matches_a_direct_computation():
    logits = torch.randn(6, 2, 4, generator=_gen())
    y = torch.tensor([1, 3])
    got = viz.logit_difference_std(logits, y)
    for b in range(2):
        others = [j for j in range(4) if j != int(y[b])]
        want = sum(float((logits[:, b, y[b]] - logits[:, b, j]).std()) for j in others) / len(others)
        assert got[b].item() == pytest.approx(want, rel=1e-5)
    # a shift common to every class does not change any difference
    shifted = logits + torch.randn(6, 2, 1, generator=_gen(1))
    assert torch.allclose(viz.logit_difference_std(shifted, y), got, atol=1e-5)
    with pytest.raises(ValueError, match="D >= 2"):
        viz.logit_difference_std(logits[:1], y)


def test_shared_noise_reduces_the_spread():
    den = tiny_denoiser("single")
    x, y = _images(2), torch.tensor([0, 1])
    spread = viz.logit_spread_vs_timesteps({"indep": (den, False), "shared": (den, True)}, x, y, [2, 4], 6, seed=0)
    assert spread.timesteps_list == [2, 4] and set(spread.std) == {"indep", "shared"}
    assert all(s < i for s, i in zip(spread.std["shared"], spread.std["indep"]))
    again = viz.logit_spread_vs_timesteps({"indep": (den, False)}, x, y, [2], 6, seed=0)
    assert again.std["indep"][0] == spread.std["indep"][0]  # seeded


def test_lm_trajectories_agree_with_likelihood_maximization(lm_small):
    from rdc_lib.diffusion.lm import draw_lm_noise, likelihood_maximization

    lm, den, dc, x, y = lm_small
    assert lm.images.shape == (3, 3, 1, 8, 8) and lm.lm_loss.shape == (2, 3) and lm.bound.shape == (3, 3)
    assert lm.probs.shape == (3, 3, K) and torch.allclose(lm.probs.sum(-1), torch.ones(3, 3))
    assert torch.equal(lm.images[0], x)
    noise = draw_lm_noise(2, tuple(x.shape), generator=_gen(0))
    ref = likelihood_maximization(den, x, noise=noise, config=LMConfig(steps=2))
    assert torch.allclose(lm.images[-1], ref.x) and torch.allclose(lm.lm_loss, ref.losses)
    with torch.no_grad():
        assert torch.allclose(lm.probs[-1], (dc(ref.x) * 64).softmax(-1), atol=1e-6)  # Bayes: d = 64 pixels
    assert lm.pixels == 64
    assert (lm.images[-1] - x).abs().max() <= LMConfig().eta + 1e-6


def test_record_attack_keeps_every_query(attack_trajs):
    t = attack_trajs["A"]
    assert t.x.shape[:2] == t.logits.shape[:2] and t.x.shape[0] == 2
    model = Linear(0)
    x = _images(2, seed=1)
    assert torch.equal(t.x[:, 0], x)  # query 0: the clean check
    with torch.no_grad():
        for b in range(2):
            n = int(t.length[b])
            assert torch.allclose(t.logits[b, :n], model(t.x[b, :n]), atol=1e-5)
            assert (t.x[b, :n] - x[b]).abs().max() <= 0.3 + 1e-6
    m = t.margins()
    assert m.shape == t.x.shape[:2] and (m[:, 0] > 0).all()
    # a broken image's last query is misclassified, and the attack's answer is that point
    for b in range(2):
        if t.success[b]:
            assert m[b, int(t.length[b]) - 1] < 0
            assert torch.allclose(t.x_adv[b], t.x[b, int(t.length[b]) - 1])


def test_query_recorder_passes_through():
    model = Linear()
    rec = viz.QueryRecorder(model)
    x = _images(3)
    assert torch.equal(rec(x), model(x))
    assert len(rec.records) == 1 and torch.equal(rec.records[0][0], x)
    rec.clear()
    assert rec.records == []


def test_loss_surface_of_a_linear_model():
    model = Linear()
    x = torch.full((1, 1, 8, 8), 0.5)
    y = int(model(x).argmax())
    s = viz.loss_surface(model, x, y, radius=0.2, points=5, generator=_gen())
    assert s.loss.shape == (5, 5) and s.correct.shape == (5, 5) and s.a.shape == (5,)
    # along the gradient-sign direction (no clipping here) the loss rises monotonically
    mid = s.loss[:, 2]
    assert all(mid[i] < mid[i + 1] for i in range(4))
    assert bool(s.correct[2, 2])
    with pytest.raises(ValueError, match="one image"):
        viz.loss_surface(model, _images(2), y, radius=0.1, points=3)


def test_time_per_call_repeats_small_calls_and_restores_threads():
    import time

    threads = torch.get_num_threads()
    seen = []
    timing = viz.time_per_call(lambda: (seen.append(torch.get_num_threads()), time.sleep(0.01)), min_seconds=0.05)
    assert set(seen) == {1} and torch.get_num_threads() == threads  # one thread while timing, restored after
    assert timing.calls >= 5 and 0.009 < timing.seconds < 0.05  # per call, not per round
    assert len(seen) == 1 + 2 * timing.calls  # warm-up, then two rounds of equal length
    with pytest.raises(ValueError, match="rounds must be >= 2"):
        viz.time_per_call(lambda: None, rounds=1)


def test_a_noisy_timing_is_flagged():
    import time

    calls = []

    def slows_down():  # the machine gets busy after the first round
        calls.append(1)
        time.sleep(0.01 if len(calls) <= 4 else 0.04)

    timing = viz.time_per_call(slows_down, min_seconds=0.02)
    assert timing.spread > 1 and not timing.trusted
    cmp = viz.CostComparison(["a", "b"], [10, 1], [timing, viz.CallTiming(0.01, 0.0, 3, 2)], 2, 1)
    assert not cmp.trusted and "TOO NOISY TO TRUST" in cmp.note()
    ok = viz.CostComparison(
        ["a", "b"], [10, 1], [viz.CallTiming(0.1, 0.1, 1, 2), viz.CallTiming(0.01, 0.0, 3, 2)], 2, 1
    )
    assert ok.trusted and "TOO NOISY" not in ok.note() and ok.speedup() == pytest.approx(10)


def test_compare_cost_counts_passes_and_times_each_classifier():
    grid = make_grid(4)
    dcs = {
        "single": DiffusionClassifier(tiny_denoiser("single"), grid, noise_mode="fixed"),
        "multi": DiffusionClassifier(tiny_denoiser("multi"), grid, noise_mode="fixed"),
    }
    cost = viz.compare_cost(dcs, _images(3), min_seconds=0.01)
    assert cost.names == ["single", "multi"] and cost.images == 3
    assert cost.passes == [3 * 4 * K, 3 * 4] and all(s > 0 for s in cost.seconds)


# -------------------------------------------------------------------------------------- widgets


def test_step_explorer_redraws_on_every_control(lm_small):
    from rdc_lib.viz.widgets import lm_explorer, step_explorer

    lm, den, dc, x, y = lm_small
    ex = step_explorer(lambda i, k: viz.lm_step_figure(lm, i, k), examples=lm.names, n_steps=lm.steps)
    assert ex.step.description == "step" and ex.example.description == "example"
    assert isinstance(ex.figure, go.FigureWidget) and ex.step.max == 2
    z0 = ex.figure.data[0].z
    ex.step.value = 2
    assert not _same(ex.figure.data[0].z, z0)
    z1 = ex.figure.data[0].z
    ex.example.value = 2
    assert not _same(ex.figure.data[0].z, z1)
    assert np.allclose(np.asarray(ex.figure.data[0].z), lm.images[2, 2, 0].flip(0).numpy())

    calls = []

    def compute(eta, steps):
        calls.append((eta, steps))
        return viz.lm_trajectories(den, dc, x, y, LMConfig(steps=steps, eta=eta), seed=0)

    lm_ex = lm_explorer(lm, compute)
    lm_ex.knobs["lm_steps"].value = 1
    assert calls == [(pytest.approx(lm.config.eta), 1)] and lm_ex.step.max == 1
    assert lm_ex.status.value == ""


def test_attack_explorer_and_show_fallback(attack_trajs, monkeypatch):
    import rdc_lib.viz.widgets as widgets_mod

    ex = widgets_mod.attack_explorer(attack_trajs)
    longest = max(t.queries for t in attack_trajs.values())
    assert ex.step.max == longest - 1 and len(ex.example.options) == 2
    before = ex.figure.data[0].z
    ex.step.value = ex.step.max
    assert not _same(ex.figure.data[0].z, before)

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    static = viz.attack_step_figure(attack_trajs, 0, 0)
    assert widgets_mod.show_explorer(lambda: ex, interactive=False, static=static) is None
    assert shown == [static]
    shown.clear()

    def missing():
        raise ImportError("Please install anywidget to use the FigureWidget class")

    assert widgets_mod.show_explorer(missing, interactive=True, static=[static, static]) is None
    assert shown[:2] == [static, static] and "anywidget" in shown[2].data
    shown.clear()
    assert widgets_mod.show_explorer(lambda: ex, interactive=True) is ex and shown == [ex.widget]


def test_explorer_validates_its_arguments():
    from rdc_lib.viz.widgets import step_explorer

    with pytest.raises(ValueError, match="at least one example"):
        step_explorer(lambda i, k: go.Figure(), examples=[], n_steps=1)
    with pytest.raises(ValueError, match="recompute"):
        import ipywidgets

        step_explorer(lambda i, k: go.Figure(), examples=["a"], n_steps=1, knobs={"x": ipywidgets.IntSlider()})
