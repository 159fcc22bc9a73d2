"""The diffusion classifier (DC): Bayes' rule over conditional diffusion ELBOs (docs/paper.md section 3).

logits[b, y] = -sum_t w_t E||D(x_b + sigma_t eps; sigma_t, y) - x_b||^2 + log p(y), i.e. an estimate of
log p(x_b | y) + log p(y) up to a constant shared by all classes; softmax gives p(y | x_b).

Randomness is owned by the module (never the global RNG):
- ``noise_mode="stochastic"``: fresh eps per call from the module's generator (seeded by ``seed``).
- ``noise_mode="fixed"``: the same eps on every call, one eps per level shared by every image, derived
  from ``seed``: the classifier is then a deterministic function an attacker can differentiate exactly.

Gradients w.r.t. the input (``backward_mode``, one of ``rdc_lib.core.choices.BACKWARD_MODES``; not to be
confused with RDC's ``grad_mode``, the attacker's gradient through LM): ``backward_mode="chunked"`` (default) runs the
forward without storing activations and recomputes them chunk by chunk in the backward pass, so peak memory does not
grow with K x T; when a single chunk holds every level (small inputs: the recomputation would hold the
same activations at once), the chunked mode keeps the forward's graph instead and saves the extra
forward (same gradient, same peak memory). ``backward_mode="autograd"`` always keeps the plain graph
(reference for tests).

``sparse_backward`` (default on; a fast path of rdc_lib.fast_paths): with a network that needs one pass per
class (single-head), the chunked mode's backward runs only the (image, class) pairs whose incoming gradient is
nonzero (rdc_lib.defenses.dc_backward.SparseELBOSum): DLR-type attack losses need 3 of 10 classes. Off: the
backward of every pair, as before. The same gradient either way.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..core.choices import BACKWARD_MODES, NOISE_MODES, TIMESTEPS, check_choice
from ..core.utils import OwnedRandomness, check_images
from ..diffusion.elbo import draw_noise, elbo_terms, levels_per_chunk
from ..diffusion.schedules import NoiseGrid, make_grid
from ..models.base import Denoiser
from .dc_backward import ChunkedELBOSum, SparseELBOSum


def bayes_posterior(logits: Tensor, pixels: int, log_prior: Tensor | None = None) -> Tensor:
    """Bayes posterior p(y | x) (..., K) from diffusion-classifier logits (..., K) = -L(x, y) + log p(y).

    L is a per-pixel *mean* of the weighted denoising error, so the log-likelihood it estimates is
    -pixels * L (the sum over the d = C*H*W values of an image; docs/paper.md section 3), and
    ``softmax(logits)`` is Bayes' rule at temperature d: nearly uniform for every input. This undoes
    the temperature: softmax(d * (logits - log p(y)) + log p(y)). ``log_prior`` (K,) is the prior
    inside ``logits`` (None: uniform, which cancels). The argmax is the classifier's either way.
    """
    if not isinstance(pixels, int) or isinstance(pixels, bool) or pixels < 1:
        raise ValueError(f"pixels must be the number of values per image (C*H*W, an int >= 1), got {pixels!r}")
    if log_prior is None:
        return (logits * pixels).softmax(-1)
    log_prior = log_prior.to(logits.device, logits.dtype)
    return ((logits - log_prior) * pixels + log_prior).softmax(-1)


POSTERIOR_SCALE_NOTE = "Bayes posterior, log p(x | y) summed over d = {d} pixels"


class DiffusionClassifier(OwnedRandomness, nn.Module):
    """x (B, C, H, W) in [0, 1] -> logits (B, K) = estimated log p(x|y) + log p(y) + const."""

    def __init__(
        self,
        denoiser: Denoiser,
        grid: NoiseGrid | None = None,  # default: paper grid, T = 32, EDM weights
        *,
        prior: Tensor | None = None,  # (K,) class probabilities; default uniform
        shared_noise: bool = True,  # same eps for every class
        noise_mode: Literal["stochastic", "fixed"] = "stochastic",
        seed: int = 0,  # seeds the module's own generator
        backward_mode: Literal["chunked", "autograd"] = "chunked",  # the DC's own input gradient
        chunk_size: int = 4096,  # max (image, class, level) triples per call
        sparse_backward: bool = True,  # backward only of pairs with nonzero cotangent
    ):
        super().__init__()
        check_choice("noise_mode", noise_mode, NOISE_MODES)
        check_choice("backward_mode", backward_mode, BACKWARD_MODES)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.denoiser = denoiser
        self.grid = grid if grid is not None else make_grid(TIMESTEPS)
        k = denoiser.num_classes
        if prior is None:
            prior = torch.full((k,), 1.0 / k)
        prior = torch.as_tensor(prior, dtype=torch.float32)
        if prior.shape != (k,) or (prior < 0).any() or not torch.isclose(prior.sum(), torch.tensor(1.0), atol=1e-4):
            raise ValueError(f"prior must be {k} non-negative probabilities summing to 1, got {prior.tolist()}")
        self.register_buffer("log_prior", prior.log(), persistent=False)
        self.shared_noise = bool(shared_noise) or denoiser.heads == "multi"
        self.noise_mode = noise_mode
        self.seed = int(seed)
        self.backward_mode = backward_mode
        self.chunk_size = int(chunk_size)
        self.sparse_backward = bool(sparse_backward)
        self._generator: torch.Generator | None = None

    @property
    def num_classes(self) -> int:
        return self.denoiser.num_classes

    def draw_noise(self, x: Tensor) -> Tensor:
        """The eps this call will use: (B or 1, 1 or K, T, C, H, W)."""
        return self.draw_eps(x, 1 if self.noise_mode == "fixed" else x.shape[0], self._gen(x.device))

    def draw_eps(self, x: Tensor, batch: int, generator: torch.Generator | None) -> Tensor:
        """eps (batch, 1 or K, T, C, H, W) for images like x (B, C, H, W) from ``generator`` (a caller's own, e.g.
        the RDC's; None: the global one)."""
        return draw_noise(
            batch,
            self.num_classes,
            len(self.grid),
            tuple(x.shape[1:]),
            shared_noise=self.shared_noise,
            generator=generator,
            device=x.device,
            dtype=x.dtype,
        )

    def check_input(self, x: Tensor) -> Tensor:
        return check_images(x, channels=self.denoiser.img_channels, resolution=self.denoiser.img_resolution)

    def elbo_terms(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """(B, K, T) weighted per-level losses (differentiable by plain autograd)."""
        self.check_input(x)
        noise = self.draw_noise(x) if noise is None else noise
        noise = noise.expand(x.shape[0], *noise.shape[1:])
        return elbo_terms(self.denoiser, x, self.grid, noise=noise, chunk_size=self.chunk_size)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        self.check_input(x)
        noise = self.draw_noise(x) if noise is None else noise
        classes = torch.arange(self.num_classes, device=x.device)
        noise = noise.expand(x.shape[0], *noise.shape[1:])
        recompute = self.recomputes_in_backward(x, noise)
        if self.backs_sparsely(x):
            total = SparseELBOSum.apply(x, noise, self.denoiser, self.grid, classes, self.chunk_size, not recompute)
        elif recompute:
            total = ChunkedELBOSum.apply(x, noise, self.denoiser, self.grid, classes, self.chunk_size)
        else:
            total = elbo_terms(
                self.denoiser, x, self.grid, classes=classes, noise=noise, chunk_size=self.chunk_size
            ).sum(-1)
        return -total + self.log_prior.to(x.device, x.dtype)

    def posterior(self, logits: Tensor) -> Tensor:
        """Bayes posterior (B, K) from this classifier's logits (B, K) of images of its denoiser's size."""
        d = self.denoiser.img_channels * self.denoiser.img_resolution**2
        return bayes_posterior(logits, d, self.log_prior)

    def recomputes_in_backward(self, x: Tensor, noise: Tensor) -> bool:
        """Whether a forward on x (B, C, H, W) with eps ``noise`` (B or 1, 1 or K, T, ...) takes the chunked path.

        True only when an input gradient is needed, ``backward_mode`` is 'chunked' and the levels do not fit in one
        chunk of ``chunk_size`` triples; otherwise the plain graph is kept (it is no larger than one chunk).
        """
        if self.backward_mode != "chunked" or not (torch.is_grad_enabled() and x.requires_grad):
            return False
        per_chunk = levels_per_chunk(self.denoiser, x.shape[0], self.num_classes, noise.shape[1] == 1, self.chunk_size)
        return per_chunk < len(self.grid)

    def backs_sparsely(self, x: Tensor) -> bool:
        """Whether a forward on x takes the sparse-backward path: an input gradient is needed, ``backward_mode``
        'chunked', ``sparse_backward`` on and a network that needs a pass per class (a multi-head network serves
        every class in one pass, so skipping classes would save nothing)."""
        return (
            self.sparse_backward
            and self.backward_mode == "chunked"
            and torch.is_grad_enabled()
            and x.requires_grad
            and self.denoiser.passes_per_denoise_all(self.num_classes) > 1
        )

    def network_passes(self, batch: int) -> int:
        """Single-image network evaluations one forward costs for ``batch`` images."""
        per_level = self.denoiser.passes_per_denoise_all(self.num_classes) if self.shared_noise else self.num_classes
        return batch * len(self.grid) * per_level
