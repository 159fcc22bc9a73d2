"""Sanity checks that run with every robust evaluation (Carlini et al. 2019 checklist; Athalye et al. 2018).

Each check returns ``{"passed": bool, "detail": str, ...its numbers and tolerance}``; a failed check marks
the robust accuracy as untrusted (``trusted: false``, printed as UNTRUSTED); an evaluation with no check
run is ``trusted: null``, printed as "not checked", never as passed (:func:`trust_label`).
The checks run on the first ``n_check`` >= :data:`MIN_CHECK_IMAGES` images. "White box" below is the
evaluated attack with its *gradient* attacks only (an AutoAttack-style ensemble without Square), so the
black-box and large-budget checks cannot be met by Square inside the ensemble:

- ``gradients``: input gradients of the margin loss exist, are finite and non-zero for every check image
  (``rdc_lib.grad.check_gradients_finite_nonzero``; shattered or vanishing gradients fail).
- ``finite_difference`` (deterministic defences with exact gradients): autograd directional derivatives
  agree with central differences on a float64 copy of the model (``rdc_lib.grad.finite_difference_check``).
- ``large_budget``: at a budget that can change any image (l_inf 0.5, l2 4.0, flow 1.0) the white-box
  robust accuracy falls to <= :data:`LARGE_BUDGET_MAX` (if not, the attack does not reach the model).
- ``convergence``: twice the iterations (twice Square's queries for a Square evaluation) must not lower
  the robust accuracy by more than the tolerance (if it does, the attack had not converged).
- ``black_box``: Square does not break more images than the white-box gradient attacks (beyond tolerance).
- ``transfer``: adversarial examples made on the standard CNN do not beat the white-box attack.

The comparisons are paired, image by image, on the same check images; the tolerance is
:data:`CHECK_TOLERANCE` (a fraction of the check images: 2 of 32) and is written into every entry.
Against a stochastic defence an image counts as correctly classified only if ``cfg.verify`` calls all
classify it correctly, and an image is robust only if it was correctly classified, attacked, and survived.
Checks that do not apply (e.g. finite differences on a stochastic defence) are listed with the reason by
:func:`skipped_checks`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..grad import check_gradients_finite_nonzero, finite_difference_check

if TYPE_CHECKING:
    from .runner import EvalConfig

LARGE_EPS = {"linf": 0.5, "l2": 4.0, "flow": 1.0}
MIN_CHECK_IMAGES = 32         # check images (the first n of the evaluation)
CHECK_TOLERANCE = 2 / 32      # allowed difference in robust accuracy (fraction of the check images)
LARGE_BUDGET_MAX = 0.1        # robust accuracy allowed at the large budget
FD_IMAGES, FD_DIRECTIONS, FD_EPS, FD_TOL = 4, 4, 1e-4, 0.05  # finite-difference check (float64 copy, margin loss)
TRANSFER_STEPS = 20           # PGD iterations (at least) on the transfer source, the standard CNN


CHECK_DESCRIPTIONS = {
    "gradients": "margin-loss input gradients exist and are finite and non-zero for every check image",
    "finite_difference": "deterministic defences with exact gradients: autograd directional derivatives match "
                         f"central differences on a float64 copy (relative error < {FD_TOL})",
    "large_budget": f"white-box robust accuracy (gradient attacks only) at eps {LARGE_EPS['linf']} (l_inf) / "
                    f"{LARGE_EPS['l2']} (l2) falls to <= {LARGE_BUDGET_MAX:.0%}",
    "convergence": "twice the iterations do not lower robust accuracy by more than the tolerance (the attack converged)",
    "black_box": "Square does not break more images than the gradient attacks (beyond the tolerance)",
    "transfer": "PGD examples made on the standard CNN do not break more images than the white-box attack "
                "(beyond the tolerance)",
}
# The checks before the convergence rewrite, as results stored then carry them ("more_steps" marks them).
LEGACY_CHECKS_NOTE = (
    "These results carry the earlier checks (before the convergence rewrite): 16 check images with a 2-image "
    "tolerance; `more_steps` asked only that 2x steps did not *raise* robust accuracy (it never tested "
    "convergence); `large_budget` and `black_box` compared against the whole ensemble, Square included, so in "
    "an AutoAttack-style cell they could not fail; no finite-difference check. Rerun a cell for the current checks.")


def checks_protocol(all_checks: list[dict[str, dict]]) -> list[str]:
    """Markdown lines for a report: what the checks of these results tested (current and/or legacy)."""
    lines = []
    names = {k for c in all_checks for k in c}
    if "more_steps" in names:
        lines.append(LEGACY_CHECKS_NOTE)
    current = [k for k in CHECK_DESCRIPTIONS if k in names]
    if current and any("convergence" in c or "finite_difference" in c for c in all_checks):
        entries = [e for c in all_checks for e in c.values() if "tolerance_images" in e]
        tol = (f" Tolerance {entries[0]['tolerance']:.1%} ({entries[0]['tolerance_images']} of {entries[0]['n']} "
               "check images), paired image by image.") if entries else ""
        lines.append("Checks (rdc_lib/evaluation/checks.py) on the first check images of every cell: "
                     + "; ".join(f"`{k}`: {CHECK_DESCRIPTIONS[k]}" for k in current) + "." + tol)
    if any(not c for c in all_checks):
        lines.append("A cell with no check run is marked *not checked* (`trusted: null`), never passed.")
    return lines


def trust_label(trusted: bool | None) -> str:
    """How tables print a result's ``trusted`` flag: 'passed', 'UNTRUSTED' or 'not checked' (None)."""
    if trusted is None:
        return "not checked"
    return "passed" if trusted else "UNTRUSTED"


