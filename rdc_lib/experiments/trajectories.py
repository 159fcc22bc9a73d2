"""What an iterative procedure visited, step by step, for the notebooks' step explorers.

- :func:`lm_trajectories`: likelihood maximization with every iterate, the LM loss, a fixed-noise
  unconditional diffusion loss and the classifier's posterior at every step (notebook 02);
- :class:`QueryRecorder` and :func:`record_attack`: run a library attack one image at a time and
  keep every point it queried with the logits it saw (the attack's own iterations; notebook 03).

Randomness comes only from the seeds passed in; no function prints or displays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.choices import TIMESTEPS
from ..core.utils import check_images, check_labels
from ..defenses.classifier import bayes_posterior
from ..diffusion.elbo import elbo_terms
from ..diffusion.lm import LMConfig, draw_lm_noise, likelihood_maximization
from ..diffusion.schedules import NoiseGrid, make_grid
from ..models.base import Denoiser

__all__ = ["AttackTrajectories", "LMTrajectories", "QueryRecorder", "lm_trajectories", "record_attack"]


# --------------------------------------------------------------------------------- LM trajectories


@dataclass
class LMTrajectories:
    """LM on B images, N steps: every iterate and what the classifier and the diffusion model say of it.

    images (N + 1, B, C, H, W) in [0, 1], input first; lm_loss (N, B): the LM objective at step k
    (one sigma, one eps per step, as LM sees it); bound (N + 1, B): the unconditional diffusion
    loss sum_t w_t E||D(x + sigma_t eps; sigma_t, null) - x||^2 on the classifier's grid with one
    fixed eps draw for all steps (lower = more likely); probs (N + 1, B, K): the classifier's Bayes
    posterior at every iterate (``rdc_lib.defenses.classifier.bayes_posterior``: log-likelihood summed over the
    ``pixels`` = C*H*W values of an image); labels (B,); names: one label per image.
    """

    images: Tensor
    lm_loss: Tensor
    bound: Tensor
    probs: Tensor
    labels: Tensor
    names: list[str]
    config: LMConfig
    pixels: int

    @property
    def steps(self) -> int:
        return self.images.shape[0] - 1


@torch.no_grad()
def lm_trajectories(
    denoiser: Denoiser,
    classifier: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    config: LMConfig,
    *,
    grid: NoiseGrid | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> LMTrajectories:
    """Run LM (``config``) on x (B, C, H, W) in [0, 1] and score every iterate (see :class:`LMTrajectories`).

    The LM noise and the bound's fixed eps come from generators seeded with ``seed`` (so two calls
    with the same arguments agree); ``classifier`` maps images to logits (use a fixed-noise DC to
    make the posterior along the way a function of the image only).
    """
    check_images(x, channels=denoiser.img_channels, resolution=denoiser.img_resolution)
    check_labels(y, denoiser.num_classes, batch=x.shape[0])
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noise = draw_lm_noise(
        config.steps, tuple(x.shape), config.sigma_range, generator=gen, device=x.device, dtype=x.dtype
    )
    res = likelihood_maximization(denoiser, x, noise=noise, config=config, return_trajectory=True)
    traj = res.trajectory  # (N + 1, B, C, H, W)
    if grid is None:
        grid = classifier.grid if isinstance(getattr(classifier, "grid", None), NoiseGrid) else make_grid(TIMESTEPS)
    null = torch.tensor([denoiser.null_label], device=x.device)
    eps = torch.randn((x.shape[0], 1, len(grid), *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
    bound = torch.stack([elbo_terms(denoiser, t, grid, classes=null, noise=eps).sum((1, 2)) for t in traj])
    pixels = x[0].numel()
    log_prior = getattr(classifier, "log_prior", None)
    probs = torch.stack([bayes_posterior(classifier(t), pixels, log_prior) for t in traj])
    names = list(names) if names is not None else [f"#{i} (label {int(v)})" for i, v in enumerate(y)]
    if len(names) != x.shape[0]:
        raise ValueError(f"names must have one entry per image ({x.shape[0]}), got {len(names)}")
    return LMTrajectories(traj.cpu(), res.losses.cpu(), bound.cpu(), probs.cpu(), y.cpu(), names, config, pixels)


# -------------------------------------------------------------------------------- attack queries


class QueryRecorder(nn.Module):
    """Wraps a model x -> logits and keeps every (input, logits) pair it is called with, detached.

    ``records`` is a list of (x (n, C, H, W), logits (n, K)) on the CPU; ``clear()`` empties it.
    Used to follow an attack's iterations without changing the attack.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.records: list[tuple[Tensor, Tensor]] = []

    def clear(self) -> None:
        self.records = []

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        self.records.append((x.detach().cpu().clone(), logits.detach().cpu().clone()))
        return logits


@dataclass
class AttackTrajectories:
    """The points an attack queried, per image: x (B, S, C, H, W), logits (B, S, K).

    Query 0 is the clean check. Images whose attack stopped early (misclassified, or a shorter
    run) repeat their last query up to S = the longest run; ``length`` (B,) is each image's own
    number of queries. ``x_adv`` (B, C, H, W) and ``success`` (B,) are the attack's result.
    """

    x: Tensor
    logits: Tensor
    length: Tensor
    labels: Tensor
    x_adv: Tensor
    success: Tensor

    @property
    def queries(self) -> int:
        return self.x.shape[1]

    def margins(self) -> Tensor:
        """z_y - max_{k != y} z_k per image and query, (B, S) (< 0: misclassified)."""
        y = self.labels.reshape(-1, 1, 1).expand(-1, self.queries, 1)
        true = self.logits.gather(2, y).squeeze(2)
        others = self.logits.scatter(2, y, float("-inf")).amax(2)
        return true - others


def record_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    make_attack: Callable[[nn.Module], object],
) -> AttackTrajectories:
    """Attack each image of x (B, C, H, W) alone with ``make_attack(recorded_model)`` and keep its queries.

    ``make_attack`` gets the wrapped model and returns an attack of rdc_lib.attacks (anything with
    ``run(x, y) -> AttackResult``). With EOT copies in one call, the first copy's input and the mean
    logits are kept.
    """
    check_images(x)
    recorder = QueryRecorder(model)
    attack = make_attack(recorder)
    xs, ls, lengths, adv, success = [], [], [], [], []
    for i in range(x.shape[0]):
        recorder.clear()
        result = attack.run(x[i : i + 1], y[i : i + 1])
        xs.append(torch.stack([r[0][0] for r in recorder.records]))
        ls.append(torch.stack([r[1].mean(0) for r in recorder.records]))
        lengths.append(len(recorder.records))
        adv.append(result.x_adv.detach().cpu())
        success.append(result.success.cpu())
    longest = max(lengths)
    pad = lambda t: torch.cat([t, t[-1:].expand(longest - t.shape[0], *t.shape[1:])])  # noqa: E731
    return AttackTrajectories(
        x=torch.stack([pad(t) for t in xs]),
        logits=torch.stack([pad(t) for t in ls]),
        length=torch.tensor(lengths),
        labels=y.detach().cpu(),
        x_adv=torch.cat(adv),
        success=torch.cat(success),
    )
