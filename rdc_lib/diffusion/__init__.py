"""Diffusion maths as pure functions: noise grids and weights, the EDM training loss, ELBO terms."""

from ..core.choices import GRID_KINDS, GRID_WEIGHTINGS
from .elbo import elbo_terms
from .loss import edm_loss
from .schedules import NoiseGrid, lognormal_density, make_grid, noise_levels, restrict_grid

__all__ = [
    "GRID_KINDS",
    "GRID_WEIGHTINGS",
    "NoiseGrid",
    "edm_loss",
    "elbo_terms",
    "lognormal_density",
    "make_grid",
    "noise_levels",
    "restrict_grid",
]
