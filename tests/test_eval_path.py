"""One path per evaluation (issue 38): a single attack runs directly, the ensemble runner only for ensembles.

The single path (``attacking.run_single``) must give what an ensemble of that one attack gave (``run_ensemble``
on a one-member list): the same adversarial images, the same summary, and, against a stochastic defense with its
own generator, the same draws in the same order (so stored results and later calls do not change).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rdc_lib.attacks import build_attack
from rdc_lib.attacks.ensemble import run_ensemble
from rdc_lib.evaluation.attacking import run_attack, run_single

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
from rdc_lib.evaluation import EvalConfig, evaluate
sizes = []
if sys.argv[2] == "watch":  # record the member count of every ensemble run (loads the module on purpose)
    import rdc_lib.attacks.ensemble as ens
    run = ens.run_ensemble
    def counted(model, x, y, attacks, **kw):
        sizes.append(len(attacks))
        return run(model, x, y, attacks, **kw)
    ens.run_ensemble = counted
cfg = EvalConfig.from_params(json.loads(sys.argv[1]))
res = evaluate(cfg, progress=False)
out = {"ensemble_loaded": "rdc_lib.attacks.ensemble" in sys.modules, "stats": res["attack_stats"], "sizes": sizes}
print(json.dumps({**out, "checks": sorted(res["checks"])}))
"""


def _probe(watch: bool = False, **params) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", _PROBE, json.dumps(params), "watch" if watch else "plain"]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_STATS_FIELDS = {
    "n",
    "clean_accuracy",
    "robust_accuracy",
    "queries_spent",
    "queries_budget",
    "early_stop_saving",
    "attacks",
}


def test_single_attack_evaluation_does_not_load_the_ensemble():
    res = _probe(defense="cnn", attack="pgd", n_images=6, steps=3, chunk=6, run_checks=False)
    assert res["ensemble_loaded"] is False
    assert set(res["stats"][0]) == _STATS_FIELDS and set(res["stats"][0]["attacks"]) == {"PGD"}


def test_with_checks_only_real_ensembles_reach_the_ensemble_runner():
    """The checks' attacks run directly too; the one ensemble among them is the cross_loss check's (the full
    ensemble's gradient attacks that PGD lacks: APGD-DLR and APGD-T next to APGD-CE), never an ensemble of one."""
    res = _probe(watch=True, defense="cnn", attack="pgd", n_images=32, steps=3, chunk=32, run_checks=True)
    assert {"cross_loss", "black_box", "large_budget", "convergence"} <= set(res["checks"])
    assert res["sizes"] == [3]
    assert set(res["stats"][0]) == _STATS_FIELDS


def test_the_probe_can_fail_an_ensemble_loads_the_ensemble_runner():
    res = _probe(
        defense="cnn", attack="autoattack", n_images=4, steps=2, square_queries=5, n_target_classes=2, run_checks=False
    )
    assert res["ensemble_loaded"] is True


class _Noisy(nn.Module):
    """A stochastic toy defense with its own generator (as the diffusion defenses have): logits of x plus noise."""

    def __init__(self, scale: float, seed: int = 0):
        super().__init__()
        weights = torch.Generator().manual_seed(1)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=weights))
        self.scale = scale
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x):
        noise = torch.randn(x.shape[0], 10, generator=self.gen) * self.scale
        return self.net(x) + noise


def _data(n: int = 24):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize(
    ("name", "scale", "eot", "verify"),
    [("pgd", 0.0, 1, 1), ("pgd", 0.5, 2, 3), ("apgd-dlr", 0.3, 1, 2), ("square", 0.4, 2, 2), ("fgsm", 0.0, 1, 1)],
)
def test_single_path_equals_the_ensemble_of_one(name, scale, eot, verify):
    x, y = _data()
    results = []
    for single in (True, False):
        model = _Noisy(scale)
        steps = 30 if name == "square" else 5
        atk = build_attack(name, model, norm="linf", eps=0.1, steps=steps, eot=eot, verify=verify, seed=0)
        if single:
            adv, stats = run_single(atk, model, x, y)
        else:
            res = run_ensemble(model, x, y, [(atk.name, atk)], chunk=x.shape[0], progress=False)
            adv, stats = res.x_adv, res.summary()
        results.append((adv, stats, model(x)))  # the last call: the defense's generator is where it was
    (a1, s1, after1), (a2, s2, after2) = results
    assert torch.equal(a1, a2)
    assert s1 == s2
    assert torch.equal(after1, after2)
    assert 0 < s1["attacks"][next(iter(s1["attacks"]))]["queries"]


def test_run_attack_takes_the_single_path_for_one_attack(monkeypatch):
    import rdc_lib.evaluation.attacking as attacking

    called = []
    monkeypatch.setattr(attacking, "run_single", lambda *a: called.append(a) or (a[2], {}))
    x, y = _data(4)
    model = _Noisy(0.0)
    run_attack(build_attack("pgd", model, eps=0.1, steps=2), model, x, y)
    assert len(called) == 1
