"""Figures and the experiments behind them, for the notebooks.

``rdc_lib.viz.core``: plotly figure builders (data in, ``go.Figure`` out, no display, no state) and what they share;
the figures of each notebook beside it (``bayes``, ``lm``, ``attacks``, ``sweep``, ``theory``, ...).
``rdc_lib.experiments.analysis``, ``.timing``, ``.trajectories``: the measurements the figures plot (tensors in,
dataclasses out).
``rdc_lib.viz.widgets``: ipywidgets explorers built on these, with a static fallback.
"""

from ..experiments.analysis import (
    LossSurface,
    NoiseSpread,
    denoise_across_sigmas,
    logit_difference_std,
    logit_spread_vs_timesteps,
    loss_surface,
    repeated_logits,
)
from ..experiments.timing import CallTiming, CostComparison, compare_cost, time_per_call
from ..experiments.trajectories import (
    AttackTrajectories,
    LMTrajectories,
    QueryRecorder,
    lm_trajectories,
    record_attack,
)
from .attacks import (
    attack_step_figure,
    finite_difference_figure,
    gradient_cosine_figure,
    logits_over_iterations_figure,
    loss_surface_3d_figure,
    loss_surface_figure,
)
from .bayes import cost_figure, elbo_sum_figure, elbo_terms_figure, noise_spread_figure, posterior_figure
from .core import image_grid_figure, image_trace, table_figure
from .lm import lm_curves_figure, lm_step_figure, posterior_change_figure
from .sweep import accuracy_vs_eps_figure

__all__ = [
    "AttackTrajectories",
    "CallTiming",
    "CostComparison",
    "LMTrajectories",
    "LossSurface",
    "NoiseSpread",
    "QueryRecorder",
    "accuracy_vs_eps_figure",
    "attack_step_figure",
    "compare_cost",
    "cost_figure",
    "denoise_across_sigmas",
    "elbo_sum_figure",
    "elbo_terms_figure",
    "finite_difference_figure",
    "gradient_cosine_figure",
    "image_grid_figure",
    "image_trace",
    "lm_curves_figure",
    "lm_step_figure",
    "lm_trajectories",
    "logit_difference_std",
    "logit_spread_vs_timesteps",
    "logits_over_iterations_figure",
    "loss_surface",
    "loss_surface_3d_figure",
    "loss_surface_figure",
    "noise_spread_figure",
    "posterior_change_figure",
    "posterior_figure",
    "record_attack",
    "repeated_logits",
    "table_figure",
    "time_per_call",
]
