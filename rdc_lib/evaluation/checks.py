"""Sanity checks that run with every robust evaluation (Carlini et al. 2019 checklist; Athalye et al. 2018).

Each check is a plain function ``(model, x, y, attack_factory, ...) -> CheckResult`` of
rdc_lib.evaluation.standalone_checks (the factory builds the evaluated attack with changed settings,
rdc_lib.evaluation.attacking); :func:`run_sanity_checks`, here, runs the applicable ones and stores each as
``{"passed": bool, ...its numbers and tolerance, "detail": str}``. Which checks apply follows the registries'
facts (one-step attacks have no iterations to double, a score-based attack is not compared with itself, the
transfer source is :data:`rdc_lib.defenses.TRANSFER_SOURCE`). A failed check marks the robust accuracy as
untrusted (``trusted: false``, printed as UNTRUSTED); an evaluation with no check run is ``trusted: null``,
printed as "not checked", never as passed (:func:`trust_label`).
The checks run on the first ``n_check`` >= :data:`MIN_CHECK_IMAGES` images. "White box" below is the
evaluated attack with its *gradient* attacks only (an AutoAttack-style ensemble without Square), so the
black-box and large-budget checks cannot be met by Square inside the ensemble:

- ``gradients``: input gradients of the margin loss exist, are finite and non-zero for every check image
  (``rdc_lib.evaluation.grad.check_gradients_finite_nonzero``; shattered or vanishing gradients fail).
- ``finite_difference`` (deterministic defenses with exact gradients): autograd directional derivatives
  agree with central differences on a float64 copy of the model (``rdc_lib.evaluation.grad.finite_difference_check``).
- ``large_budget``: at a budget that can change any image (l_inf 0.5, l2 4.0, flow 1.0) the white-box
  robust accuracy falls to <= :data:`LARGE_BUDGET_MAX` (if not, the attack does not reach the model).
- ``convergence``: twice the iterations (twice Square's queries for a Square evaluation) must not lower
  the robust accuracy by more than the tolerance (if it does, the attack had not converged).
- ``black_box``: Square does not break more images than the white-box gradient attacks (beyond tolerance).
- ``transfer``: adversarial examples made on the standard CNN do not beat the white-box attack.
- ``cross_loss`` (any attack but the full ensemble, rdc_lib.attacks.registry.FULL_ENSEMBLE): the ensemble's
  gradient attacks that the evaluated attack lacks (for APGD-CE: APGD-DLR and APGD-T), run on the images it
  left robust, must not break more than the tolerance (a weak or saturated loss; issue 36).
- ``eot_convergence`` (stochastic defenses): the evaluated attack with twice the EOT draws must not leave fewer
  images robust in all ``n_eval`` readings than the evaluation did, beyond the tolerance (worst of N).

The comparisons are paired, image by image, on the same check images; the tolerance is
:data:`CHECK_TOLERANCE` (a fraction of the check images: 2 of 32) and is written into every entry.
Against a stochastic defense an image counts as correctly classified only if ``cfg.verify`` calls all
classify it correctly, and an image is robust only if it was correctly classified, attacked, and survived.
Checks that do not apply (e.g. finite differences on a stochastic defense) are listed with the reason by
:func:`skipped_checks`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.registry import FULL_ENSEMBLE, get_attack, is_full_ensemble
from ..defenses import TRANSFER_SOURCE, DefenseSpec, build_defense, get_defense
from .attacking import AttackFactory
from .prediction import correct_all
from .standalone_checks import (
    BLACK_BOX_ATTACK,
    CHECK_TOLERANCE,
    FD_IMAGES,
    FD_TOL,
    LARGE_BUDGET_MAX,
    LARGE_EPS,
    TRANSFER_ATTACK,
    CheckResult,
    Paired,
    black_box_check,
    convergence_check,
    cross_loss_attacks,
    cross_loss_check,
    eot_convergence_check,
    finite_difference_check_entry,
    gradients_check,
    is_deterministic,
    large_budget_check,
    robust_to,
    transfer_check,
)

MIN_CHECK_IMAGES = 32  # check images (the first n of the evaluation)


CHECK_DESCRIPTIONS = {
    "gradients": "margin-loss input gradients exist and are finite and non-zero for every check image",
    "finite_difference": "deterministic defenses with exact gradients: autograd directional derivatives match "
    f"central differences on a float64 copy (relative error < {FD_TOL})",
    "large_budget": f"white-box robust accuracy (gradient attacks only) at eps {LARGE_EPS['linf']} (l_inf) / "
    f"{LARGE_EPS['l2']} (l2) falls to <= {LARGE_BUDGET_MAX:.0%}",
    "convergence": "twice the iterations do not lower robust accuracy by more than the tolerance "
    "(the attack converged)",
    "black_box": "Square does not break more images than the gradient attacks (beyond the tolerance)",
    "transfer": "PGD examples made on the standard CNN do not break more images than the white-box attack "
    "(beyond the tolerance)",
    "cross_loss": "the full ensemble's gradient attacks that the evaluated attack lacks (for APGD-CE: APGD-DLR, "
    "APGD-T) break no more than the tolerance of the images it left robust (a weak loss)",
    "eot_convergence": "stochastic defenses: the evaluated attack with twice the EOT draws does not lower the "
    "worst-of-N robust count by more than the tolerance (the EOT size sufficed)",
}
# The checks before the convergence rewrite, as results stored then carry them ("more_steps" marks them).
LEGACY_CHECKS_NOTE = (
    "These results carry the earlier checks (before the convergence rewrite): 16 check images with a 2-image "
    "tolerance; `more_steps` asked only that 2x steps did not *raise* robust accuracy (it never tested "
    "convergence); `large_budget` and `black_box` compared against the whole ensemble, Square included, so in "
    "an AutoAttack-style cell they could not fail; no finite-difference check. Rerun a cell for the current checks."
)


def checks_protocol(all_checks: list[dict[str, dict]]) -> list[str]:
    """Markdown lines for a report: what the checks of these results tested (current and/or legacy)."""
    lines = []
    names = {k for c in all_checks for k in c}
    if "more_steps" in names:
        lines.append(LEGACY_CHECKS_NOTE)
    current = [k for k in CHECK_DESCRIPTIONS if k in names]
    if current and any("convergence" in c or "finite_difference" in c for c in all_checks):
        entries = [e for c in all_checks for e in c.values() if "tolerance_images" in e]
        tol = (
            (
                f" Tolerance {entries[0]['tolerance']:.1%} ({entries[0]['tolerance_images']} of {entries[0]['n']} "
                "check images), paired image by image."
            )
            if entries
            else ""
        )
        lines.append(
            "Checks (rdc_lib/evaluation/checks.py) on the first check images of every cell: "
            + "; ".join(f"`{k}`: {CHECK_DESCRIPTIONS[k]}" for k in current)
            + "."
            + tol
        )
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
        raise ValueError(
            f"the sanity checks need at least {n_check} images, got n = {n}; evaluate n >= {n_check} "
            f"images, or pass run_checks=False (the result is then 'not checked', trusted: null)"
        )


# The order in which skipped_checks lists its reasons (as results stored since issue 36 have them).
CHECK_ORDER = ("finite_difference", "convergence", "black_box", "cross_loss", "eot_convergence", "transfer")


def skipped_checks(cfg: Any, deterministic: bool | None = None) -> dict[str, str]:
    """Checks that do not apply to ``cfg`` (or, with ``deterministic`` False, to a stochastic model), and why,
    from the registries' facts about the evaluated attack and defense."""
    out: dict[str, str] = {}
    info = get_attack(cfg.attack)
    if deterministic is False:
        out["finite_difference"] = (
            "the defense is stochastic (two calls differ); central differences need a fixed function"
        )
    elif cfg.grad_mode == "bpda":
        out["finite_difference"] = "grad_mode 'bpda' uses an approximate backward pass on purpose"
    if not info.iterative:
        out["convergence"] = f"{cfg.attack.upper()} is a single step; it has no iterations to double"
    if cfg.attack == BLACK_BOX_ATTACK:
        out["black_box"] = "the evaluated attack is Square itself"
    if is_full_ensemble(cfg.attack):
        out["cross_loss"] = (
            f"the evaluated attack is the full ensemble ({', '.join(info.members)}): no loss of it is missing"
        )
    if cfg.defense == TRANSFER_SOURCE:
        out["transfer"] = "the transfer source is the standard CNN, the evaluated defense itself"
    # Then a check whose attack has no threat model for cfg.norm (the registry's norms), then the rest.
    for check, attack, reason in (
        ("black_box", BLACK_BOX_ATTACK, f"Square has no {cfg.norm} threat model"),
        ("cross_loss", FULL_ENSEMBLE, f"the ensemble has no {cfg.norm} threat model"),
        ("transfer", TRANSFER_ATTACK, "transfer uses l_inf / l2 PGD on the CNN"),
    ):
        if check not in out and cfg.norm not in get_attack(attack).norms:
            out[check] = reason
    if "cross_loss" not in out and not cross_loss_attacks(cfg.attack):
        out["cross_loss"] = f"{cfg.attack} already runs every gradient attack of the ensemble"
    if deterministic:
        out["eot_convergence"] = "the defense is deterministic (two calls agree): every EOT draw is the same"
    elif not info.eot:
        out["eot_convergence"] = f"{cfg.attack} takes no EOT draws"
    if "transfer" not in out and cfg.dataset not in get_defense(TRANSFER_SOURCE).datasets:
        out["transfer"] = f"the transfer source (the standard CNN) exists for digits only, not {cfg.dataset}"
    return {name: out[name] for name in CHECK_ORDER if name in out}


