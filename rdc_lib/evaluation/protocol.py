"""The attack protocol of notebook 05 and benchmarks/drivers/theory_report.py: every attack on one model, one image
set and one threat model, with per-attack and worst-case accuracies (counts and 95% Wilson intervals).

Attacks come from the same registry as ``rdc eval`` (rdc_lib.attacks.registry), plus precomputed images,
transfer from source models and the nearest-neighbour attack of rdc_lib.experiments.theory; every returned image is
re-classified with the evaluation's ``correct_all`` (rdc_lib.evaluation.prediction).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attacks.neighbour import NeighbourAttack
from ..attacks.registry import build_attack, get_attack
from ..attacks.transfer import transfer_pgd
from ..core.utils import check_images
from .attacking import run_attack
from .prediction import correct_all
from .stats import Accuracy, wilson

__all__ = ["PROTOCOL_ATTACKS", "ProtocolResult", "robustness_protocol"]


@dataclass
class ProtocolResult:
    """Outcome of :func:`robustness_protocol` on N examples: which examples survive which attack."""

    clean_correct: Tensor  # (N,) bool
    robust: dict[str, Tensor]  # attack -> (N,) bool: correct on x_adv (on every re-classification)
    x_adv: dict[str, Tensor]  # attack -> (N, C, H, W) the image that attack returned (x if not run)
    seconds: dict[str, float]
    on_survivors: tuple[str, ...] = ()  # attacks run only on examples every earlier attack left robust

    @property
    def n(self) -> int:
        return int(self.clean_correct.numel())

    @property
    def worst(self) -> Tensor:
        """(N,) bool: correct on the clean image and after every attack."""
        out = self.clean_correct.clone()
        for flags in self.robust.values():
            out &= flags
        return out

    def accuracy(self, name: str) -> Accuracy:
        """'clean', 'worst' or an attack name -> count with its 95% Wilson interval."""
        flags = {"clean": self.clean_correct, "worst": self.worst}.get(name)
        if flags is None:
            if name not in self.robust:
                raise ValueError(f"unknown entry {name!r}; valid choices: clean, worst, {', '.join(self.robust)}")
            flags = self.robust[name]
        return wilson(int(flags.sum()), self.n)

    def x_worst(self) -> Tensor:
        """(N, C, H, W): per example the image of the first attack that broke it, else the first attack's image."""
        names = list(self.robust)
        out = self.x_adv[names[0]].clone() if names else None
        assert out is not None, "no attacks were run"
        done = ~self.robust[names[0]]
        for name in names[1:]:
            take = ~self.robust[name] & ~done
            out[take] = self.x_adv[name][take]
            done |= take
        return out

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "clean": self.accuracy("clean").as_dict(),
            "worst": self.accuracy("worst").as_dict(),
            "attacks": {k: self.accuracy(k).as_dict() for k in self.robust},
            "seconds": dict(self.seconds),
            "on_survivors": list(self.on_survivors),
        }


