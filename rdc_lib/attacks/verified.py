"""AutoAttack's verified protocol, one definition for an ensemble (``ensemble.run_ensemble``) and for a single
attack (``rdc_lib.evaluation.attacking.run_single``): the same model calls in the same order, so a stochastic
defense draws its randomness alike on both paths.

- :func:`clean_verified`: a clean call, and a clean error counts only if it holds in every one of ``reads`` calls
  (as an attack's success must);
- :func:`verified_run`: the attack on the images still robust, its returned images re-read ``draws`` times (all
  must misclassify) and their mean margin (a robust image keeps the returned point only when it lowers the margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.utils import check_labels
from .base import Attack, AttackResult, Model
from .losses import margin

__all__ = ["VerifiedRun", "clean_verified", "reads", "verified_run"]


@torch.no_grad()
def reads(model: Model, x: Tensor, n: int) -> Tensor:
    """Logits (n, N, K) of ``n`` calls on images x (N, C, H, W), batched together."""
    return model(x.repeat(n, 1, 1, 1)).reshape(n, x.shape[0], -1)


def clean_verified(model: Model, x: Tensor, y: Tensor, n_reads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Clean logits (N, K), the images to attack (N,) bool and the calls spent per image (N,) int64.

    With ``n_reads`` > 1 (stochastic models) an image is a clean error only if ``n_reads`` calls all misclassify
    it (the first call and ``n_reads`` - 1 more): an image one unlucky draw got wrong is attacked like the others."""
    clean = reads(model, x, 1)[0]
    check_labels(y, clean.shape[1], batch=x.shape[0])
    queries = torch.ones(x.shape[0], dtype=torch.int64, device=x.device)
    ok = clean.argmax(dim=1) == y
    if n_reads > 1 and not ok.all():
        wrong = (~ok).nonzero().flatten()
        queries[wrong] += n_reads - 1
        ok[wrong[(reads(model, x[wrong], n_reads - 1).argmax(dim=2) == y[wrong]).any(dim=0)]] = True
    return clean, ok, queries


@dataclass(frozen=True)
class VerifiedRun:
    result: AttackResult  # the attack's own result on the images it was given
    fooled: Tensor  # (M,) bool: every verification call misclassifies (the attack's own flag without draws)
    margin: Tensor  # (M,) mean margin over the verification calls (the attack's own without draws)
    spent: Tensor  # (M,) int64: the attack's queries plus the verification calls


def verified_run(model: Model, attack: Attack, x: Tensor, y: Tensor, draws: int) -> VerifiedRun:
    """``attack`` on x (M, C, H, W), y (M,), its images read back ``draws`` times (0: trust the attack's flags)."""
    res = attack.run(x, y)
    if draws == 0:
        return VerifiedRun(res, res.success, res.margin.to(x.dtype), res.queries.clone())
    logits = reads(model, res.x_adv, draws)
    fooled = (logits.argmax(dim=2) != y).all(dim=0)
    m = torch.stack([margin(logits[d], y) for d in range(draws)]).mean(dim=0).to(x.dtype)
    return VerifiedRun(res, fooled, m, res.queries + draws)