def run_sanity_checks(
    cfg: Any,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    *,
    device: torch.device,
    n_check: int = MIN_CHECK_IMAGES,
    tolerance: float = CHECK_TOLERANCE,
    attacked: Tensor | None = None,
    worst: Tensor | None = None,
) -> dict:
    """All applicable checks of the evaluation ``cfg`` (an EvalConfig) on the first ``n_check`` images
    x (N, C, H, W) in [0, 1], labels y (N,).

    ``x_adv`` (N, C, H, W) are the evaluation's adversarial images; they serve as the white-box result
    unless the evaluated attack is an ensemble with a score-based member, which is rerun with its gradient
    attacks only. ``attacked`` (N,) bool marks the images the evaluation attacked (default: all); an image it
    did not attack is never counted robust; ``worst`` (N,) bool: the evaluation's worst-of-N robust flags
    (default: read ``x_adv`` N = ``cfg.n_eval`` times here). ``tolerance``: allowed difference in robust accuracy
    (fraction of the check images). Returns ``{check name: entry}``; checks that do not apply are absent (see
    :func:`skipped_checks`).
    """
    check_sample_size(x.shape[0], n_check)
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be a fraction in [0, 1), got {tolerance}")
    xs, ys = x[:n_check], y[:n_check]
    factory = AttackFactory(cfg)
    reads = cfg.verify
    clean_ok = correct_all(model, xs, ys, reads)
    if factory.info().ensemble and cfg.norm in get_attack(BLACK_BOX_ATTACK).norms:
        white = robust_to(model, factory.gradient_only(model), xs, ys, clean_ok, reads)
    else:
        white = clean_ok & correct_all(model, x_adv[:n_check], ys, reads)
        if attacked is not None:
            white &= attacked[:n_check].to(white.device)
    paired = Paired(clean_ok, white, reads, tolerance)
    deterministic = is_deterministic(model, xs[:FD_IMAGES])
    skip = skipped_checks(cfg, deterministic)

    checks: dict[str, CheckResult] = {"gradients": gradients_check(model, xs, ys)}
    if "finite_difference" not in skip:
        checks["finite_difference"] = finite_difference_check_entry(model, xs, ys, seed=cfg.seed)
    checks["large_budget"] = large_budget_check(model, xs, ys, factory, paired)
    if "convergence" not in skip:
        checks["convergence"] = convergence_check(model, xs, ys, factory, paired)
    if "black_box" not in skip:
        checks["black_box"] = black_box_check(model, xs, ys, factory, paired)
    if "transfer" not in skip:
        source = build_defense(DefenseSpec(name=TRANSFER_SOURCE), device)
        checks["transfer"] = transfer_check(model, xs, ys, factory, paired, source)
    if "cross_loss" not in skip:
        checks["cross_loss"] = cross_loss_check(model, xs, ys, factory, paired)
    if "eot_convergence" not in skip and not deterministic:
        if worst is None:  # read the evaluation's examples N times here
            worst = clean_ok & correct_all(model, x_adv[:n_check], ys, cfg.n_eval)
            if attacked is not None:
                worst &= attacked[:n_check].to(worst.device)
        checks["eot_convergence"] = eot_convergence_check(
            model, xs, ys, worst[:n_check].to(clean_ok.device), factory, paired
        )
    return {name: c.as_dict() for name, c in checks.items()}
