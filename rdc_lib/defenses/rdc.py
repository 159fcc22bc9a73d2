"""The Robust Diffusion Classifier: RDC(x) = DC(LM(x)) (docs/paper.md section 4).

LM (rdc_lib.diffusion.lm) moves the input towards higher unconditional likelihood inside the eta-ball, then
the diffusion classifier (rdc_lib.defenses.classifier) classifies the result. One code path serves
prediction and attack; what the attacker's gradient is comes from ``grad_mode``:

- ``'exact'``: the exact second-order gradient through LM (rdc_lib.diffusion.lm_grad.lm_exact: ``lm_graph='auto'``
  keeps the unrolled graph for small batches, else recomputes per step at memory independent of the
  number of LM steps; the same gradient either way), exact through the DC.
- ``'bpda'``: identity backward through LM (the paper's main attack, "BPDA-AutoAttack"), exact
  through the DC.

Randomness is owned by the module, never the global RNG. Each call draws, per vote member, the LM
noise (sigma, eps per step) and then the DC noise, from:

- ``noise_mode='stochastic'``: the module's generator (seeded by ``seed``; fresh draws every call);
- ``noise_mode='fixed'``: a generator re-seeded with ``seed`` on every call, one draw shared by
  every image of the batch, so the defense is a deterministic function of each image (white-box
  attacks with the randomness known to the attacker; results independent of batch composition).

``vote = M > 1`` runs M members (independent randomness) and returns log(mean_m softmax(logits_m)),
the log of the averaged probabilities: its argmax is the soft majority vote, and it stays
differentiable (an attack on it is an EOT attack over the M draws).

The denoiser for LM is the unconditional (null-label) head of ``denoiser``; the classifier may use
a different network (the reference uses separate conditional and unconditional models).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..core.choices import GRAD_MODES, LM_GRAPH_MODES, NOISE_MODES
from ..core.utils import OwnedRandomness, check_images
from ..diffusion.lm import LMConfig, LMNoise, LMResult, draw_lm_noise, likelihood_maximization
from ..diffusion.lm_grad import lm_bpda, lm_exact
from ..diffusion.schedules import NoiseGrid
from ..models.base import Denoiser
from .classifier import DiffusionClassifier

__all__ = ["RDCNoise", "RobustDiffusionClassifier"]


@dataclass
class RDCNoise:
    """The randomness of one vote member: LM noise and DC eps (B or 1, 1 or K, T, C, H, W)."""

    lm: LMNoise
    dc: Tensor


class RobustDiffusionClassifier(OwnedRandomness, nn.Module):
    """x (B, C, H, W) in [0, 1] -> logits (B, K) of DC(LM(x)); log-probabilities when vote > 1.

    Shape:
        input (B, C, H, W) in [0, 1]; output (B, K).

    Examples:
        >>> rdc = RobustDiffusionClassifier(denoiser, grad_mode="exact", noise_mode="fixed")
        >>> logits = rdc(x)                 # differentiable w.r.t. x
        >>> x_hat = rdc.lm_only(x)          # the likelihood-maximized input
    """

    def __init__(
        self,
        denoiser: Denoiser,  # LM uses its null label
        classifier: DiffusionClassifier | None = None,  # default: DiffusionClassifier(denoiser, grid)
        *,
        lm: LMConfig | None = None,  # default LMConfig(): the paper's settings
        grid: NoiseGrid | None = None,  # DC grid when classifier is None
        grad_mode: Literal["exact", "bpda"] = "exact",
        noise_mode: Literal["stochastic", "fixed"] = "stochastic",
        seed: int = 0,
        vote: int = 1,  # M members averaged in probability
        lm_graph: Literal["auto", "recompute", "unroll"] = "auto",  # exact mode: see rdc_lib.diffusion.lm_grad.lm_exact
    ):
        super().__init__()
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"unknown grad_mode {grad_mode!r}; valid choices: {', '.join(GRAD_MODES)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; valid choices: {', '.join(NOISE_MODES)}")
        if not isinstance(vote, int) or vote < 1:
            raise ValueError(f"vote must be an int >= 1, got {vote!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if lm_graph not in LM_GRAPH_MODES:
            raise ValueError(f"unknown lm_graph {lm_graph!r}; valid choices: {', '.join(LM_GRAPH_MODES)}")
        if classifier is not None and not isinstance(classifier, DiffusionClassifier):
            raise ValueError(f"classifier must be a DiffusionClassifier, got {type(classifier).__name__}")
        if lm is not None and not isinstance(lm, LMConfig):
            raise ValueError(f"lm must be an LMConfig, got {type(lm).__name__}")
        self.denoiser = denoiser
        self.classifier = classifier if classifier is not None else DiffusionClassifier(denoiser, grid)
        if (self.classifier.denoiser.img_channels, self.classifier.denoiser.img_resolution) != (
            denoiser.img_channels,
            denoiser.img_resolution,
        ):
            raise ValueError("the classifier's denoiser and the LM denoiser expect different image shapes")
        self.lm_config = lm if lm is not None else LMConfig()
        self.grad_mode = grad_mode
        self.noise_mode = noise_mode
        self.seed = seed
        self.vote = vote
        self.lm_graph = lm_graph
        self._generator: torch.Generator | None = None
        self._warned_training = False
        self.eval()  # dropout in train mode would draw from the global RNG

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def check_input(self, x: Tensor) -> Tensor:
        return check_images(x, channels=self.denoiser.img_channels, resolution=self.denoiser.img_resolution)

    def draw_noise(self, x: Tensor, members: int | None = None) -> list[RDCNoise]:
        """The randomness the next call uses: one :class:`RDCNoise` per vote member."""
        gen = self._gen(x.device)
        batch = 1 if self.noise_mode == "fixed" else x.shape[0]
        shape = (batch, *x.shape[1:])
        dc = self.classifier
        out = []
        for _ in range(self.vote if members is None else members):
            lm_noise = draw_lm_noise(
                self.lm_config.steps, shape, self.lm_config.sigma_range, generator=gen, device=x.device, dtype=x.dtype
            )
            out.append(RDCNoise(lm_noise, dc.draw_eps(x, batch, gen)))
        return out

    def _lm(self, x: Tensor, noise: LMNoise) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return likelihood_maximization(self.denoiser, x, noise=noise, config=self.lm_config).x
        if self.grad_mode == "exact":
            return lm_exact(self.denoiser, x, noise, self.lm_config, lm_graph=self.lm_graph)
        return lm_bpda(self.denoiser, x, noise, self.lm_config)

    def forward(self, x: Tensor, noise: RDCNoise | list[RDCNoise] | None = None) -> Tensor:
        """Logits (B, K) (vote = 1) or averaged log-probabilities (vote > 1); ``noise`` replays a draw."""
        self.check_input(x)
        if self.training and not self._warned_training:
            warnings.warn(
                "RobustDiffusionClassifier is in training mode: dropout draws from the global RNG; call .eval()",
                stacklevel=2,
            )
            self._warned_training = True
        if noise is None:
            noise = self.draw_noise(x)
        members = [noise] if isinstance(noise, RDCNoise) else list(noise)
        outs = [self.classifier(self._lm(x, m.lm), noise=m.dc) for m in members]
        if len(outs) == 1:
            return outs[0]
        logp = torch.stack([o.log_softmax(-1) for o in outs])
        return logp.logsumexp(0) - math.log(len(outs))

    def purify(self, x: Tensor, *, return_trajectory: bool = True) -> LMResult:
        """LM alone with the next draw of randomness (the first vote member's): an LMResult."""
        self.check_input(x)
        noise = self.draw_noise(x, members=1)[0].lm
        with torch.no_grad():
            return likelihood_maximization(
                self.denoiser, x, noise=noise, config=self.lm_config, return_trajectory=return_trajectory
            )

    def lm_only(self, x: Tensor) -> Tensor:
        """The likelihood-maximized images (B, C, H, W) in [0, 1] (no graph)."""
        return self.purify(x, return_trajectory=False).x

    def network_passes(self, batch: int) -> dict[str, int]:
        """Single-image network evaluations per call: LM forwards (each also has one backward) and DC."""
        lm = self.vote * batch * self.lm_config.steps
        dc = self.vote * self.classifier.network_passes(batch)
        return {"lm_forward": lm, "lm_backward": lm, "dc_forward": dc}
