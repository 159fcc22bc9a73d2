"""Build and run the evaluated attack: the one place the evaluation (runner.py) and its checks (checks.py) share.

The attack comes from the registry (rdc_lib.attacks.registry) by the configuration's name; the registry's
facts say which extra arguments it takes (filled in from the configuration or the defense) and whether its
budget counts iterations or queries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from ..attacks.ensemble import run_ensemble
from ..attacks.registry import attack_names, build_attack, get_attack

__all__ = ["NO_ATTACK", "AttackFactory", "build_evaluated_attack", "eval_attack_names", "run_attack"]

NO_ATTACK = "none"  # evaluate clean accuracy only


def eval_attack_names() -> tuple[str, ...]:
    """Valid ``EvalConfig.attack`` values: 'none' and every registered attack."""
    return (NO_ATTACK, *attack_names())


def _denoiser(cfg: Any, model: nn.Module) -> nn.Module:
    denoiser = getattr(model, "denoiser", None)
    if denoiser is None:
        from ..defenses import defense_names

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
        cfg = replace(cfg, **overrides)
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
    """Adversarial images (N, C, H, W) for (x, y) and the attack's summary; an ensemble (list of (name,
    attack)) keeps the worst case per example."""
    attacks = attack if isinstance(attack, list) else [(getattr(attack, "name", "attack"), attack)]
    res = run_ensemble(model, x, y, attacks, chunk_size=x.shape[0], progress=False)
    return res.x_adv, res.summary()