def robustness_protocol(
    model: Callable[[Tensor], Tensor],  # x (B, C, H, W) in [0, 1] -> logits (B, K)
    x: Tensor,  # (N, C, H, W) in [0, 1]
    y: Tensor,  # (N,) labels
    *,
    norm: str = "linf",
    eps: float,
    attacks: tuple[str, ...] | None = None,  # run order; default: precomputed, transfers, neighbour, PROTOCOL_ATTACKS
    steps: int = 10,  # iterations of the gradient attacks
    square_queries: int = 500,  # Square's query budget
    eot: int = 1,  # EOT draws for the gradient attacks (stochastic models)
    n_eval: int = 1,  # re-classifications of each adversarial image (stochastic models)
    seed: int = 0,
    transfer_from: dict[str, Callable[[Tensor], Tensor]] | None = None,  # name -> source model
    transfer_steps: int = 20,
    neighbours: tuple[Tensor, Tensor] | None = None,  # (train_x, train_y) for the 'neighbour' attack
    n_neighbours: int = 8,
    precomputed: dict[str, Tensor] | None = None,  # name -> (N, C, H, W) adversarial images to verify
    on_survivors: tuple[str, ...] = (),  # run these only on examples still robust to every earlier attack
    batch_size: int = 100,  # rows per network call
) -> ProtocolResult:
    """Every attack of the protocol on one model, one image set and one threat model.

    An entry of ``attacks`` is a key of ``precomputed`` (images verified as they are), a key of
    ``transfer_from`` (``transfer_pgd`` on that source model, margin loss, ``transfer_steps``),
    'neighbour' (:class:`NeighbourAttack`, needs ``neighbours``) or a name of
    the attack registry (``rdc_lib.attacks.build_attack``) (gradient attacks with ``steps``/``eot``; a query-budget
    attack, registry fact ``budget == 'queries'`` such as 'square', with ``square_queries``). Each runs on every
    clean-correct example (a standalone accuracy) unless it is in ``on_survivors``. Every returned image is
    re-classified ``n_eval`` times; an example is robust to an attack if it was correct clean and on every
    re-classification.
    """
    check_images(x)
    y = y.to(x.device)
    precomputed, transfer_from = dict(precomputed or {}), dict(transfer_from or {})
    if attacks is None:
        attacks = (*precomputed, *transfer_from, *(("neighbour",) if neighbours is not None else ()), *PROTOCOL_ATTACKS)
    unknown = [n for n in on_survivors if n not in attacks]
    if unknown:
        raise ValueError(f"on_survivors names {unknown}, which are not in attacks {list(attacks)}")
    clean_correct = correct_all(model, x, y, 1, batch_size)
    robust: dict[str, Tensor] = {}
    images: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}

    def maker(name: str) -> Callable[[Tensor], Tensor]:
        if name in precomputed:
            adv = precomputed[name]
            if tuple(adv.shape) != tuple(x.shape):
                raise ValueError(f"precomputed[{name!r}] has shape {tuple(adv.shape)}, expected {tuple(x.shape)}")
            return lambda m: adv.to(x.device)[m]
        if name in transfer_from:
            source = transfer_from[name]
            return lambda m: transfer_pgd(source, x[m], y[m], norm=norm, eps=eps, steps=transfer_steps)
        if name == "neighbour":
            if neighbours is None:
                raise ValueError("attack 'neighbour' needs neighbours=(train_x, train_y)")
            atk = NeighbourAttack(
                model, neighbours[0], neighbours[1], norm=norm, eps=eps, n_neighbours=n_neighbours, seed=seed
            )
        elif get_attack(name).budget == "queries":  # a query-budget attack (Square): square_queries, no EOT
            atk = build_attack(name, model, norm=norm, eps=eps, steps=square_queries, seed=seed)
        else:
            atk = build_attack(name, model, norm=norm, eps=eps, steps=steps, eot=eot, seed=seed)
        return lambda m: run_attack(atk, model, x[m], y[m])[0]  # the evaluation's own attack runner

    for name in attacks:
        make = maker(name)
        todo = clean_correct.clone()
        if name in on_survivors:
            for flags in robust.values():
                todo &= flags
        start = time.perf_counter()
        x_adv = x.clone()
        flags = torch.zeros_like(clean_correct)
        if todo.any():
            x_adv[todo] = make(todo).detach().to(x.dtype)
            flags[todo] = correct_all(model, x_adv[todo], y[todo], n_eval, batch_size)
        robust[name], images[name] = flags, x_adv
        seconds[name] = time.perf_counter() - start
    return ProtocolResult(
        clean_correct.cpu(),
        {k: v.cpu() for k, v in robust.items()},
        {k: v.cpu() for k, v in images.items()},
        seconds,
        tuple(n for n in attacks if n in on_survivors),
    )


PROTOCOL_ATTACKS = ("pgd", "apgd-ce", "apgd-dlr", "square")