def trusted_from(checks: dict[str, dict]) -> bool | None:
    """``trusted`` of a result: None when no check ran, else whether every check passed."""
    if not checks:
        return None
    return all(bool(c["passed"]) for c in checks.values())


def failed_checks(checks: dict[str, dict]) -> list[str]:
    """Names of the checks that failed, with the reason each gives (for the UNTRUSTED message)."""
    return [f"{name} ({c.get('detail', '')})" for name, c in checks.items() if not c["passed"]]


def check_sample_size(n: int, n_check: int = MIN_CHECK_IMAGES) -> None:
    """ValueError unless ``n`` >= ``n_check`` images are available for the checks."""
    if n < n_check:
        raise ValueError(f"the sanity checks need at least {n_check} images, got n = {n}; evaluate n >= {n_check} "
                         f"images, or pass run_checks=False (the result is then 'not checked', trusted: null)")


@torch.no_grad()
def correct_all(model: nn.Module, x: Tensor, y: Tensor, reads: int = 1, batch: int = 64) -> Tensor:
    """(N,) bool: ``reads`` independent calls all classify the images x (N, C, H, W) as y (N,)."""
    from .runner import predict

    ok = torch.ones_like(y, dtype=torch.bool)
    for _ in range(reads):
        ok &= predict(model, x, batch) == y
    return ok


def _gradient_attack(cfg: "EvalConfig", model: nn.Module, **overrides):
    """The evaluated attack built with ``overrides``, its gradient attacks only (Square taken out of an
    ensemble); a Square evaluation keeps Square (it has no gradient attack)."""
    from .runner import _attack

    atk = _attack(replace(cfg, **overrides), model)
    if isinstance(atk, list):
        atk = [(name, a) for name, a in atk if name != "square"] or atk
    return atk


def _robust(model: nn.Module, attack, x: Tensor, y: Tensor, clean_ok: Tensor, reads: int) -> Tensor:
    """(N,) bool: correctly classified, attacked by ``attack`` and still correct (``reads`` calls)."""
    from .runner import _run_attack

    robust = torch.zeros_like(clean_ok)
    if clean_ok.any():
        adv, _ = _run_attack(attack, model, x[clean_ok], y[clean_ok], progress=False)
        robust[clean_ok] = correct_all(model, adv.detach(), y[clean_ok], reads)
    return robust


