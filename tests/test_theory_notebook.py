"""Notebook 05 (the optimal diffusion classifier) and the rdc_lib.experiments.theory helpers it stands on.

The notebook is executed with papermill with tiny parameters into a temporary folder; its results
file is checked, and a bad parameter must fail in the validation cell right after the parameters.
The helpers are tested on small random data (no checkpoints) against brute force and certificates.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import nbformat
import pytest
import torch

from rdc_lib.attacks import NeighbourAttack, transfer_pgd
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion.schedules import make_grid, restrict_grid
from rdc_lib.evaluation.protocol import robustness_protocol
from rdc_lib.experiments.nearest_neighbour import nn_certified_radius
from rdc_lib.experiments.theory import (
    dominant_training_image,
    margin_by_sigma,
    smoothed_surrogate,
)
from rdc_lib.models.optimal import OptimalDenoiser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_theory_optimal_classifier.ipynb"
PARAMS = (
    "n_images",
    "timesteps",
    "eps",
    "norm",
    "attack_steps",
    "square_queries",
    "seed",
    "device",
    "checkpoint",
    "cnn_checkpoint",
    "result_dir",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    """30 training and 6 held-out 1x4x4 images (float64): 3 class prototypes plus noise."""
    g = torch.Generator().manual_seed(0)
    protos = 0.2 + 0.6 * torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.arange(36) % 3
    x = (protos[y] + 0.2 * torch.randn(36, 1, 4, 4, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x[:30], y[:30], x[30:], y[30:]


class OneNN(torch.nn.Module):
    """Exact 1-NN rule as a model: logit_k = -min distance to a class-k training image."""

    def __init__(self, train_x, train_y, k=3):
        super().__init__()
        self.train_x, self.train_y, self.k = train_x, train_y, k

    def forward(self, x):
        d = torch.cdist(x.flatten(1), self.train_x.flatten(1).to(x.dtype))
        return torch.stack([-d[:, self.train_y == c].amin(1) for c in range(self.k)], dim=1)


# ---------------------------------------------------------------------------------------- notebook file
def _cells():
    return nbformat.read(NOTEBOOK, as_version=4).cells


def test_notebook_is_stored_clean_with_python3_kernel():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is None and c.outputs == [] for c in code)
    assert sum(c.cell_type == "markdown" for c in nb.cells) > len(code)  # more prose than code


def test_parameters_cell_is_annotated_literals_followed_by_validation():
    cells = _cells()
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    i = tagged[0]
    lines = [ln for ln in cells[i].source.splitlines() if ln.strip()]
    names = [ln.split(":")[0] for ln in lines]
    assert tuple(names) == PARAMS
    assert all(": " in ln and " = " in ln and "#" in ln for ln in lines)  # name: type = literal  # help
    assert 'checkpoint: str = ""' in cells[i].source  # '' = the shipped multi-head default (rdc_lib.core.choices)
    assert 'result_dir: str = ""' in cells[i].source  # a plain run writes no results.json
    following = next(c for c in cells[i + 1 :] if c.cell_type == "code")
    assert "validate_params(" in following.source
    assert all(f"{name}={name}" in following.source for name in PARAMS)  # every parameter is validated


def test_papermill_sees_every_parameter():
    import papermill as pm

    params = pm.inspect_notebook(str(NOTEBOOK))
    assert set(params) == set(PARAMS)
    assert params["n_images"]["inferred_type_name"] == "int"


# ---------------------------------------------------------------------------------------- notebook runs
def _execute(tmp_path: Path, **params):
    import papermill as pm

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return pm.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "out.ipynb"),
        parameters=params,
        cwd=str(NOTEBOOK.parent),
        kernel_name="python3",
        progress_bar=False,
        start_timeout=120,
    )


def test_notebook_runs_with_tiny_parameters_and_writes_results(tmp_path):
    start = time.perf_counter()
    _execute(tmp_path, n_images=8, timesteps=4, attack_steps=2, square_queries=10, result_dir=str(tmp_path / "res"))
    seconds = time.perf_counter() - start
    res = json.loads((tmp_path / "res" / "results.json").read_text())
    for model in ("optimal", "learned"):
        for split in ("test", "train"):
            for metric in ("clean", "robust"):
                value = res[f"{model}_{split}_{metric}"]
                assert 0.0 <= value <= 1.0
                acc = res["accuracies"][model][split][metric]
                assert acc["total"] == 8 and acc["correct"] == round(8 * value)
                assert acc["low"] <= acc["value"] <= acc["high"]
            assert res[f"{model}_{split}_robust"] <= res[f"{model}_{split}_clean"]
    assert res["params"]["n_images"] == 8 and res["params"]["timesteps"] == 4
    assert res["key_results"] == {k: res[k] for k in res["key_results"]} and len(res["key_results"]) == 8
    # D* memorises: it classifies the images it was built from correctly
    assert res["optimal_train_clean"] == 1.0
    assert set(res["nn_agreement"]) == {f"{m} DC / {s}" for m in ("optimal", "learned") for s in ("test", "train")}
    assert set(res["mean_gap"]) == {"test", "train"} and res["mean_gap"]["train"] >= 0.0
    assert len(res["gap"]["test"]["sigmas"]) == 12
    assert len(res["dominance_top_weight"]["train"]) == 4
    assert [r["metric"] for r in res["nn"]] == ["clean", "robust", "clean", "robust"]
    assert seconds < 90, f"notebook 05 took {seconds:.0f} s with tiny parameters"


def test_bad_parameter_fails_in_the_validation_cell(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        _execute(tmp_path, n_images=0, result_dir=str(tmp_path))
    err = info.value
    assert err.ename == "NotebookParameterError" and "n_images" in err.evalue  # a ValueError subclass
    assert "validate_params(" in err.source
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in out.cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(code) if "injected-parameters" in c.metadata.get("tags", []))
    assert "parameters" in code[injected - 1].metadata.get("tags", [])
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [injected + 1]  # the first code cell after the parameters
    assert all(c.execution_count is None for c in code[injected + 2 :])  # nothing after it ran


# ---------------------------------------------------------------------------------------- helpers
def test_dominant_training_image_matches_brute_force_softmax(toy):
    x_tr, y_tr, x_te, y_te = toy
    den = OptimalDenoiser(x_tr, y_tr)
    sigmas = torch.tensor([1e-3, 0.3, 2.0], dtype=torch.float64)
    noise = torch.randn(6, 3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 3, 1])  # 3 = null label: every training image
    dom = dominant_training_image(den, x_te, sigmas, labels, noise=noise)
    for b in range(6):
        pool = torch.arange(30) if labels[b] == 3 else (y_tr == labels[b]).nonzero().flatten()
        for t, s in enumerate(sigmas):
            noisy = (x_te[b] * 2 - 1 + s * noise[b, t]).flatten()
            logw = -((noisy - (x_tr[pool] * 2 - 1).flatten(1)) ** 2).sum(1) / (2 * s**2)
            w = torch.softmax(logw, 0)
            assert int(dom.top_index[b, t]) == int(pool[w.argmax()])
            assert math.isclose(float(dom.top_weight[b, t]), float(w.max()), rel_tol=1e-9)
            assert math.isclose(float(dom.effective_count[b, t]), float(1 / (w**2).sum()), rel_tol=1e-9)
    assert float(dom.top_weight[:, 0].min()) > 0.999  # hard nearest neighbour at small sigma


def test_dominant_image_of_a_training_image_at_small_sigma_is_itself(toy):
    x_tr, y_tr, _, _ = toy
    dom = dominant_training_image(
        OptimalDenoiser(x_tr, y_tr), x_tr[:5], torch.tensor([1e-4, 5.0]), y_tr[:5], torch.Generator().manual_seed(0)
    )
    assert dom.top_index[:, 0].tolist() == list(range(5)) and dom.nn_index.tolist() == list(range(5))
    assert dom.matches_nn[:, 0].all()
    assert float(dom.effective_count[:, 1].mean()) > 2  # large sigma: many images share the weight


def test_margin_by_sigma_levels_sum_to_the_logit_margin(toy):
    x_tr, y_tr, x_te, y_te = toy
    dc = DiffusionClassifier(OptimalDenoiser(x_tr, y_tr), make_grid(6), noise_mode="fixed", seed=3)
    x = x_te.float()
    out = margin_by_sigma(dc, x, y_te)
    with torch.no_grad():
        logits = dc(x)
    runner = logits.scatter(1, y_te[:, None], float("-inf")).argmax(1)
    rows = torch.arange(6)
    assert torch.equal(out.runner_up, runner)
    assert torch.allclose(out.margin, logits[rows, y_te] - logits[rows, runner], atol=1e-5)
    assert torch.allclose(out.per_level.sum(1), out.margin, atol=1e-4)
    assert out.mean_per_level.shape == (6,)


def test_restrict_grid_and_smoothed_surrogate(toy):
    x_tr, y_tr, _, _ = toy
    grid = make_grid(8)
    sub = restrict_grid(grid, 1.0)
    assert (sub.sigmas >= 1.0).all() and len(sub) == int((grid.sigmas >= 1.0).sum())
    assert torch.equal(sub.weights, grid.weights[grid.sigmas >= 1.0])
    with pytest.raises(ValueError, match="removes every level"):
        restrict_grid(grid, 10.0)
    dc = DiffusionClassifier(OptimalDenoiser(x_tr.float(), y_tr), grid, noise_mode="fixed", seed=5)
    sur = smoothed_surrogate(dc, 1.0)
    assert sur.denoiser is dc.denoiser and sur.noise_mode == "fixed" and len(sur.grid) == len(sub)


def test_nn_certificate_holds_and_neighbour_attack_finds_the_rest(toy):
    x_tr, y_tr, x_te, y_te = toy
    model = OneNN(x_tr, y_tr)
    x = x_te.float()
    ok = model(x).argmax(1) == y_te
    for norm in ("l2", "linf"):
        radius = nn_certified_radius(x, y_te, x_tr.float(), y_tr, norm)
        assert (radius[~ok] == 0).all() and (radius[ok] > 0).all()
        # sound: no attack breaks an example inside its certified radius
        eps = float(radius[ok].median())
        atk = NeighbourAttack(model, x_tr.float(), y_tr, norm=norm, eps=eps)
        res = atk.run(x, y_te)
        certified = radius > eps
        assert not (res.success & certified).any()
        pert = (res.x_adv - x).flatten(1)
        size = pert.abs().amax(1) if norm == "linf" else pert.norm(dim=1)
        assert (size <= eps + 1e-6).all()
        # the closed-form step crosses the nearest bisector when the budget exceeds it by a margin
        big = NeighbourAttack(model, x_tr.float(), y_tr, norm=norm, eps=float(radius.max()) * 3 + 0.05)
        assert big.run(x, y_te).success.all()
    # a training image is certified at half its distance to the nearest other-class image (l2)
    r_tr = nn_certified_radius(x_tr[:3].float(), y_tr[:3], x_tr.float(), y_tr, "l2")
    d = torch.cdist(x_tr[:3].flatten(1), x_tr.flatten(1)).masked_fill(y_tr[None] == y_tr[:3, None], float("inf"))
    assert torch.allclose(r_tr, d.amin(1) / 2)


def test_transfer_pgd_stays_in_the_ball_and_fools_its_source(toy):
    x_tr, y_tr, x_te, y_te = toy
    source = OneNN(x_tr, y_tr)
    x = x_te.float()
    for norm, eps in (("linf", 0.3), ("l2", 1.5)):
        adv = transfer_pgd(source, x, y_te, norm=norm, eps=eps, steps=10)
        pert = (adv - x).flatten(1)
        size = pert.abs().amax(1) if norm == "linf" else pert.norm(dim=1)
        assert (size <= eps + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
        assert torch.equal(adv, transfer_pgd(source, x, y_te, norm=norm, eps=eps, steps=10))  # deterministic
    assert (source(adv).argmax(1) != y_te).float().mean() > 0.5


def test_robustness_protocol_worst_case_survivors_and_precomputed(toy):
    x_tr, y_tr, x_te, y_te = toy
    model = OneNN(x_tr, y_tr)
    x = x_te.float()
    radius = nn_certified_radius(x, y_te, x_tr.float(), y_tr, "l2")
    clean = model(x).argmax(1) == y_te
    assert clean.sum() >= 4
    eps = float(radius[clean].median())
    res = robustness_protocol(
        model,
        x,
        y_te,
        norm="l2",
        eps=eps,
        attacks=("copy", "neighbour", "pgd"),
        steps=5,
        precomputed={"copy": x.clone()},
        neighbours=(x_tr.float(), y_tr),
        on_survivors=("pgd",),
    )
    assert torch.equal(res.clean_correct, clean)
    assert torch.equal(res.robust["copy"], clean)  # precomputed images are verified as given
    assert torch.equal(res.worst, clean & res.robust["copy"] & res.robust["neighbour"] & res.robust["pgd"])
    # pgd ran only on survivors, so its flags are a cumulative worst case
    assert not (res.robust["pgd"] & ~res.robust["neighbour"]).any()
    assert (res.worst <= (radius > 0)).all() and (res.worst >= (radius > eps)).all()  # certificate respected
    acc = res.accuracy("worst")
    assert acc.correct == int(res.worst.sum()) and acc.total == 6
    assert res.to_dict()["on_survivors"] == ["pgd"]
    broken = clean & ~res.worst
    xw = res.x_worst()
    assert (model(xw[broken]).argmax(1) != y_te[broken]).all()
    with pytest.raises(ValueError, match="on_survivors"):
        robustness_protocol(model, x, y_te, norm="l2", eps=eps, attacks=("pgd",), on_survivors=("square",))
    with pytest.raises(ValueError, match="unknown entry"):
        res.accuracy("apgd-ce")
