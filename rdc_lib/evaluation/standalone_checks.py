"""The sanity checks of a robust evaluation, one standalone function each (rdc_lib.evaluation.checks runs them).

Each check is ``(model, x, y, attack_factory, paired, ...) -> CheckResult`` on the check images x (N, C, H, W) in
[0, 1], labels y (N,); the attack checks compare, image by image, against the evaluated white-box attack
(:class:`Paired`). What each check tests, when it applies and its tolerance: rdc_lib.evaluation.checks.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.registry import FULL_ENSEMBLE, get_attack
from .attacking import AttackFactory, run_attack
from .grad import check_gradients_finite_nonzero, finite_difference_check
from .prediction import correct_all

LARGE_EPS = {"linf": 0.5, "l2": 4.0, "flow": 1.0}
CHECK_TOLERANCE = 2 / 32  # allowed difference in robust accuracy (fraction of the check images)
LARGE_BUDGET_MAX = 0.1  # robust accuracy allowed at the large budget
FD_IMAGES, FD_DIRECTIONS, FD_EPS, FD_TOL = 4, 4, 1e-4, 0.05  # finite-difference check (float64 copy, margin loss)
TRANSFER_STEPS = 20  # PGD iterations (at least) on the transfer source, the standard CNN
TRANSFER_ATTACK = "pgd"  # the attack run on the transfer source (rdc_lib.defenses.TRANSFER_SOURCE)
BLACK_BOX_ATTACK = "square"  # the score-based attack of the black-box check
CROSS_LOSS_MAX_TARGETS = 3  # APGD-T targets at most in the cross_loss check (the headline ensemble's)


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: passed or not, why (``detail``), and its numbers and tolerance."""

    passed: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The entry stored in a result's ``checks`` (JSON-able)."""
        return {"passed": bool(self.passed), **self.numbers, "detail": self.detail}


@dataclass(frozen=True)
class Paired:
    """What the attack checks compare against, on the check images: ``clean_ok`` (N,) bool correctly
    classified (``reads`` calls), ``white`` (N,) bool robust to the evaluated white-box attack."""

    clean_ok: Tensor
    white: Tensor
    reads: int = 1
    tolerance: float = CHECK_TOLERANCE


def robust_to(model: nn.Module, attack: Any, x: Tensor, y: Tensor, clean_ok: Tensor, reads: int) -> Tensor:
    """(N,) bool: correctly classified (``clean_ok``), attacked by ``attack`` and still correct (``reads`` calls)."""
    robust = torch.zeros_like(clean_ok)
    if clean_ok.any():
        adv, _ = run_attack(attack, model, x[clean_ok], y[clean_ok])
        robust[clean_ok] = correct_all(model, adv.detach(), y[clean_ok], reads)
    return robust


def _compare(base: Tensor, other: Tensor, tolerance: float, detail: str, **numbers) -> CheckResult:
    """Paired comparison: ``other`` (a check attack) must not leave fewer images robust than ``base``
    (the white-box attack) by more than ``tolerance`` (a fraction of the images)."""
    n = base.numel()
    allowed = math.floor(tolerance * n + 1e-9)
    drop = int(base.sum()) - int(other.sum())
    return CheckResult(
        drop <= allowed,
        detail,
        {
            "robust_acc": float(other.float().mean()),
            "baseline": float(base.float().mean()),
            "n": n,
            "broken_only_by_check": int((base & ~other).sum()),
            "broken_only_by_baseline": int((~base & other).sum()),
            "tolerance": tolerance,
            "tolerance_images": allowed,
            **numbers,
        },
    )


def is_deterministic(model: nn.Module, x: Tensor) -> bool:
    """Two calls on ``x`` give bit-identical logits."""
    with torch.no_grad():
        return bool(torch.equal(model(x), model(x)))


# ----------------------------------------------------------------------------- the checks


def gradients_check(model: nn.Module, x: Tensor, y: Tensor) -> CheckResult:
    """Input gradients of the margin loss exist, are finite and non-zero for every image x (N, C, H, W)."""
    health = check_gradients_finite_nonzero(model, x, y, loss="margin")
    return CheckResult(
        health.passed,
        f"margin-loss input gradients must exist and be finite and non-zero for every image: {health.message}",
        {
            "finite": bool(health.finite.all()),
            "nonzero_fraction": float(health.nonzero.float().mean()),
            "n": x.shape[0],
        },
    )


