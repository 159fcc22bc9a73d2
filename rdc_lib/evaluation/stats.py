"""Accuracy with its count and a 95% Wilson score interval; two classifiers compared on the same images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    value: float  # correct / total in [0, 1]
    low: float  # 95% Wilson interval
    high: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{100 * self.value:.1f}% ({self.correct}/{self.total}, 95% CI {100 * self.low:.1f}-{100 * self.high:.1f})"
        )


def wilson(correct: int, total: int, z: float = 1.959964) -> Accuracy:
    """Accuracy ``correct / total`` with its Wilson score interval (z = 1.96 for 95%)."""
    if total < 0 or correct < 0 or correct > total:
        raise ValueError(f"need 0 <= correct <= total, got correct={correct}, total={total}")
    if total == 0:
        return Accuracy(0, 0, float("nan"), 0.0, 1.0)
    p = correct / total
    denom = 1 + z**2 / total
    centre = (p + z**2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denom
    return Accuracy(correct, total, p, max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class PairedComparison:
    """Two robustness outcomes on the same images: how many each keeps alone, and the exact McNemar p-value."""

    both: int  # images both keep
    a_only: int  # images only the first keeps
    b_only: int  # images only the second keeps
    neither: int
    p_value: float  # two-sided exact McNemar test (binomial on the a_only + b_only discordant images), in [0, 1]

    def as_dict(self) -> dict:
        return asdict(self)


def paired_comparison(a: Sequence[bool], b: Sequence[bool]) -> PairedComparison:
    """Compare per-image outcomes ``a`` and ``b`` (True = robust) of two defenses on the same images, in the same
    order. Unpaired intervals of two accuracies overlap long before the difference is in doubt; the paired test
    asks only whether the images one defense keeps alone outnumber those the other keeps alone by chance."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same images: got {len(a)} and {len(b)} outcomes")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    both = sum(1 for x, y in zip(a, b) if x and y)
    n = a_only + b_only
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return PairedComparison(both, a_only, b_only, len(a) - both - a_only - b_only, min(1.0, 2 * tail))
