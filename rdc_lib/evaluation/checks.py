"""Sanity checks that run with every robust evaluation (Carlini et al. 2019 checklist; Athalye et al. 2018).

Each check returns ``{"passed": bool, "detail": str, ...numbers}``; a failed check marks the robust
accuracy as untrusted (the runner logs it loudly and the CLI prints it). Checks run on a small
subset (``n_check`` images) to bound their cost:
- ``gradients``: input gradients of the loss are finite and non-zero (shattered/vanishing gradients).
- ``large_budget``: at a budget large enough to change any image (l_inf 0.5, l2 4.0) robust accuracy
  falls to <= 10% (if not, the attack is not reaching the model: masking or a bug).
- ``more_steps``: doubling the attack iterations does not *raise* robust accuracy (beyond noise).
- ``black_box``: the score-based Square attack does not beat the white-box attack.
- ``transfer``: adversarial examples made on the standard CNN do not beat the white-box attack.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .runner import EvalConfig

LARGE_EPS = {"linf": 0.5, "l2": 4.0, "flow": 1.0}


def _robust_acc(cfg: "EvalConfig", model: nn.Module, x: Tensor, y: Tensor, attack_name: str | None = None,
                **overrides) -> tuple[float, Tensor]:
    from .runner import _attack, _run_attack, predict

    c = replace(cfg, attack=attack_name or cfg.attack, **overrides)
    clean_ok = predict(model, x) == y
    x_adv = x.clone()
    if clean_ok.any():
        adv, _ = _run_attack(_attack(c, model), model, x[clean_ok], y[clean_ok], progress=False)
        x_adv[clean_ok] = adv
    robust = (predict(model, x_adv) == y) & clean_ok
    return robust.float().mean().item(), x_adv


def gradient_check(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, x)
    per_example = g.flatten(1).norm(dim=1)
    finite = bool(torch.isfinite(g).all())
    nonzero = float((per_example > 0).float().mean())
    return {"passed": finite and nonzero >= 0.9, "finite": finite, "nonzero_fraction": nonzero,
            "detail": "input gradients finite and non-zero for >= 90% of examples"}


def run_sanity_checks(cfg: "EvalConfig", model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, *,
                      device: torch.device, n_check: int = 16, tolerance: float = 0.125) -> dict:
    """All checks on the first ``n_check`` images; ``tolerance`` is the allowed noise in accuracy."""
    from .runner import predict

    xs, ys, adv = x[:n_check], y[:n_check], x_adv[:n_check]
    base = ((predict(model, adv) == ys) & (predict(model, xs) == ys)).float().mean().item()
    checks: dict[str, dict] = {"gradients": gradient_check(model, xs, ys)}

    large, _ = _robust_acc(cfg, model, xs, ys, eps=LARGE_EPS[cfg.norm])
    checks["large_budget"] = {"passed": large <= 0.1, "robust_acc": large, "eps": LARGE_EPS[cfg.norm],
                              "detail": "robust accuracy at a very large budget must fall to <= 10%"}
    if cfg.attack not in ("square", "fgsm"):
        more, _ = _robust_acc(cfg, model, xs, ys, steps=2 * cfg.steps)
        checks["more_steps"] = {"passed": more <= base + tolerance, "robust_acc": more, "baseline": base,
                                "steps": 2 * cfg.steps, "detail": "2x attack steps must not raise robust accuracy"}
    if cfg.attack not in ("square", "fgsm") and cfg.norm != "flow":
        square, _ = _robust_acc(cfg, model, xs, ys, attack_name="square", eot=1)
        checks["black_box"] = {"passed": square >= base - tolerance, "robust_acc": square, "baseline": base,
                               "detail": "black-box Square must not beat the white-box attack"}
    if cfg.defense != "cnn":
        from ..baselines import load_classifier
        from ..paths import checkpoint_path
        from .runner import _attack, _run_attack

        if cfg.norm == "flow":
            return checks
        cnn = load_classifier(checkpoint_path("digits_cnn"), device=device)
        ok = predict(cnn, xs) == ys
        x_tr = xs.clone()
        if ok.any():
            c = replace(cfg, attack="pgd", eot=1, steps=max(cfg.steps, 20))
            x_tr[ok], _ = _run_attack(_attack(c, cnn), cnn, xs[ok], ys[ok], progress=False)
        transfer = ((predict(model, x_tr) == ys) & (predict(model, xs) == ys)).float().mean().item()
        checks["transfer"] = {"passed": transfer >= base - tolerance, "robust_acc": transfer, "baseline": base,
                              "detail": "transfer from the CNN must not beat the white-box attack"}
    return checks
