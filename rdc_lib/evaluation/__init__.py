"""Robustness evaluation: defences by name, attacks, N-evaluation, sanity checks, records."""

from .defenses import DEFENSES, DefenseSpec, build_defense
from .runner import ATTACKS, EvalConfig, evaluate, evaluate_params, predict
from .stats import Accuracy, wilson

__all__ = ["ATTACKS", "DEFENSES", "Accuracy", "DefenseSpec", "EvalConfig", "build_defense",
           "evaluate", "evaluate_params", "predict", "wilson"]
