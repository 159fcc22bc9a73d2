"""Accuracy with its count and a 95% Wilson score interval."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    value: float          # correct / total in [0, 1]
    low: float            # 95% Wilson interval
    high: float

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.value:.1f}% ({self.correct}/{self.total}, 95% CI {100 * self.low:.1f}-{100 * self.high:.1f})"


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
