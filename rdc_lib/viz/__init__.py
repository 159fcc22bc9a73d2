"""Figures and the experiments behind them, for the notebooks.

``rdc_lib.viz.core``: plotly figure builders (data in, ``go.Figure`` out, no display, no state).
``rdc_lib.experiments.analysis``: small measurements the figures plot (tensors in, dataclasses out).
``rdc_lib.viz.widgets``: ipywidgets explorers built on these, with a static fallback.
"""

from ..experiments import analysis as _analysis
from ..experiments.analysis import (
    AttackTrajectories,
    CallTiming,
    CostComparison,
    LMTrajectories,
    LossSurface,
    NoiseSpread,
    QueryRecorder,
    compare_cost,
    denoise_across_sigmas,
    lm_trajectories,
    logit_difference_std,
    logit_spread_vs_T,
    loss_surface,
    record_attack,
    repeated_logits,
    time_per_call,
)
from . import core as _core
from .core import (
    accuracy_vs_eps_figure,
    attack_step_figure,
    cost_figure,
    elbo_sum_figure,
    elbo_terms_figure,
    finite_difference_figure,
    gradient_cosine_figure,
    image_grid_figure,
    image_trace,
    lm_curves_figure,
    lm_step_figure,
    logits_over_iterations_figure,
    loss_surface_3d_figure,
    loss_surface_figure,
    noise_spread_figure,
    posterior_change_figure,
    posterior_figure,
    table_figure,
)

__all__ = sorted([*_analysis.__all__, *_core.__all__])  # every name of the two modules, re-exported
