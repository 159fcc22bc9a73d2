"""Randomized-smoothing certification (rdc_lib.certify): exact toy cases, the noised DC's derivation on
the closed-form optimal denoiser, bad input, the resumable runner and the consistency check."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from torch import nn

from rdc_lib.certify import (
    ABSTAIN,
    DenoisedSmoothing,
    NoisedDiffusionClassifier,
    Smoothed,
    build_base,
    certify,
    clopper_pearson_lower,
    min_draws,
    noised_grid,
    predict,
    sample_counts,
)
from rdc_lib.certify.empirical import SoftSmoothed
from rdc_lib.certify.runner import CertifyConfig, consistency, records_path, run_certify
from rdc_lib.certify.smoothing import norm_ppf
from rdc_lib.diffusion.elbo import elbo_terms
from rdc_lib.diffusion.schedules import NoiseGrid, make_grid
from rdc_lib.models.optimal import OptimalDenoiser


class Halfspace(nn.Module):
    """f(x) = 0 if <x, u> > t else 1 (u unit): P(f(x + s delta) = 0) = Phi((<x, u> - t) / s) exactly."""

    num_classes = 2

    def __init__(self, u: torch.Tensor, t: float):
        super().__init__()
        self.u, self.t = u / u.norm(), t

    def forward(self, x):
        z = (x.flatten(1) @ self.u.flatten()) - self.t
        return torch.stack([z, -z], 1)


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _cp_lower_bisect(k: int, n: int, alpha: float) -> float:
    """Independent Clopper-Pearson lower bound: the p with P(Bin(n, p) >= k) = alpha, by bisection."""

    def tail(p):
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))

    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) < alpha else (lo, mid)
    return lo


@pytest.mark.parametrize("k,n", [(0, 20), (7, 20), (19, 20), (20, 20), (450, 500)])
def test_clopper_pearson_matches_exact_binomial_tail(k, n):
    want = 0.0 if k == 0 else _cp_lower_bisect(k, n, 0.01)
    assert clopper_pearson_lower(k, n, 0.01) == pytest.approx(want, abs=1e-7)


def test_min_draws_is_the_exact_threshold():
    for alpha in (0.1, 0.01, 0.001):
        n = min_draws(alpha)
        assert clopper_pearson_lower(n, n, alpha) > 0.5 >= clopper_pearson_lower(n - 1, n - 1, alpha)


def test_certify_toy_halfspace_matches_closed_form():
    """Smoothing a linear classifier gives the same classifier; its exact robust radius is the distance to the plane."""
    torch.manual_seed(0)  # only for building u; certify itself uses the generator passed in
    u = torch.randn(1, 4, 4)
    base = Halfspace(u, 0.0)
    x = 0.1 * u / u.norm() + 0.5 * 0  # distance 0.1 to the plane, class 0
    sigma, n, alpha = 0.25, 20000, 0.001
    p_a = _phi(0.1 / sigma)
    cert = certify(
        Smoothed(base, sigma, torch.Generator().manual_seed(1), draw_batch=4096), x, n0=100, n=n, alpha=alpha
    )
    assert cert.prediction == 0
    assert cert.p_lower <= p_a  # a lower bound ...
    assert p_a - cert.p_lower < 4 * math.sqrt(p_a * (1 - p_a) / n) + 0.01  # ... and a tight one
    assert cert.radius <= 0.1 + 1e-9  # never more than the exact robust radius
    assert cert.radius == pytest.approx(sigma * norm_ppf(cert.p_lower))
    assert cert.radius > 0.08
    # counts follow Binomial(n, p_A)
    counts = sample_counts(base, x, sigma, n, generator=torch.Generator().manual_seed(2), draw_batch=999)
    assert int(counts.sum()) == n and abs(int(counts[0]) / n - p_a) < 4 * math.sqrt(p_a * (1 - p_a) / n)


def test_certify_abstains_on_the_boundary_and_predict_abstains_too():
    u = torch.ones(1, 2, 2)
    base = Halfspace(u, 0.0)
    x = torch.zeros(1, 2, 2)  # p_A = 1/2 exactly
    cert = certify(Smoothed(base, 0.5, torch.Generator().manual_seed(0)), x, n0=50, n=500, alpha=0.001)
    assert cert.prediction == ABSTAIN and cert.radius == 0.0 and cert.abstained
    assert predict(Smoothed(base, 0.5, torch.Generator().manual_seed(0)), x, n=200, alpha=0.001) == ABSTAIN
    far = x + 2.0 * u / u.norm()
    assert predict(Smoothed(base, 0.5, torch.Generator().manual_seed(0)), far, n=200, alpha=0.001) == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.1}, "sigma"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"n": 9, "alpha": 0.001}, "need n >= 10"),
        ({"n0": 0}, "n0"),
    ],
)
def test_certify_bad_input(kwargs, match):
    base = Halfspace(torch.ones(1, 2, 2), 0.0)
    args = {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.001, **kwargs}
    sigma = args.pop("sigma")
    with pytest.raises(ValueError, match=match):
        certify(Smoothed(base, sigma, torch.Generator()), torch.zeros(1, 2, 2), **args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pixel_sigma": 0.0}, "sigma"),
        ({"alpha": 2.0}, "alpha"),
        ({"n_draws": 5}, "need n >= 10"),
        ({"radii": (0.0, -0.25)}, r"radii must be finite and >= 0.*-0.25"),
        ({"radii": ()}, "radii"),
        ({"base": "nope"}, "valid choices"),
    ],
)
def test_certify_config_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CertifyConfig(**kwargs)


def _tiny_optimal():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 2, 2, generator=g)
    return OptimalDenoiser(x, torch.tensor([0, 0, 0, 1, 1, 1])).double(), x * 2 - 1, g


@pytest.mark.slow
def test_noised_dc_matches_exact_noisy_likelihood_on_optimal_denoiser():
    """With D = D* of a finite set, p_{sigma_s}(x~ | y) is a Gaussian mixture: the 'exact' noised DC with ELBO
    weights estimates its log-ratio between classes; the 'approx' variant (no eps correction) does not."""
    den, xm, g = _tiny_optimal()
    s, d = 0.3, 4
    grid = noised_grid(s, 200, kind="karras", weighting="elbo", sigma_max=80.0)
    grid = NoiseGrid(grid.sigmas.double(), grid.weights.double() * d, "karras", "elbo")  # sum over pixels
    z = {"exact": [], "approx": []}
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    for trial in range(3):
        xt = xm[trial] + s * torch.randn(1, 2, 2, generator=g, dtype=xm.dtype)
        dist = (xm.flatten(1) - xt.flatten()).pow(2).sum(1).double()
        lp = torch.stack([torch.logsumexp(-dist[labels == c] / (2 * s * s), 0) for c in (0, 1)])
        exact = float(lp[0] - lp[1])
        x_pix = ((xt + 1) / 2).unsqueeze(0).double()
        for post in z:
            m = NoisedDiffusionClassifier(den, s, grid, posterior=post, seed=trial)
            with torch.no_grad():
                diff = torch.cat([m(x_pix.expand(50, -1, -1, -1)) for _ in range(4)]).diff(dim=1)[:, 0].neg()
            se = float(diff.std()) / math.sqrt(diff.numel())
            z[post].append(abs(float(diff.mean()) - exact) / (se + 0.02 * abs(exact)))  # MC error + 2% quadrature
    assert max(z["exact"]) < 4, z
    assert max(z["approx"]) > 6, z


def test_noised_dc_at_sigma_zero_is_the_plain_dc():
    den, _, g = _tiny_optimal()
    grid = make_grid(5)
    x = torch.rand(3, 1, 2, 2, generator=g).double()
    noise = torch.randn(3, 5, 1, 2, 2, generator=g).double()
    ndc = NoisedDiffusionClassifier(den, 0.0, NoiseGrid(grid.sigmas.double(), grid.weights.double()))
    ref = elbo_terms(den, x, NoiseGrid(grid.sigmas.double(), grid.weights.double()), noise=noise.unsqueeze(1))
    assert torch.allclose(ndc.terms(x, noise), ref, atol=1e-10)


def test_noised_grid_and_bad_levels():
    grid = noised_grid(0.5, 4)
    assert len(grid) == 4 and float(grid.sigmas.min()) > 0.5
    den, _, _ = _tiny_optimal()
    with pytest.raises(ValueError, match="every level of the grid must be > sigma_s"):
        NoisedDiffusionClassifier(den, 0.5, make_grid(4))
    with pytest.raises(ValueError, match="posterior"):
        NoisedDiffusionClassifier(den, 0.5, grid, posterior="bad")


def test_denoised_smoothing_is_one_denoiser_call_then_the_classifier():
    den, _, g = _tiny_optimal()
    den = den.float()
    clf = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    base = DenoisedSmoothing(den, clf, 0.5)
    x = torch.rand(5, 1, 2, 2, generator=g) + 0.2 * torch.randn(5, 1, 2, 2, generator=g)
    want = clf(((den(x * 2 - 1, torch.full((5,), 0.5), None) + 1) / 2).clamp(0, 1))
    assert torch.allclose(base(x), want) and base.network_passes(7) == 7
    assert build_base("noised-dc", den, 0.25, timesteps=3).network_passes(2) == 6
    with pytest.raises(ValueError, match="classifier"):
        build_base("denoised", den, 0.25)


def test_soft_smoothed_is_a_differentiable_log_probability():
    base = Halfspace(torch.ones(1, 2, 2), 2.0)
    soft = SoftSmoothed(base, 0.25, draws=16, seed=0)
    x = torch.full((3, 1, 2, 2), 0.5, requires_grad=True)
    out = soft(x)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.slow
def test_runner_resumes_and_matches_a_fresh_run(tmp_path):
    cfg = CertifyConfig(
        base="denoised",
        n_images=3,
        n0=10,
        n_draws=30,
        alpha=0.01,
        radii=(0.0, 0.25),
        attack_steps=1,
        attack_draws=2,
        pred_draws=10,
    )
    full = run_certify(cfg, records_dir=tmp_path, progress=False)
    assert full["images"] == 3 and set(full["certified"]) == {"0", "0.25"} and full["draws_per_image"] == 40
    path = records_path(tmp_path, cfg)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # one image kept, one line cut by a kill
    resumed = run_certify(cfg, records_dir=tmp_path, progress=False)
    assert resumed["certified"] == full["certified"] and resumed["empirical"] == full["empirical"]
    fresh = run_certify(cfg, records_dir=None, progress=False)
    assert fresh["certified"] == full["certified"]
    recs = [json.loads(ln) for ln in path.read_text().splitlines()[1:]]
    assert [r["index"] for r in recs] == [0, 1, 2]
    # a smaller slice reuses the records (no new work), a different configuration does not
    part = run_certify(
        CertifyConfig(**{**cfg.identity(), "n_images": 2, "radii": (0.0, 0.25)}), records_dir=tmp_path, progress=False
    )
    assert part["images"] == 2 and part["seconds"] < full["seconds"]


def test_consistency_check_can_fail():
    row = {"certified": {"0.5": {"value": 0.6}}, "empirical": {"0.5": {"value": 0.4, "high": 0.5}}}
    assert consistency(row)["passed"] is False
    row["empirical"]["0.5"]["high"] = 0.7
    assert consistency(row)["passed"] is True


def test_sweep_target_declares_the_config_fields():
    from rdc_lib.core.paths import REPO_ROOT
    from rdc_lib.sweep.spec import SweepSpecError, load_sweep, parse_sweep

    path = REPO_ROOT / "examples" / "sweeps" / "digits_certify.yaml"
    assert len(load_sweep(path).cells()) == 4
    with pytest.raises(SweepSpecError, match="did you mean 'timesteps'"):
        parse_sweep(path.read_text().replace("timesteps: 4", "timestepz: 4"))


def test_cli_certify_json_and_bad_input(capsys):
    from rdc_lib.cli import main

    assert (
        main(
            [
                "certify",
                "--base",
                "denoised",
                "--n-images",
                "1",
                "--n0",
                "5",
                "--n-draws",
                "20",
                "--alpha",
                "0.01",
                "--attack-steps",
                "0",
                "--radii",
                "0",
                "0.1",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["images"] == 1 and set(out["certified"]) == {"0", "0.1"} and out["draws_per_image"] == 25
    assert "empirical" not in out and out["radius_unit"].startswith("l2, pixel")
    assert main(["certify", "--radii", "0", "-1"]) == 2
    assert "radii must be finite and >= 0" in capsys.readouterr().err
    assert main(["certify", "--n-draws", "3"]) == 2
    assert "need n >= 10" in capsys.readouterr().err


def test_cli_certify_keeps_the_old_flags_as_aliases():
    """--n, --sigma and --batch (before issue 38) still set n_draws, pixel_sigma and draw_batch."""
    from rdc_lib.cli.main import build_parser

    args = build_parser().parse_args(["certify", "--n", "500", "--sigma", "0.5", "--batch", "50"])
    assert (args.n_draws, args.pixel_sigma, args.draw_batch) == (500, 0.5, 50)
    new = build_parser().parse_args(["certify", "--n-draws", "500", "--pixel-sigma", "0.5", "--draw-batch", "50"])
    assert (new.n_draws, new.pixel_sigma, new.draw_batch) == (500, 0.5, 50)


# A record header and a result row as written before issue 38 renamed n, sigma and batch (same other fields as
# CertifyConfig(base="denoised", n_images=3, n0=10, n=30, alpha=0.01, radii=(0.0, 0.25), denoiser="digits_multi")).
_OLD_FIELDS = {"n": 30, "sigma": 0.25, "batch": 250}


def _old_identity(cfg: CertifyConfig) -> dict:
    new = {"n_draws": "n", "pixel_sigma": "sigma", "draw_batch": "batch"}
    return {new.get(k, k): v for k, v in cfg.identity().items()}


def _old_hash(identity: dict) -> str:
    """The key the code before the renames computed from an identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def test_stored_configs_with_the_old_names_are_migrated_and_keep_their_key():
    from rdc_lib.certify.runner import STORED_NAMES, migrate_stored

    cfg = CertifyConfig(base="denoised", n_images=3, n0=10, n_draws=30, alpha=0.01, denoiser="digits_multi")
    old = _old_identity(cfg)
    assert {k: old[k] for k in _OLD_FIELDS} == _OLD_FIELDS and not set(STORED_NAMES.values()) & set(old)
    # the key is the hash the old code computed (sha256 of the old identity): stored keys stay valid
    assert cfg.key() == _old_hash(old)
    back = CertifyConfig.from_stored({**old, "label": "x", "key": "k"})
    assert back == cfg and back.key() == cfg.key()
    assert migrate_stored(old) == cfg.identity()
    with pytest.raises(ValueError, match="n=30 and n_draws=40"):
        migrate_stored({**old, "n_draws": 40})
    with pytest.raises(ValueError, match=r"renamed certify parameters 'n' \(now 'n_draws'\)"):
        CertifyConfig.from_params({"n": 30})


