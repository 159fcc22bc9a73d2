"""Seconds per call, measured until they mean something: repeated calls, several rounds, one thread, a flag when
the rounds disagree; and the cost of diffusion classifiers side by side (network passes beside the seconds).

:func:`time_per_call` times one function; :func:`compare_cost` times one call of each classifier (notebook 01's
cost panel, rdc_lib.viz.cost_figure). No function prints or displays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..defenses.classifier import DiffusionClassifier

__all__ = ["MAX_TIMING_SPREAD", "MIN_TIMING_SECONDS", "CallTiming", "CostComparison", "compare_cost", "time_per_call"]

MIN_TIMING_SECONDS = 0.5  # a round repeats the call until it has run this long (timer and scheduling noise)
MAX_TIMING_SPREAD = 0.25  # rounds that differ by more than this (relative) make a timing untrustworthy


@dataclass
class CallTiming:
    """Seconds per call of one function: the best of ``rounds`` rounds of ``calls`` calls each.

    spread: (slowest round - fastest round) / fastest round; a timing is ``trusted`` when the rounds
    agree within MAX_TIMING_SPREAD (a loaded machine or too little work shows up as a large spread).
    """

    seconds: float
    spread: float
    calls: int
    rounds: int

    @property
    def trusted(self) -> bool:
        return self.spread <= MAX_TIMING_SPREAD


def time_per_call(
    fn: Callable[[], object],
    *,
    rounds: int = 2,
    min_seconds: float = MIN_TIMING_SECONDS,
    threads: int | None = 1,
    sync: Callable[[], object] | None = None,
    warmup: Callable[[], object] | None = None,
) -> CallTiming:
    """Time ``fn()`` without gradients: ``rounds`` rounds, each repeating the call until ``min_seconds`` have passed.

    ``threads``: torch CPU threads during the timing (restored after; None: leave as is). One thread by
    default, like benchmarks/timing/bench_classifier.py: with several threads on a shared machine, a small call
    measures thread scheduling rather than work. ``sync``: called before each clock read (e.g.
    ``torch.cuda.synchronize`` for a GPU). ``warmup``: called once before timing (default ``fn``; a cheaper
    call that touches the same code, e.g. on one image, saves a full call).
    """
    if rounds < 2:
        raise ValueError(
            f"rounds must be >= 2 (the spread between rounds says whether to trust the timing), got {rounds}"
        )
    sync = sync or (lambda: None)
    saved = torch.get_num_threads()
    per_round: list[float] = []
    calls = 1
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.no_grad():
            (warmup or fn)()  # first-call initialisation is not part of the cost
            for r in range(rounds):
                n, t0 = 0, time.perf_counter()
                sync()
                while True:
                    fn()
                    n += 1
                    sync()
                    elapsed = time.perf_counter() - t0
                    if (r > 0 and n >= calls) or (r == 0 and elapsed >= min_seconds):
                        break
                calls = n  # every round makes as many calls as the first one needed
                per_round.append(elapsed / n)
    finally:
        torch.set_num_threads(saved)
    best = min(per_round)
    return CallTiming(best, (max(per_round) - best) / best, calls, rounds)


@dataclass
class CostComparison:
    """Network passes and measured seconds of one classifier call on ``images`` images, per classifier."""

    names: list[str]
    passes: list[int]
    timings: list[CallTiming]
    images: int
    threads: int | None

    @property
    def seconds(self) -> list[float]:
        return [t.seconds for t in self.timings]

    @property
    def trusted(self) -> bool:
        return all(t.trusted for t in self.timings)

    def speedup(self, slow: int = 0, fast: int = -1) -> float:
        """Seconds of classifier ``slow`` over seconds of classifier ``fast`` (by position)."""
        return self.seconds[slow] / self.seconds[fast]

    def note(self) -> str:
        """How the seconds were measured, and whether to trust them (for a figure title or a print)."""
        how = (
            f"best of {self.timings[0].rounds} rounds, {self.threads} thread(s)"
            if self.threads
            else f"best of {self.timings[0].rounds} rounds"
        )
        if self.trusted:
            return f"{how}; rounds agree within {MAX_TIMING_SPREAD:.0%}"
        worst = max(t.spread for t in self.timings)
        return (
            f"{how}; TOO NOISY TO TRUST: rounds differ by up to {worst:.0%} (a loaded machine, or too little "
            f"work: use more images); the passes are exact"
        )


def compare_cost(
    classifiers: Mapping[str, DiffusionClassifier],
    x: Tensor,
    *,
    rounds: int = 2,
    threads: int | None = 1,
    min_seconds: float = MIN_TIMING_SECONDS,
) -> CostComparison:
    """Passes (``network_passes``) and seconds (:func:`time_per_call`) of one call of each classifier on
    x (B, C, H, W)."""
    if x.shape[0] < 1:
        raise ValueError("compare_cost needs at least one image")
    sync = torch.cuda.synchronize if x.is_cuda else None
    names = list(classifiers)
    passes = [classifiers[n].network_passes(x.shape[0]) for n in names]
    timings = [
        time_per_call(
            lambda dc=classifiers[n]: dc(x),
            rounds=rounds,
            threads=threads,
            sync=sync,
            min_seconds=min_seconds,
            warmup=lambda dc=classifiers[n]: dc(x[:1]),
        )
        for n in names
    ]
    return CostComparison(names, passes, timings, x.shape[0], threads)
