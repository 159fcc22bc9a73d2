"""Adaptive attacks for l_inf and l2 threat models on images in [0, 1].

Every attack takes a model ``x (B, C, H, W) in [0, 1] -> logits (B, K)``, its budget in the constructor,
and returns adversarial images with ``attack(x, y)`` or an :class:`AttackResult` with ``attack.run(x, y)``.
``run_ensemble`` gives the AutoAttack-style worst case over several attacks, resumable and chunked.
Every attack is registered with its facts in ``registry`` (the shipped ones in ``builtin.py``) and built by
name with ``build_attack``; ``ATTACK_NAMES`` / ``ADAPTIVE_ATTACK_NAMES`` are the shipped single attacks
(adaptive objectives and the StAdv flow threat model apart), ``attack_names()`` every registered one.
"""

from . import builtin as _builtin  # registers the shipped attacks
from .apgd import APGD, APGD_LOSSES, TARGET_RULES, apgd_checkpoints
from .base import Attack, AttackBudget, AttackContext, AttackResult, eval_mode
from .fgsm import FGSM
from .lagrangian import LagrangianAPGD, LagrangianPGD, expected_unconditional_loss
from .losses import LOSSES, get_loss, margin
from .neighbour import NeighbourAttack
from .pgd import PGD
from .projections import NORMS, clip01, per_example_norm, project, project_ball
from .registry import (
    AUTOATTACK_MEMBERS,
    FULL_ENSEMBLE,
    AttackInfo,
    attack_names,
    build_attack,
    get_attack,
    is_full_ensemble,
    protocol_label,
    register_attack,
)
from .selective_eot import EOT_AGGREGATIONS, SelectiveEOTAPGD, SelectiveEOTPGD, aggregate_eot
from .square import Square
from .stadv import StAdv, StAdvResult, flow_warp
from .transfer import transfer_pgd
from .wrappers import BPDA, EOT, bpda

_ENSEMBLE_NAMES = ("ChunkReport", "EnsembleResult", "autoattack_suite", "run_ensemble")


def __getattr__(name: str):
    """The ensemble runner's names, imported on first use (a single attack runs without loading ensemble.py)."""
    if name in _ENSEMBLE_NAMES:
        # deferred: ensemble.py loads only when an ensemble name is asked for (tests/test_eval_path.py)
        from . import ensemble

        return getattr(ensemble, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ATTACK_NAMES = attack_names(ensemble=False, adaptive=False)  # the shipped standard attacks
ADAPTIVE_ATTACK_NAMES = attack_names(ensemble=False, adaptive=True)  # the shipped adaptive / unseen-threat attacks

__all__ = [
    "ADAPTIVE_ATTACK_NAMES",
    "EOT_AGGREGATIONS",
    "LagrangianAPGD",
    "LagrangianPGD",
    "SelectiveEOTAPGD",
    "SelectiveEOTPGD",
    "StAdv",
    "StAdvResult",
    "aggregate_eot",
    "expected_unconditional_loss",
    "flow_warp",
    "APGD",
    "APGD_LOSSES",
    "ATTACK_NAMES",
    "Attack",
    "AttackBudget",
    "AttackContext",
    "AttackResult",
    "BPDA",
    "ChunkReport",
    "EOT",
    "EnsembleResult",
    "FGSM",
    "LOSSES",
    "NORMS",
    "PGD",
    "Square",
    "TARGET_RULES",
    "apgd_checkpoints",
    "AUTOATTACK_MEMBERS",
    "autoattack_suite",
    "bpda",
    "build_attack",
    "clip01",
    "eval_mode",
    "get_loss",
    "margin",
    "per_example_norm",
    "project",
    "project_ball",
    "run_ensemble",
    "NeighbourAttack",
    "transfer_pgd",
    "AttackInfo",
    "attack_names",
    "get_attack",
    "register_attack",
    "FULL_ENSEMBLE",
    "is_full_ensemble",
    "protocol_label",
]
