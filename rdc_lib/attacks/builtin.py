"""Registration of the shipped attacks (rdc_lib.attacks.registry): one ``register_attack`` per attack.

Order is the order of the CLI's choices. Builders get the common budget (see ``registry.build_attack``).
"""

from __future__ import annotations

from .apgd import APGD
from .fgsm import FGSM
from .lagrangian import LagrangianAPGD, LagrangianPGD
from .pgd import PGD
from .registry import AUTOATTACK_MEMBERS, register_attack
from .selective_eot import SelectiveEOTAPGD, SelectiveEOTPGD
from .square import Square
from .stadv import StAdv

# Every builder gets the budget keywords (norm, eps, steps, restarts, eot, verify, seed, generator) and passes
# them on: the attacks' constructors take them (rdc_lib.attacks.base.AttackBudget).


@register_attack("fgsm", iterative=False, description="fast gradient sign method: one step to the ball's edge")
def _fgsm(model, *, steps, restarts, **kw):
    return FGSM(model, **kw)  # one step, one run: steps and restarts do not apply


@register_attack("pgd", description="projected gradient descent, cross-entropy")
def _pgd(model, **kw):
    return PGD(model, **kw)


@register_attack("apgd-ce", description="APGD with cross-entropy")
def _apgd_ce(model, **kw):
    return APGD(model, loss="ce", **kw)


@register_attack("apgd-dlr", description="APGD with the DLR loss")
def _apgd_dlr(model, **kw):
    return APGD(model, loss="dlr", **kw)


@register_attack("apgd-t", extra_args=("n_target_classes",), description="APGD with targeted DLR over the top classes")
def _apgd_t(model, **kw):
    return APGD(model, loss="dlr", targeted=True, target_rule="top-k", **kw)


@register_attack(
    "square",
    gradient_based=False,
    budget="queries",
    description="Square: score-based random search (no gradients; EOT averages its scores)",
)
def _square(model, **kw):
    return Square(model, **kw)


@register_attack(
    "autoattack",
    ensemble=True,
    extra_args=("square_queries", "n_target_classes"),
    members=AUTOATTACK_MEMBERS,
    description="AutoAttack-style worst case: APGD-CE, APGD-DLR, APGD-T, Square (all with EOT)",
)
def _autoattack(model, *, seed, generator, **kw):
    from .ensemble import autoattack_suite  # deferred: the ensemble module is loaded only when an ensemble runs

    return autoattack_suite(model, seed=seed if seed is not None else 0, **kw)


def _lagrangian(name: str, cls: type):
    def build(model, **kw):
        if kw.get("denoiser") is None:
            raise ValueError(
                f"attack {name!r} needs denoiser=, the defense's diffusion model (for an RDC: denoiser=rdc.denoiser)"
            )
        return cls(model, **kw)

    return build


register_attack(
    "pgd-lagrange",
    extra_args=("denoiser",),
    adaptive=True,
    description="PGD on the Lagrangian of cross-entropy and LM's unconditional loss",
)(_lagrangian("pgd-lagrange", LagrangianPGD))
register_attack(
    "apgd-lagrange", extra_args=("denoiser",), adaptive=True, description="APGD on the Lagrangian objective"
)(_lagrangian("apgd-lagrange", LagrangianAPGD))


@register_attack("pgd-seot", adaptive=True, description="PGD with selective EOT over the draws")
def _pgd_seot(model, **kw):
    return SelectiveEOTPGD(model, **kw)


@register_attack("apgd-seot", adaptive=True, description="APGD with selective EOT over the draws")
def _apgd_seot(model, **kw):
    return SelectiveEOTAPGD(model, **kw)


@register_attack(
    "stadv",
    norms=("flow",),
    adaptive=True,
    description="StAdv spatial flow; eps is the flow bound (normalised grid units), norm ignored",
)
def _stadv(model, *, norm, eps, **kw):
    return StAdv(model, bound=eps, **kw)
