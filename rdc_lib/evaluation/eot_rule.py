"""The EOT size of an evaluation from the gradient-variance rule (``rdc eval --eot auto``).

The rule is ``rdc_lib.evaluation.grad.suggest_eot`` with the library's one target ``EOT_TARGET``: from the cosines of
repeated input gradients of the defense on the first ``RULE_IMAGES`` images of the validation split
(``SELECTION_SPLIT``: the EOT size is a choice, so it is never made on test images; ``RULE_SAMPLES`` independent
draws each; the same images for every slice, so the shards of one run get one size), the smallest M at which
two independent M-draw averages reach the target. A deterministic defense gives 1. The size is then checked by
the evaluation's ``eot_convergence`` check (twice the draws must not break more than the tolerance).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core.choices import SELECTION_SPLIT
from ..data import load_dataset
from ..defenses import build_defense
from .grad import EOT_TARGET, gradient_cosine_similarity, suggest_eot
from .runner import defense_spec

if TYPE_CHECKING:
    from .runner import EvalConfig

__all__ = ["AUTO", "RULE_IMAGES", "RULE_SAMPLES", "eot_by_rule", "resolve_auto_eot"]

AUTO = "auto"  # the value of ``rdc eval --eot`` that asks for the rule
RULE_IMAGES = 8  # images of the evaluation (its first) the rule measures the gradients on
RULE_SAMPLES = 4  # independent gradient draws per image


def eot_by_rule(model: nn.Module, x: Tensor, y: Tensor, *, samples: int = RULE_SAMPLES) -> dict:
    """The rule on images x (B, C, H, W) in [0, 1] with labels y (B,): ``{"eot": M, ...}`` with the cosines it
    read (mean, and the 10th percentile used), the target, and the images and draws measured."""
    cos = gradient_cosine_similarity(model, x, y, n_samples=samples)
    sug = suggest_eot(cos, target=EOT_TARGET)
    return {
        "eot": sug.eot,
        "mean_cosine": cos.mean,
        "cosine_used": sug.cosine,
        "target": sug.target,
        "quantile": sug.quantile,
        "capped": sug.capped,
        "n": int(x.shape[0]),
        "samples": samples,
    }


def resolve_auto_eot(cfg: "EvalConfig", device: str | torch.device = "cpu") -> tuple["EvalConfig", nn.Module, dict]:
    """(``cfg`` with ``eot`` set by the rule, the defense it was measured on, the rule's numbers), measured on the
    first RULE_IMAGES validation images whatever ``cfg``'s offset (the EOT size is the defense's: the shards of one run
    get the same size); the defense is returned so the evaluation need not build it again."""
    x, y = load_dataset(cfg.dataset, SELECTION_SPLIT, root=cfg.data_root or None)
    x, y = x[:RULE_IMAGES].to(device), y[:RULE_IMAGES].to(device)
    model = build_defense(defense_spec(cfg), torch.device(device))
    rule = eot_by_rule(model, x, y)
    return cfg.replace(eot=rule["eot"]), model, rule