def test_old_records_header_is_read_back(tmp_path):
    """A records file written before the renames (old names in its header) is found and resumed."""
    from rdc_lib.certify.runner import load_records

    cfg = CertifyConfig(base="denoised", n_images=1, n0=10, n_draws=30, alpha=0.01, denoiser="digits_multi")
    old_header = {k: v for k, v in _old_identity(cfg).items() if k not in ("n_images", "offset")}
    path = records_path(tmp_path, cfg)
    assert path.name == f"certify_denoised_0.25_{_old_hash(old_header)}.jsonl"  # the old file name
    rec = {"index": 0, "label": 7, "prediction": 7, "radius": 0.1}
    path.write_text(json.dumps({"config": old_header}) + "\n" + json.dumps(rec) + "\n")
    assert load_records(path, cfg) == {0: rec}
    other = CertifyConfig(base="denoised", n_images=1, n0=10, n_draws=40, alpha=0.01, denoiser="digits_multi")
    assert load_records(path, other) == {}


def _report_module():
    from .conftest import load_benchmark

    return load_benchmark("certify_report")


@pytest.mark.slow
def test_report_doc_is_deterministic_and_flags_inconsistent_rows(tmp_path):
    report = _report_module()
    cfg = CertifyConfig(
        base="denoised",
        n_images=2,
        n0=10,
        n_draws=30,
        alpha=0.01,
        radii=(0.0, 0.5),
        attack_steps=1,
        attack_draws=2,
        pred_draws=10,
    )
    row = {**run_certify(cfg, progress=False), "key": cfg.key(), "command": "python x run", "machine": "cpu"}
    raw = tmp_path / "raw.jsonl"
    report._write_row(raw, row)
    report._write_row(raw, row)  # the same configuration replaces its row
    assert len(raw.read_text().splitlines()) == 1
    out1, out2 = tmp_path / "a.md", tmp_path / "b.md"
    report.main(["doc", "--raw", str(raw), "--out", str(out1), "--bench", str(tmp_path / "none.json")])
    report.main(["doc", "--raw", str(raw), "--out", str(out2), "--bench", str(tmp_path / "none.json")])
    text = out1.read_text()
    assert text == out2.read_text() and "It holds for every row" in text and "pixel space" in text
    bad = json.loads(json.dumps(row))
    bad["certified"]["0.5"] = {"correct": 2, "total": 2, "value": 1.0, "low": 0.34, "high": 1.0}
    bad["empirical"]["0.5"] = {"correct": 0, "total": 2, "value": 0.0, "low": 0.0, "high": 0.66}
    assert "It FAILS for" in report.render([bad]) and "**NO**" in report.render([bad])
