"""The attack registry: name -> builder plus the facts other code reads (CLI, evaluation, checks, notebooks).

An attack is added by one ``register_attack`` call in its own module (the shipped ones: ``builtin.py``)::

    @register_attack("my-attack", gradient_based=True, iterative=True, norms=("linf", "l2"))
    def _build(model, **budget_and_extra):  # norm, eps, steps, restarts, eot, verify, seed, generator, ...
        return MyAttack(model, **budget_and_extra)

Every builder takes the model ``x (B, C, H, W) in [0, 1] -> logits (B, K)`` and the common budget as keywords
(``steps`` counts what ``budget`` says: iterations or queries) plus the names of ``extra_args``, and returns an
:class:`~rdc_lib.attacks.base.Attack` (or, for an ``ensemble``, a list of ``(name, Attack)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.choices import NORMS

__all__ = [
    "AttackInfo",
    "EXTRA_ARGS",
    "AUTOATTACK_MEMBERS",
    "FULL_ENSEMBLE",
    "attack_names",
    "build_attack",
    "get_attack",
    "is_full_ensemble",
    "protocol_label",
    "register_attack",
]

# Extra keyword arguments a builder may declare, and what each one is (the evaluation fills them in).
EXTRA_ARGS = {
    "denoiser": "the defense's diffusion model (a defense with a denoiser: dc, rdc, diffpure)",
    "n_target_classes": "target classes tried by a targeted attack",
    "square_queries": "query budget of Square inside an ensemble",
}


@dataclass(frozen=True)
class AttackInfo:
    """One registered attack and the facts about it."""

    name: str
    builder: Callable[..., Any]
    gradient_based: bool = True  # needs input gradients (white box); False: score-based
    iterative: bool = True  # False: one step (no iterations to double)
    norms: tuple[str, ...] = NORMS  # threat models it supports ("flow": StAdv's flow bound)
    eot: bool = True  # can average gradients over EOT draws
    extra_args: tuple[str, ...] = ()  # keywords beyond the common budget (names of EXTRA_ARGS)
    budget: str = "steps"  # what ``steps`` counts: "steps" (iterations) or "queries"
    ensemble: bool = False  # builds a list of (name, attack) run as a worst case
    adaptive: bool = False  # an adaptive objective or unseen threat model (issue 10)
    members: tuple[str, ...] = ()  # an ensemble's attacks (registered names), in run order
    description: str = ""


_REGISTRY: dict[str, AttackInfo] = {}


def register_attack(name: str, **facts: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder`` as attack ``name`` with ``facts`` (fields of :class:`AttackInfo`)."""
    if name in _REGISTRY or name == "none":
        raise ValueError(f"attack {name!r} is already registered (or reserved); choose another name")
    unknown = set(facts.get("extra_args", ())) - set(EXTRA_ARGS)
    if unknown:
        raise ValueError(f"attack {name!r}: unknown extra_args {sorted(unknown)}; valid: {', '.join(EXTRA_ARGS)}")
    if facts.get("budget", "steps") not in ("steps", "queries"):
        raise ValueError(f"attack {name!r}: budget must be 'steps' or 'queries', got {facts['budget']!r}")

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = AttackInfo(name=name, builder=builder, **facts)
        return builder

    return deco


def attack_names(*, ensemble: bool | None = None, adaptive: bool | None = None) -> tuple[str, ...]:
    """Registered attack names in registration order, optionally only those with the given facts."""
    return tuple(
        n
        for n, a in _REGISTRY.items()
        if (ensemble is None or a.ensemble == ensemble) and (adaptive is None or a.adaptive == adaptive)
    )


def get_attack(name: str) -> AttackInfo:
    """The registered attack ``name``; ValueError listing the valid names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attack {name!r}; valid choices: {', '.join(attack_names())}")
    return _REGISTRY[name]


# The strongest protocol a result can carry: the AutoAttack-style ensemble with every member run. Any other
# attack (a single one, or this ensemble with a member left out) gives an upper bound of the robust accuracy.
FULL_ENSEMBLE = "autoattack"
# Its members in run order (the registry fact ``members`` of "autoattack", rdc_lib.attacks.builtin).
AUTOATTACK_MEMBERS = ("apgd-ce", "apgd-dlr", "apgd-t", "square")


def is_full_ensemble(name: str, dropped: Any = ()) -> bool:
    """Whether a result of attack ``name`` ran the full ensemble (:data:`FULL_ENSEMBLE`; ``dropped``: the
    members a stored result says it left out, its ``attacks_dropped``)."""
    get_attack(name)
    return name == FULL_ENSEMBLE and not dropped


def protocol_label(name: str, dropped: Any = ()) -> str:
    """How every table names the attack of a result: 'full ensemble' only for :data:`FULL_ENSEMBLE` with every
    member run; otherwise what ran and that its robust accuracy is an upper bound, e.g. 'APGD-CE only: an upper
    bound', 'ensemble without square: an upper bound'."""
    if is_full_ensemble(name, dropped):
        return "full ensemble"
    if name == FULL_ENSEMBLE:
        return f"ensemble without {', '.join(sorted(dropped))}: an upper bound"
    return f"{name.upper()} only: an upper bound"


# The budget keywords every builder gets, with build_attack's defaults (eps has none: it must be given).
_BUILD_DEFAULTS = dict(norm="linf", steps=100, restarts=1, eot=1, verify=1, seed=0, generator=None)


def build_attack(name: str, model: Any, *, eps: float, **kwargs: Any) -> Any:
    """Build attack ``name`` (any registered attack but an ensemble) with a common budget.

    The budget keywords (norm, eps, steps, restarts, eot, verify, seed, generator) default to norm 'linf',
    100 steps, 1 restart, eot 1, verify 1, seed 0; ``steps`` is the iteration count (the query budget for a
    query-budget attack such as 'square'); other keyword arguments go to the builder (e.g. ``step_size`` for PGD,
    ``n_target_classes`` for APGD-T, ``p_init`` for Square, ``denoiser=`` for the Lagrangian attacks). ``seed`` is
    ignored when ``generator`` is given.
    """
    single = attack_names(ensemble=False)
    if name not in single:
        raise ValueError(f"unknown attack {name!r}; valid choices: {', '.join(single)}")
    budget = {**_BUILD_DEFAULTS, "eps": eps, **kwargs}
    if budget["generator"] is not None:
        budget["seed"] = None
    return _REGISTRY[name].builder(model, **budget)
