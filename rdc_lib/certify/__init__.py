"""Randomized-smoothing certification of (diffusion) classifiers (Cohen et al. 2019).

- ``smoothing``: the Cohen-style certify / predict with selection and estimation draws, the
  Clopper-Pearson bound, abstention and the certified l2 radius sigma * Phi^-1(p_A_lower).
- ``bases``: the base classifiers that are smoothed: the noised diffusion classifier (ELBO over the
  levels at or above the corruption level), denoised smoothing (one denoiser call, then a CNN) and the
  plain DC on noisy inputs.
- ``empirical``: the smoothed classifier as a differentiable model and its empirical robust accuracy
  under l2 attacks with EOT through the smoothing noise (the upper bound the certificate must not exceed).
- ``runner``: ``rdc certify``: per-image records, resumable, with certified accuracy at a list of radii.

Radii and sigma are in pixel space (images in [0, 1]); the model space [-1, 1] doubles both.
"""

from .bases import BASES, DenoisedSmoothing, NoisedDiffusionClassifier, build_base, noised_grid
from .smoothing import (
    ABSTAIN,
    Certificate,
    Smoothed,
    certify,
    clopper_pearson_lower,
    min_draws,
    predict,
    sample_counts,
)

__all__ = [
    "ABSTAIN",
    "BASES",
    "Certificate",
    "DenoisedSmoothing",
    "NoisedDiffusionClassifier",
    "build_base",
    "Smoothed",
    "certify",
    "clopper_pearson_lower",
    "min_draws",
    "noised_grid",
    "predict",
    "sample_counts",
]
