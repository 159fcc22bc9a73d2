"""Fixed against fresh noise: why a worst-of-N robust accuracy is lower than a one-call one (notebook 03).

A stochastic defense (DC / RDC with ``noise_mode='stochastic'``) draws new noise on every call. The fixed-noise
version of the same defense reuses one seeded draw, so it is a deterministic function an attack can follow.
:func:`fixed_vs_fresh` takes the images a fixed-noise attack leaves correct and asks the stochastic defense
``n_draws`` times about each adversarial example (how many draws misclassify it), then runs the same attack
with EOT against the stochastic defense itself and asks again. An image counts as robust for

- *one call* when a single stochastic call is right (on average: 1 - wrong / n_draws per image);
- *worst of N* only when all ``n_draws`` calls are right: one wrong draw is a user who got a wrong answer.

docs/evaluation.md measures the same gap on 200 images (a single call overstates by 22 to 49 points).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .prediction import n_evaluate, predict

__all__ = ["FixedVsFresh", "draws_misclassifying", "fixed_vs_fresh"]

AttackFactory = Callable[[nn.Module], Any]  # model -> attack (callable (x, y) -> x_adv)


@torch.no_grad()
def draws_misclassifying(model: nn.Module, x: Tensor, y: Tensor, n_draws: int, batch_size: int = 64) -> Tensor:
    """(N,) int: how many of ``n_draws`` calls of ``model`` (fresh noise each) misclassify each image x (N, C, H, W)."""
    if not isinstance(n_draws, int) or isinstance(n_draws, bool) or n_draws < 1:
        raise ValueError(f"n_draws must be an int >= 1, got {n_draws!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels")
    return (n_evaluate(model, x, n_draws, batch_size) != y.to(x.device).reshape(1, -1)).sum(0).cpu()


@dataclass
class FixedVsFresh:
    """What :func:`fixed_vs_fresh` measured on N images, each with ``n_draws`` stochastic readings.

    Tensors are (N,) on the CPU: ``fixed_robust`` (bool) the fixed-noise defense is right on its own adversarial
    example; ``wrong_clean``, ``wrong_fixed_adv``, ``wrong_eot_adv`` (int in [0, n_draws]) how many stochastic
    draws misclassify the clean image, the fixed-noise attack's example and the EOT attack's example.
    """

    labels: Tensor
    n_draws: int
    eot: int
    fixed_robust: Tensor
    wrong_clean: Tensor
    wrong_fixed_adv: Tensor
    wrong_eot_adv: Tensor
    x_fixed_adv: Tensor  # (N, C, H, W) in [0, 1]
    x_eot_adv: Tensor

    @property
    def n(self) -> int:
        return int(self.labels.numel())

    def counts(self) -> dict[str, dict[str, float]]:
        """Robust counts of N images per reading: fixed (one deterministic call), one stochastic call (expected over
        the draws) and worst of n_draws, for the fixed-noise attack's examples and the EOT attack's examples."""
        out = {}
        for name, wrong in (("fixed_attack", self.wrong_fixed_adv), ("eot_attack", self.wrong_eot_adv)):
            out[name] = {
                "one_call_expected": float((1 - wrong.float() / self.n_draws).sum()),
                f"worst_of_{self.n_draws}": int((wrong == 0).sum()),
            }
        out["fixed_attack"]["fixed_noise"] = int(self.fixed_robust.sum())
        out["clean"] = {
            "one_call_expected": float((1 - self.wrong_clean.float() / self.n_draws).sum()),
            f"worst_of_{self.n_draws}": int((self.wrong_clean == 0).sum()),
        }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-image counts and the robust counts of :meth:`counts`."""
        return {
            "n": self.n,
            "n_draws": self.n_draws,
            "eot": self.eot,
            "labels": self.labels.tolist(),
            "fixed_robust": self.fixed_robust.tolist(),
            "wrong_draws": {
                "clean": self.wrong_clean.tolist(),
                "fixed_attack": self.wrong_fixed_adv.tolist(),
                "eot_attack": self.wrong_eot_adv.tolist(),
            },
            "robust_counts": self.counts(),
        }


def fixed_vs_fresh(
    fixed: nn.Module,  # the defense with noise_mode='fixed' (deterministic)
    stochastic: nn.Module,  # the same defense with noise_mode='stochastic' (fresh noise per call)
    x: Tensor,  # (N, C, H, W) in [0, 1]
    y: Tensor,  # (N,) labels
    make_attack: AttackFactory,  # model -> attack: the fixed-noise attack (run on ``fixed``)
    make_eot_attack: AttackFactory,  # model -> attack with EOT: run on ``stochastic``
    *,
    n_draws: int,
    eot: int,
    x_fixed_adv: Tensor | None = None,  # the fixed-noise attack's examples if already made (skips that attack)
) -> FixedVsFresh:
    """Attack ``fixed``, read ``stochastic`` n_draws times on its examples; attack ``stochastic`` with EOT, read again.

    ``eot`` is only recorded (the factory builds the attack); the generators of both defenses and attacks are the
    caller's (seeded), so the result is reproducible.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels")
    y = y.to(x.device)
    adv = make_attack(fixed)(x, y).detach() if x_fixed_adv is None else x_fixed_adv.to(x.device)
    if adv.shape != x.shape:
        raise ValueError(f"x_fixed_adv must have the shape of x {tuple(x.shape)}, got {tuple(adv.shape)}")
    fixed_ok = (predict(fixed, adv) == y).cpu()
    eot_adv = make_eot_attack(stochastic)(x, y).detach()
    return FixedVsFresh(
        labels=y.cpu(),
        n_draws=n_draws,
        eot=eot,
        fixed_robust=fixed_ok,
        wrong_clean=draws_misclassifying(stochastic, x, y, n_draws),
        wrong_fixed_adv=draws_misclassifying(stochastic, adv, y, n_draws),
        wrong_eot_adv=draws_misclassifying(stochastic, eot_adv, y, n_draws),
        x_fixed_adv=adv.cpu(),
        x_eot_adv=eot_adv.cpu(),
    )
