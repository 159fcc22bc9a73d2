"""Build and run the evaluated attack: the one place the evaluation (runner.py) and its checks (checks.py) share.

The attack comes from the registry (rdc_lib.attacks.registry) by the configuration's name; the registry's
facts say which extra arguments it takes (filled in from the configuration or the defense) and whether its
budget counts iterations or queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..attacks.base import Attack, eval_mode
from ..attacks.losses import margin
from ..attacks.registry import attack_names, build_attack, get_attack
from ..attacks.verified import clean_verified, verified_run
from ..defenses import defense_names

__all__ = ["NO_ATTACK", "AttackFactory", "build_evaluated_attack", "eval_attack_names", "run_attack", "run_single"]

NO_ATTACK = "none"  # evaluate clean accuracy only


def eval_attack_names() -> tuple[str, ...]:
    """Valid ``EvalConfig.attack`` values: 'none' and every registered attack."""
    return (NO_ATTACK, *attack_names())


def _denoiser(cfg: Any, model: nn.Module) -> nn.Module:
    denoiser = getattr(model, "denoiser", None)
    if denoiser is None:
        raise ValueError(
            f"attack {cfg.attack!r} needs a diffusion defense "
            f"({', '.join(defense_names(needs_denoiser=True))}); {cfg.defense!r} has no denoiser"
        )
    return denoiser


# Where each extra argument a registered attack declares comes from: (config, defense) -> value.
_EXTRA_SOURCES = {
    "denoiser": _denoiser,
    "n_target_classes": lambda cfg, model: cfg.n_target_classes,
    "square_queries": lambda cfg, model: cfg.square_queries,
}


def build_evaluated_attack(cfg: Any, model: nn.Module, **overrides: Any) -> Any:
    """The attack of ``cfg`` (an EvalConfig, with ``overrides`` of its fields) against ``model``: an Attack, or
    a list of (name, Attack) for an ensemble."""
    if overrides:
        cfg = cfg.replace(**overrides)
    info = get_attack(cfg.attack)
    extra = {name: _EXTRA_SOURCES[name](cfg, model) for name in info.extra_args}
    steps = cfg.square_queries if info.budget == "queries" else cfg.steps
    budget = dict(
        norm=cfg.norm, eps=cfg.eps, steps=steps, restarts=cfg.restarts, eot=cfg.eot, verify=cfg.verify, seed=cfg.seed
    )
    if info.ensemble:
        return info.builder(model, generator=None, **budget, **extra)
    return build_attack(cfg.attack, model, **budget, **extra)


@dataclass(frozen=True)
class AttackFactory:
    """Builds the evaluated attack for any model with any of its settings changed (what the checks take).

    ``factory(model, eps=0.5)``: the attack at another budget; ``factory.gradient_only(model, ...)``: the
    same with an ensemble's score-based members taken out (a score-based attack alone is kept)."""

    cfg: Any  # EvalConfig

    def __call__(self, model: nn.Module, **overrides: Any) -> Any:
        return build_evaluated_attack(self.cfg, model, **overrides)

    def gradient_only(self, model: nn.Module, **overrides: Any) -> Any:
        atk = self(model, **overrides)
        if isinstance(atk, list):
            atk = [(name, a) for name, a in atk if get_attack(name).gradient_based] or atk
        return atk

    def info(self, **overrides: Any):
        """The registry facts of the attack named by the configuration (or ``overrides['attack']``)."""
        return get_attack(overrides.get("attack", self.cfg.attack))


def run_attack(attack: Any, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict]:
    """Adversarial images (N, C, H, W) for (x, y) and the attack's summary (the fields of
    ``EnsembleResult.summary``); an ensemble (list of (name, attack)) keeps the worst case per example."""
    if not isinstance(attack, list):
        return run_single(attack, model, x, y)
    # Deferred: the ensemble runner (chunks, resumable state files) is loaded only when an ensemble runs.
    from ..attacks.ensemble import run_ensemble

    res = run_ensemble(model, x, y, attack, chunk=x.shape[0], progress=False)
    return res.x_adv, res.summary()


def run_single(attack: Attack, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict]:
    """One attack on (x (N, C, H, W) in [0, 1], y (N,)): adversarial images (N, C, H, W) and its summary.

    The verified protocol of ``rdc_lib.attacks.verified`` with ``attack.verify`` reads, as ``run_ensemble`` runs
    it: a stochastic defense draws its randomness in the same order as an ensemble of this one attack and gives the
    same images and counts, without loading the ensemble runner.
    """
    n, y = x.shape[0], y.to(x.device)
    with eval_mode(model):
        clean, ok, queries = clean_verified(model, x, y, attack.verify)
        x_adv, robust, spent = x.detach().clone(), ok.clone(), 0
        idx = ok.nonzero().flatten()
        if idx.numel():
            run = verified_run(model, attack, x[idx], y[idx], attack.verify)
            take = run.fooled | (run.margin < margin(clean, y).to(x.dtype)[idx])
            x_adv[idx[take]] = run.result.x_adv[take]
            robust[idx[run.fooled]] = False
            queries[idx] += run.spent
            spent = int(run.spent.sum())
    budget = n * (attack.max_queries + attack.verify)
    name = getattr(attack, "name", "attack")
    summary = {
        "n": n,
        "clean_accuracy": float(ok.float().mean()),
        "robust_accuracy": float(robust.float().mean()),
        "queries_spent": int(queries.sum()),
        "queries_budget": n + budget,
        "early_stop_saving": 1.0 - int(queries.sum()) / max(1, n + budget),
        "attacks": {name: {"broken": int((ok & ~robust).sum()), "queries": spent, "budget": budget}},
    }
    return x_adv, summary
