"""Robustness evaluation: defenses x attacks by name (registries), N-evaluation, sanity checks, records."""

from .prediction import predict
from .runner import EvalConfig, evaluate, evaluate_params
from .stats import Accuracy, wilson

__all__ = ["Accuracy", "EvalConfig", "evaluate", "evaluate_params", "predict", "wilson"]
