"""rdc_lib: the Robust Diffusion Classifier (Chen et al., ICML 2024) as a small research library."""

__version__ = "0.1.0"
