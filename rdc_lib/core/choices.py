"""The one definition of every choice tuple and of the defaults several modules share (torch-free).

Every other module reads its valid choices and shared defaults from here, so a new noise mode, norm or
grid kind is added in one place (``tests/test_single_source.py`` fails on a second definition).
``DEFAULT_DENOISERS`` / ``LEGACY_DENOISERS``: the shipped digits denoiser each ``heads`` loads now / loaded before.
Names: ``GRAD_MODES`` is the attacker's gradient through a purification stage (RDC's LM, DiffPure);
``BACKWARD_MODES`` is how the diffusion classifier computes its own input gradient (same gradient).
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "BACKWARD_MODES",
    "CHOSEN_ON",
    "DATASETS",
    "DEFAULT_DENOISERS",
    "GRAD_MODES",
    "GRID_KINDS",
    "GRID_KIND",
    "GRID_SIGMA_MIN",
    "GRID_WEIGHTINGS",
    "HEADLINE_BUDGET",
    "HEADS",
    "LEGACY_DENOISERS",
    "LM_ETA",
    "LM_GRAPH_MODES",
    "LM_NORMS",
    "LM_OPTIMIZERS",
    "LM_STEPS",
    "LM_STEP_SIZE",
    "NOISE_MODES",
    "NORMS",
    "PURIFY_MODES",
    "ROBUST_GRID_SIGMA_MIN",
    "SELECTION_SPLIT",
    "SMOOTHING_BASES",
    "SOURCE_SPLITS",
    "SPLITS",
    "THREAT_NORMS",
    "TIMESTEPS",
    "VP_DATA_RANGES",
    "VP_PREDICTION_TYPES",
    "VP_TIMESTEP_MODES",
    "check_choice",
]

# ---------------------------------------------------------------- choices
NOISE_MODES = ("stochastic", "fixed")  # defense randomness: fresh draws per call, or one draw reused
GRAD_MODES = ("exact", "bpda")  # attacker's gradient through LM / purification
BACKWARD_MODES = ("chunked", "autograd")  # the DC's own input-gradient computation (same values)
LM_GRAPH_MODES = ("auto", "recompute", "unroll")  # how RDC's exact gradient differentiates through LM
NORMS = ("linf", "l2")  # l_p balls of attacks and of LM's projection
LM_NORMS = NORMS  # LM projects onto the same balls
THREAT_NORMS = (*NORMS, "flow")  # evaluation threat models: "flow" is StAdv's per-pixel flow bound
LM_OPTIMIZERS = ("sgd", "sign", "adam")
HEADS = ("single", "multi")  # one conditional head with a null label, or K + 1 heads
DATASETS = ("digits", "cifar10")
SPLITS = ("train", "val", "test")  # val: a fixed stratified subset of train (rdc_lib.data.splits)
SOURCE_SPLITS = ("train", "test")  # the splits a dataset's files hold (val is carved out of train)
SELECTION_SPLIT = "val"  # the images every selection script (rdc_lib.experiments.selection) reads by default
GRID_KINDS = ("paper", "lognormal", "karras")
GRID_WEIGHTINGS = ("edm", "elbo", "uniform")
PURIFY_MODES = ("ode", "sde")  # DiffPure's reverse process
SMOOTHING_BASES = ("noised-dc", "denoised", "dc")  # base classifiers of randomized smoothing (rdc_lib.certify)
VP_TIMESTEP_MODES = ("interpolate", "nearest")  # diffusers adapter: timestep fed at a sigma between two
VP_DATA_RANGES = ("minus_one_one", "zero_one")  # diffusers adapter: the image range the model was trained on
VP_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusers adapter: what the network predicts

# ---------------------------------------------------------------- shared defaults
TIMESTEPS = 32  # T, the number of noise levels of the diffusion classifier (digits default)
GRID_KIND = "paper"  # linspace(sigma_min, sigma_max, T + 1)[:-1] (docs/paper.md section 3)
GRID_SIGMA_MIN = 1e-4  # the grid's smallest level, the paper's; larger values truncate the ELBO integral below it
# (docs/denoisers.md: the levels below about 0.45 carry the attack on the multi-head DC)
ROBUST_GRID_SIGMA_MIN = 0.6  # the robust setting's grid start on digits (--grid-sigma-min 0.6, docs/grid_levels.md)
LM_STEPS = 5  # N, LM gradient steps (docs/paper.md section 4)
LM_STEP_SIZE = 0.03  # normalised-gradient steps in model space (rdc_lib/diffusion/lm.py explains why not 0.1)
LM_ETA = 8 / 255  # LM ball radius, [0, 1] pixel units

# The shipped digits denoiser each ``heads`` loads when no denoiser is named (docs/denoisers.md: the most robust
# cheap denoiser of each kind), and the one it loaded before (a stored configuration with denoiser "" meant
# this one; rdc_lib.core.paths.stored_denoiser_name). Names of files in data/checkpoints.
DEFAULT_DENOISERS = MappingProxyType(
    {"single": "digits_film_single", "multi": "digits_film_multi_distill9_h16_long_adv"}
)
LEGACY_DENOISERS = MappingProxyType({"single": "digits_single", "multi": "digits_multi"})

# The digits headline ensemble's budget (docs/results.md): the AutoAttack-style members' iterations, restarts,
# Square queries and APGD-T targets, against the fixed-noise DC at T = 16. The study's robust column
# (rdc_lib.experiments.study.ROBUST_SETTINGS) and the benchmarks that measure the headline protocol read it.
HEADLINE_BUDGET = MappingProxyType(
    {"steps": 25, "restarts": 1, "square_queries": 500, "n_target_classes": 3, "timesteps": 16, "noise_mode": "fixed"}
)

# The images each shipped choice was made on ((setting, value) -> "validation" / "test 0-199" / "test 200-359"; the
# "chosen on" column of docs/results.md's headline). The multi-head default won the headline protocol on test digits
# 0-199 among the study's candidates and the single-head default the study's robust column on test digits 0-19
# (docs/denoisers.md); sigma_min 0.6 was picked on test digits 200-359 (docs/grid_levels.md).
CHOSEN_ON = MappingProxyType(
    {
        ("denoiser", DEFAULT_DENOISERS["multi"]): "test 0-199",
        ("denoiser", DEFAULT_DENOISERS["single"]): "test 0-199",
        ("grid_sigma_min", ROBUST_GRID_SIGMA_MIN): "test 200-359",
    }
)


def check_choice(what: str, value: object, valid: tuple[str, ...]) -> None:
    """ValueError naming ``what``, the bad ``value`` and the ``valid`` choices unless value is one of them."""
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(valid)}")
