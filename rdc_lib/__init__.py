"""rdc_lib: the Robust Diffusion Classifier (Chen et al., ICML 2024) as a small research library.

The public names import from here (``from rdc_lib import DiffusionClassifier, build_attack, load_dataset``).
They load lazily (PEP 562): ``import rdc_lib`` imports no torch and no submodule; a name is imported from
its home module the first time it is asked for. :data:`PUBLIC` maps each name to that home,
``"module:attribute"``; it is the one place to change when a name moves.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

PUBLIC: dict[str, str] = {
    # data
    "DATASETS": "rdc_lib.data:DATASETS",
    "dataset_info": "rdc_lib.data:dataset_info",
    "load_dataset": "rdc_lib.data:load_dataset",
    # denoisers
    "Denoiser": "rdc_lib.models.base:Denoiser",
    "DenoiserConfig": "rdc_lib.models.config:DenoiserConfig",
    "EDMDenoiser": "rdc_lib.models.precond:EDMDenoiser",
    "SmallUNet": "rdc_lib.models.unet_small:SmallUNet",
    "DDPMpp": "rdc_lib.models.ddpmpp:DDPMpp",
    "OptimalDenoiser": "rdc_lib.models.optimal:OptimalDenoiser",
    "build_denoiser": "rdc_lib.models.config:build_denoiser",
    "load_denoiser": "rdc_lib.models.checkpoints:load_denoiser",
    "save_denoiser": "rdc_lib.models.checkpoints:save_denoiser",
    "read_checkpoint": "rdc_lib.models.checkpoints:read_checkpoint",
    "KDiffusionDenoiser": "rdc_lib.models.diffusers_adapter:KDiffusionDenoiser",
    "VPDiffusersDenoiser": "rdc_lib.models.diffusers_adapter:VPDiffusersDenoiser",
    "load_diffusers_denoiser": "rdc_lib.models.diffusers_adapter:load_diffusers_denoiser",
    # noise levels
    "NoiseGrid": "rdc_lib.diffusion.schedules:NoiseGrid",
    "make_grid": "rdc_lib.diffusion.schedules:make_grid",
    "restrict_grid": "rdc_lib.diffusion.schedules:restrict_grid",
    # the diffusion classifier (DC)
    "DiffusionClassifier": "rdc_lib.defenses.classifier:DiffusionClassifier",
    "POSTERIOR_SCALE_NOTE": "rdc_lib.defenses.classifier:POSTERIOR_SCALE_NOTE",
    "bayes_posterior": "rdc_lib.defenses.classifier:bayes_posterior",
    # likelihood maximization (LM) and the robust diffusion classifier (RDC)
    "LMConfig": "rdc_lib.diffusion.lm:LMConfig",
    "LMNoise": "rdc_lib.diffusion.lm:LMNoise",
    "draw_lm_noise": "rdc_lib.diffusion.lm:draw_lm_noise",
    "likelihood_maximization": "rdc_lib.diffusion.lm:likelihood_maximization",
    "lm_bpda": "rdc_lib.diffusion.lm_grad:lm_bpda",
    "lm_exact": "rdc_lib.diffusion.lm_grad:lm_exact",
    "RDCNoise": "rdc_lib.defenses.rdc:RDCNoise",
    "RobustDiffusionClassifier": "rdc_lib.defenses.rdc:RobustDiffusionClassifier",
    # other defenses
    "DiffPure": "rdc_lib.defenses.purify:DiffPure",
    "DigitsCNN": "rdc_lib.defenses.baselines:DigitsCNN",
    "load_classifier": "rdc_lib.defenses.baselines:load_classifier",
    # attacks
    "ATTACK_NAMES": "rdc_lib.attacks:ATTACK_NAMES",
    "Attack": "rdc_lib.attacks:Attack",
    "AttackResult": "rdc_lib.attacks:AttackResult",
    "APGD": "rdc_lib.attacks:APGD",
    "BPDA": "rdc_lib.attacks:BPDA",
    "EOT": "rdc_lib.attacks:EOT",
    "FGSM": "rdc_lib.attacks:FGSM",
    "NeighbourAttack": "rdc_lib.attacks:NeighbourAttack",
    "PGD": "rdc_lib.attacks:PGD",
    "Square": "rdc_lib.attacks:Square",
    "StAdv": "rdc_lib.attacks:StAdv",
    "build_attack": "rdc_lib.attacks:build_attack",
    "register_attack": "rdc_lib.attacks:register_attack",
    "run_ensemble": "rdc_lib.attacks:run_ensemble",
    "transfer_pgd": "rdc_lib.attacks:transfer_pgd",
    # gradient diagnostics
    "EOT_TARGET": "rdc_lib.evaluation.grad:EOT_TARGET",
    "check_gradients_finite_nonzero": "rdc_lib.evaluation.grad:check_gradients_finite_nonzero",
    "finite_difference_check": "rdc_lib.evaluation.grad:finite_difference_check",
    "gradient_cosine_similarity": "rdc_lib.evaluation.grad:gradient_cosine_similarity",
    "suggest_eot": "rdc_lib.evaluation.grad:suggest_eot",
    "DefenseSpec": "rdc_lib.defenses:DefenseSpec",
    "build_defense": "rdc_lib.defenses:build_defense",
    "register_defense": "rdc_lib.defenses:register_defense",
    # evaluation
    "EvalConfig": "rdc_lib.evaluation.runner:EvalConfig",
    "evaluate": "rdc_lib.evaluation.runner:evaluate",
    "robustness_protocol": "rdc_lib.evaluation.protocol:robustness_protocol",
    "wilson": "rdc_lib.evaluation.stats:wilson",
    # theory (docs/paper.md section 6)
    "denoiser_error_by_sigma": "rdc_lib.experiments.theory:denoiser_error_by_sigma",
    "dominant_training_image": "rdc_lib.experiments.theory:dominant_training_image",
    "gap_by_sigma": "rdc_lib.experiments.theory:gap_by_sigma",
    "margin_by_sigma": "rdc_lib.experiments.theory:margin_by_sigma",
    "optimal_classifier": "rdc_lib.experiments.theory:optimal_classifier",
    "smoothed_surrogate": "rdc_lib.experiments.theory:smoothed_surrogate",
    "nearest_neighbour_agreement": "rdc_lib.experiments.nearest_neighbour:nearest_neighbour_agreement",
    "nearest_neighbour_predict": "rdc_lib.experiments.nearest_neighbour:nearest_neighbour_predict",
    "nn_certified_radius": "rdc_lib.experiments.nearest_neighbour:nn_certified_radius",
    # certified robustness
    "CertifyConfig": "rdc_lib.certify.runner:CertifyConfig",
    "build_base": "rdc_lib.certify:build_base",
    # figures and explorers
    "attack_explorer": "rdc_lib.viz.widgets:attack_explorer",
    "denoise_across_sigmas": "rdc_lib.experiments.analysis:denoise_across_sigmas",
    "image_grid_figure": "rdc_lib.viz.core:image_grid_figure",
    "lm_explorer": "rdc_lib.viz.widgets:lm_explorer",
    "posterior_figure": "rdc_lib.viz.bayes:posterior_figure",
    "show_explorer": "rdc_lib.viz.widgets:show_explorer",
    # seeded randomness
    "make_generator": "rdc_lib.core.utils:make_generator",
}

__all__ = sorted(PUBLIC)


def __getattr__(name: str) -> Any:
    """Import a public name from its home module on first use (PEP 562) and keep it in this namespace."""
    target = PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'rdc_lib' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"rdc_lib.{name} is listed as {target!r} in rdc_lib.PUBLIC, which does not resolve: {exc}"
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *PUBLIC})