def _compare(base: Tensor, other: Tensor, tolerance: float, detail: str, **numbers) -> dict:
    """Paired comparison: ``other`` (a check attack) must not leave fewer images robust than ``base``
    (the white-box attack) by more than ``tolerance`` (a fraction of the images)."""
    n = base.numel()
    allowed = math.floor(tolerance * n + 1e-9)
    drop = int(base.sum()) - int(other.sum())
    return {"passed": drop <= allowed, "robust_acc": float(other.float().mean()), "baseline": float(base.float().mean()),
            "n": n, "broken_only_by_check": int((base & ~other).sum()), "broken_only_by_baseline": int((~base & other).sum()),
            "tolerance": tolerance, "tolerance_images": allowed, "detail": detail, **numbers}


def gradient_check(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """Input gradients of the margin loss: exist, finite and non-zero for every image."""
    health = check_gradients_finite_nonzero(model, x, y, loss="margin")
    return {"passed": health.passed, "finite": bool(health.finite.all()),
            "nonzero_fraction": float(health.nonzero.float().mean()), "n": x.shape[0],
            "detail": f"margin-loss input gradients must exist and be finite and non-zero for every image: {health.message}"}


def is_deterministic(model: nn.Module, x: Tensor) -> bool:
    """Two calls on ``x`` give bit-identical logits."""
    with torch.no_grad():
        return bool(torch.equal(model(x), model(x)))


def fd_check(model: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> dict:
    """Autograd vs central differences on a float64 copy of a deterministic ``model`` (first FD_IMAGES images)."""
    model64 = copy.deepcopy(model).double()
    xs = x[:FD_IMAGES].double()
    fd = finite_difference_check(model64, xs, y[:FD_IMAGES], n_directions=FD_DIRECTIONS, eps=FD_EPS, tol=FD_TOL,
                                 loss="margin", generator=torch.Generator(device=x.device).manual_seed(seed))
    return {"passed": fd.passed, "max_rel_error": fd.max_rel_error, "tolerance": FD_TOL, "eps": FD_EPS,
            "n": xs.shape[0], "directions": FD_DIRECTIONS,
            "detail": f"autograd directional derivatives of the margin must match central differences "
                      f"(float64 copy, relative error < {FD_TOL})"}


def skipped_checks(cfg: "EvalConfig", deterministic: bool | None = None) -> dict[str, str]:
    """Checks that do not apply to ``cfg`` (or, with ``deterministic`` False, to a stochastic model), and why."""
    out: dict[str, str] = {}
    if deterministic is False:
        out["finite_difference"] = "the defence is stochastic (two calls differ); central differences need a fixed function"
    elif cfg.grad_mode == "bpda":
        out["finite_difference"] = "grad_mode 'bpda' uses an approximate backward pass on purpose"
    if cfg.attack == "fgsm":
        out["convergence"] = "FGSM is a single step; it has no iterations to double"
    if cfg.attack == "square":
        out["black_box"] = "the evaluated attack is Square itself"
    elif cfg.norm == "flow":
        out["black_box"] = "Square has no flow threat model"
    if cfg.defense == "cnn":
        out["transfer"] = "the transfer source is the standard CNN, the evaluated defence itself"
    elif cfg.norm == "flow":
        out["transfer"] = "transfer uses l_inf / l2 PGD on the CNN"
    elif cfg.dataset != "digits":
        out["transfer"] = f"the transfer source (the standard CNN) exists for digits only, not {cfg.dataset}"
    return out


def run_sanity_checks(cfg: "EvalConfig", model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, *,
                      device: torch.device, n_check: int = MIN_CHECK_IMAGES,
                      tolerance: float = CHECK_TOLERANCE, attacked: Tensor | None = None) -> dict:
    """All applicable checks on the first ``n_check`` images x (N, C, H, W) in [0, 1], labels y (N,).

    ``x_adv`` (N, C, H, W) are the evaluation's adversarial images; they serve as the white-box result
    unless the evaluated attack is an ensemble with Square, which is rerun with its gradient attacks only.
    ``attacked`` (N,) bool marks the images the evaluation attacked (default: all); an image it did not
    attack is never counted robust. ``tolerance``: allowed difference in robust accuracy (fraction of
    the check images). Returns
    ``{check name: entry}``; checks that do not apply are absent (see :func:`skipped_checks`).
    """
    check_sample_size(x.shape[0], n_check)
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a fraction in [0, 1), got {tolerance}")
    xs, ys = x[:n_check], y[:n_check]
    reads = cfg.verify
    clean_ok = correct_all(model, xs, ys, reads)
    if cfg.attack == "autoattack" and cfg.norm != "flow":
        white = _robust(model, _gradient_attack(cfg, model), xs, ys, clean_ok, reads)
    else:
        white = clean_ok & correct_all(model, x_adv[:n_check], ys, reads)
        if attacked is not None:
            white &= attacked[:n_check].to(white.device)
    deterministic = is_deterministic(model, xs[:FD_IMAGES])
    skip = skipped_checks(cfg, deterministic)

    checks: dict[str, dict] = {"gradients": gradient_check(model, xs, ys)}
    if "finite_difference" not in skip:
        checks["finite_difference"] = fd_check(model, xs, ys, seed=cfg.seed)

    large = _robust(model, _gradient_attack(cfg, model, eps=LARGE_EPS[cfg.norm]), xs, ys, clean_ok, reads)
    large_acc = float(large.float().mean())
    checks["large_budget"] = {
        "passed": large_acc <= LARGE_BUDGET_MAX, "robust_acc": large_acc, "eps": LARGE_EPS[cfg.norm], "n": n_check,
        "max_robust_acc": LARGE_BUDGET_MAX,
        "detail": f"white-box robust accuracy at eps {LARGE_EPS[cfg.norm]} must fall to <= {LARGE_BUDGET_MAX:.0%}"}

    if "convergence" not in skip:
        more = {"square_queries": 2 * cfg.square_queries} if cfg.attack == "square" else {"steps": 2 * cfg.steps}
        doubled = _robust(model, _gradient_attack(cfg, model, **more), xs, ys, clean_ok, reads)
        checks["convergence"] = _compare(
            white, doubled, tolerance, f"2x iterations must not lower robust accuracy by more than {tolerance:.1%}",
            **more)
    if "black_box" not in skip:
        square = _robust(model, _gradient_attack(cfg, model, attack="square", eot=1), xs, ys, clean_ok, reads)
        checks["black_box"] = _compare(white, square, tolerance,
                                       f"Square ({cfg.square_queries} queries) must not beat the white-box gradient "
                                       f"attacks by more than {tolerance:.1%}", queries=cfg.square_queries)
    if "transfer" not in skip:
        checks["transfer"] = _transfer(cfg, model, xs, ys, clean_ok, white, reads, device, tolerance)
    return checks


def _transfer(cfg: "EvalConfig", model: nn.Module, xs: Tensor, ys: Tensor, clean_ok: Tensor, white: Tensor,
              reads: int, device: torch.device, tolerance: float) -> dict:
    """PGD on the standard CNN (the surrogate), replayed on the defence."""
    from ..baselines import load_classifier
    from ..paths import checkpoint_path
    from .runner import _attack, _run_attack

    cnn = load_classifier(checkpoint_path("digits_cnn"), device=device)
    ok = correct_all(cnn, xs, ys)
    x_tr = xs.clone()
    steps = max(cfg.steps, TRANSFER_STEPS)
    if ok.any():
        c = replace(cfg, attack="pgd", eot=1, verify=1, steps=steps)
        x_tr[ok], _ = _run_attack(_attack(c, cnn), cnn, xs[ok], ys[ok], progress=False)
    transfer = clean_ok & correct_all(model, x_tr, ys, reads)
    return _compare(white, transfer, tolerance, f"PGD-{steps} examples made on the standard CNN must not beat the "
                                                f"white-box attack by more than {tolerance:.1%}", steps=steps)
