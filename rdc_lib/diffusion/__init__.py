"""Diffusion maths as pure functions: noise grids and weights, the EDM training loss, ELBO terms."""

from .elbo import elbo_terms
from .loss import edm_loss
from .schedules import GRIDS, WEIGHTINGS, NoiseGrid, lognormal_density, make_grid, noise_levels, restrict_grid

__all__ = ["GRIDS", "WEIGHTINGS", "NoiseGrid", "edm_loss", "elbo_terms", "lognormal_density", "make_grid",
           "noise_levels", "restrict_grid"]