def finite_difference_check_entry(model: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> CheckResult:
    """Autograd vs central differences on a float64 copy of a deterministic ``model`` (first FD_IMAGES images)."""
    model64 = copy.deepcopy(model).double()
    xs = x[:FD_IMAGES].double()
    fd = finite_difference_check(
        model64,
        xs,
        y[:FD_IMAGES],
        n_directions=FD_DIRECTIONS,
        eps=FD_EPS,
        tol=FD_TOL,
        loss="margin",
        generator=torch.Generator(device=x.device).manual_seed(seed),
    )
    return CheckResult(
        fd.passed,
        f"autograd directional derivatives of the margin must match central differences "
        f"(float64 copy, relative error < {FD_TOL})",
        {
            "max_rel_error": fd.max_rel_error,
            "tolerance": FD_TOL,
            "eps": FD_EPS,
            "n": xs.shape[0],
            "directions": FD_DIRECTIONS,
        },
    )


def large_budget_check(
    model: nn.Module, x: Tensor, y: Tensor, attack_factory: AttackFactory, paired: Paired
) -> CheckResult:
    """White-box robust accuracy (gradient attacks only) at a budget that can change any image falls to
    <= LARGE_BUDGET_MAX."""
    norm = attack_factory.cfg.norm
    large = robust_to(
        model, attack_factory.gradient_only(model, eps=LARGE_EPS[norm]), x, y, paired.clean_ok, paired.reads
    )
    acc = float(large.float().mean())
    return CheckResult(
        acc <= LARGE_BUDGET_MAX,
        f"white-box robust accuracy at eps {LARGE_EPS[norm]} must fall to <= {LARGE_BUDGET_MAX:.0%}",
        {"robust_acc": acc, "eps": LARGE_EPS[norm], "n": x.shape[0], "max_robust_acc": LARGE_BUDGET_MAX},
    )


def convergence_check(
    model: nn.Module, x: Tensor, y: Tensor, attack_factory: AttackFactory, paired: Paired
) -> CheckResult:
    """Twice the iterations (twice the queries of a query-budget attack) must not lower robust accuracy
    beyond the tolerance."""
    cfg = attack_factory.cfg
    more = (
        {"square_queries": 2 * cfg.square_queries}
        if attack_factory.info().budget == "queries"
        else {"steps": 2 * cfg.steps}
    )
    doubled = robust_to(model, attack_factory.gradient_only(model, **more), x, y, paired.clean_ok, paired.reads)
    return _compare(
        paired.white,
        doubled,
        paired.tolerance,
        f"2x iterations must not lower robust accuracy by more than {paired.tolerance:.1%}",
        **more,
    )


def black_box_check(
    model: nn.Module, x: Tensor, y: Tensor, attack_factory: AttackFactory, paired: Paired
) -> CheckResult:
    """The score-based BLACK_BOX_ATTACK must not break more images than the white-box gradient attacks."""
    queries = attack_factory.cfg.square_queries
    square = robust_to(
        model, attack_factory.gradient_only(model, attack=BLACK_BOX_ATTACK), x, y, paired.clean_ok, paired.reads
    )
    return _compare(
        paired.white,
        square,
        paired.tolerance,
        f"Square ({queries} queries, scores averaged over EOT {attack_factory.cfg.eot}) must not beat the "
        f"white-box gradient attacks by more than {paired.tolerance:.1%}",
        queries=queries,
    )


def transfer_check(
    model: nn.Module, x: Tensor, y: Tensor, attack_factory: AttackFactory, paired: Paired, source: nn.Module
) -> CheckResult:
    """TRANSFER_ATTACK examples made on ``source`` (the standard CNN), replayed on ``model``, must not beat
    the white-box attack."""
    steps = max(attack_factory.cfg.steps, TRANSFER_STEPS)
    ok = correct_all(source, x, y)
    x_tr = x.clone()
    if ok.any():
        atk = attack_factory(source, attack=TRANSFER_ATTACK, eot=1, verify=1, steps=steps)
        x_tr[ok], _ = run_attack(atk, source, x[ok], y[ok])
    transfer = paired.clean_ok & correct_all(model, x_tr, y, paired.reads)
    return _compare(
        paired.white,
        transfer,
        paired.tolerance,
        f"PGD-{steps} examples made on the standard CNN must not beat the white-box attack by more "
        f"than {paired.tolerance:.1%}",
        steps=steps,
    )


def cross_loss_attacks(attack: str) -> tuple[str, ...]:
    """The gradient attacks of the full ensemble (registry fact ``members`` of FULL_ENSEMBLE) that ``attack``
    lacks, in the ensemble's order: () for the full ensemble itself."""
    info = get_attack(attack)
    have = set(info.members) if info.ensemble else {attack}
    return tuple(m for m in get_attack(FULL_ENSEMBLE).members if m not in have and get_attack(m).gradient_based)


def cross_loss_check(
    model: nn.Module, x: Tensor, y: Tensor, attack_factory: AttackFactory, paired: Paired
) -> CheckResult:
    """The full ensemble's gradient attacks that the evaluated attack lacks (:func:`cross_loss_attacks`), run
    on the images it left robust, must not break more of them than the tolerance."""
    cfg = attack_factory.cfg
    names = cross_loss_attacks(cfg.attack)
    targets = min(cfg.n_target_classes, CROSS_LOSS_MAX_TARGETS)
    other = paired.white.clone()
    if paired.white.any():
        atk = [(name, attack_factory(model, attack=name, n_target_classes=targets)) for name in names]
        other = robust_to(model, atk, x, y, paired.white, paired.reads)
    return _compare(
        paired.white,
        other,
        paired.tolerance,
        f"{', '.join(n.upper() for n in names)} ({cfg.steps} iterations, EOT {cfg.eot}) must not break more "
        f"than {paired.tolerance:.1%} of the check images beyond {cfg.attack.upper()}",
        attacks=list(names),
        steps=cfg.steps,
        eot=cfg.eot,
        n_target_classes=targets,
    )


def eot_convergence_check(
    model: nn.Module, x: Tensor, y: Tensor, worst: Tensor, attack_factory: AttackFactory, paired: Paired
) -> CheckResult:
    """Stochastic defenses: the evaluated attack with twice the EOT draws, its examples read N = ``n_eval``
    times, must not leave fewer images robust in all N readings than the evaluation did (``worst`` (N,) bool:
    its worst-of-N flags on x (N, C, H, W)) beyond the tolerance. Both arms are one attack run and one N-fold
    reading each, so the reading noise of a stochastic defense falls on both sides of the comparison."""
    cfg = attack_factory.cfg
    reads = cfg.n_eval
    doubled = robust_to(model, attack_factory(model, eot=2 * cfg.eot), x, y, paired.clean_ok, reads)
    return _compare(
        worst,
        doubled,
        paired.tolerance,
        f"{2 * cfg.eot} EOT draws (twice the evaluation's {cfg.eot}) must not lower the worst-of-{reads} "
        f"robust count by more than {paired.tolerance:.1%}",
        eot=2 * cfg.eot,
        reads=reads,
    )
