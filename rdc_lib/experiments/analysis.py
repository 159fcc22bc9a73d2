"""The small experiments behind the notebooks' figures: tensors in, dataclasses of tensors out.

Each function measures one thing the notebooks plot (docs/paper.md sections 3, 4 and 7):

- :func:`repeated_logits`, :func:`logit_difference_std`, :func:`logit_spread_vs_T`: the spread of
  logit differences over noise draws, against the number of levels T and shared/independent noise;
- :func:`time_per_call`, :func:`compare_cost`: seconds per call, measured until it means something
  (repeated calls, several rounds, one thread), with network passes beside them and a flag when the
  rounds disagree;
- :func:`lm_trajectories`: likelihood maximization with every iterate, the LM loss, a fixed-noise
  unconditional diffusion loss and the classifier's posterior at every step;
- :class:`QueryRecorder` and :func:`record_attack`: run a library attack one image at a time and
  keep every point it queried with the logits it saw (the attack's own iterations);
- :func:`loss_surface`: the loss on a 2-D grid spanned by the gradient-sign direction and a random
  sign direction around one image;
- :func:`denoise_across_sigmas`: several denoisers on one image and one eps per level (image grids).

Randomness comes only from the generators and seeds passed in; no function prints or displays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.choices import GRID_LEVELS
from ..core.utils import check_images, check_labels
from ..defenses.classifier import DiffusionClassifier, bayes_posterior
from ..diffusion.elbo import elbo_terms
from ..diffusion.lm import LMConfig, draw_lm_noise, likelihood_maximization
from ..diffusion.schedules import NoiseGrid, make_grid, noise_levels
from ..models.base import Denoiser

__all__ = [
    "denoise_across_sigmas",
    "AttackTrajectories",
    "LMTrajectories",
    "LossSurface",
    "NoiseSpread",
    "QueryRecorder",
    "lm_trajectories",
    "logit_difference_std",
    "logit_spread_vs_T",
    "loss_surface",
    "record_attack",
    "repeated_logits",
    "CallTiming",
    "CostComparison",
    "compare_cost",
    "time_per_call",
]


# --------------------------------------------------------------------------- noise and cost (DC)

@torch.no_grad()
def repeated_logits(classifier: Callable[[Tensor], Tensor], x: Tensor, n_draws: int) -> Tensor:
    """Logits (n_draws, B, K) of ``n_draws`` calls; a stochastic classifier draws fresh noise per call."""
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    return torch.stack([classifier(x) for _ in range(n_draws)])


def logit_difference_std(logits: Tensor, y: Tensor) -> Tensor:
    """Per-image spread (B,) of z_y - z_j over draws: std over the D draws, averaged over j != y.

    logits (D, B, K), y (B,). Only differences matter for the posterior (softmax is shift invariant),
    so this is the noise that can flip a decision (docs/paper.md section 3).
    """
    if logits.ndim != 3 or logits.shape[0] < 2:
        raise ValueError(f"logits must have shape (D >= 2, B, K), got {tuple(logits.shape)}")
    check_labels(y, logits.shape[2], batch=logits.shape[1])
    true = logits.gather(2, y.reshape(1, -1, 1).expand(logits.shape[0], -1, 1))
    diff = true - logits                                    # (D, B, K); column y is identically 0
    std = diff.std(dim=0, unbiased=True)                    # (B, K)
    mask = torch.ones_like(std, dtype=torch.bool).scatter(1, y.reshape(-1, 1), False)
    return (std * mask).sum(1) / mask.sum(1)


@dataclass
class NoiseSpread:
    """Mean std of logit differences (over images) per setting and T: ``std[setting][i]`` for ``T_list[i]``."""

    T_list: list[int]
    std: dict[str, list[float]]
    n_draws: int
    n_images: int


def logit_spread_vs_T(
    settings: dict[str, tuple[Denoiser, bool]],   # name -> (denoiser, shared_noise)
    x: Tensor, y: Tensor, T_list: Sequence[int], n_draws: int, *, seed: int = 0,
) -> NoiseSpread:
    """For every setting and T: a stochastic DC (paper grid, seeded) called n_draws times; mean spread."""
    out: dict[str, list[float]] = {}
    for name, (denoiser, shared) in settings.items():
        row = []
        for t in T_list:
            dc = DiffusionClassifier(denoiser, make_grid(int(t)), shared_noise=shared, noise_mode="stochastic",
                                     seed=seed).eval()
            row.append(float(logit_difference_std(repeated_logits(dc, x, n_draws), y).mean()))
        out[name] = row
    return NoiseSpread([int(t) for t in T_list], out, n_draws, x.shape[0])


MIN_TIMING_SECONDS = 0.5   # a round repeats the call until it has run this long (timer and scheduling noise)
MAX_TIMING_SPREAD = 0.25   # rounds that differ by more than this (relative) make a timing untrustworthy


@dataclass
class CallTiming:
    """Seconds per call of one function: the best of ``rounds`` rounds of ``calls`` calls each.

    spread: (slowest round - fastest round) / fastest round; a timing is ``trusted`` when the rounds
    agree within MAX_TIMING_SPREAD (a loaded machine or too little work shows up as a large spread).
    """

    seconds: float
    spread: float
    calls: int
    rounds: int

    @property
    def trusted(self) -> bool:
        return self.spread <= MAX_TIMING_SPREAD


def time_per_call(fn: Callable[[], object], *, rounds: int = 2, min_seconds: float = MIN_TIMING_SECONDS,
                  threads: int | None = 1, sync: Callable[[], object] | None = None,
                  warmup: Callable[[], object] | None = None) -> CallTiming:
    """Time ``fn()`` without gradients: ``rounds`` rounds, each repeating the call until ``min_seconds`` have passed.

    ``threads``: torch CPU threads during the timing (restored after; None: leave as is). One thread by
    default, like benchmarks/timing/bench_classifier.py: with several threads on a shared machine, a small call
    measures thread scheduling rather than work. ``sync``: called before each clock read (e.g.
    ``torch.cuda.synchronize`` for a GPU). ``warmup``: called once before timing (default ``fn``; a cheaper
    call that touches the same code, e.g. on one image, saves a full call).
    """
    if rounds < 2:
        raise ValueError(f"rounds must be >= 2 (the spread between rounds says whether to trust the timing), "
                         f"got {rounds}")
    sync = sync or (lambda: None)
    saved = torch.get_num_threads()
    per_round: list[float] = []
    calls = 1
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.no_grad():
            (warmup or fn)()  # first-call initialisation is not part of the cost
            for r in range(rounds):
                n, t0 = 0, time.perf_counter()
                sync()
                while True:
                    fn()
                    n += 1
                    sync()
                    elapsed = time.perf_counter() - t0
                    if (r > 0 and n >= calls) or (r == 0 and elapsed >= min_seconds):
                        break
                calls = n  # every round makes as many calls as the first one needed
                per_round.append(elapsed / n)
    finally:
        torch.set_num_threads(saved)
    best = min(per_round)
    return CallTiming(best, (max(per_round) - best) / best, calls, rounds)


@dataclass
class CostComparison:
    """Network passes and measured seconds of one classifier call on ``images`` images, per classifier."""

    names: list[str]
    passes: list[int]
    timings: list[CallTiming]
    images: int
    threads: int | None

    @property
    def seconds(self) -> list[float]:
        return [t.seconds for t in self.timings]

    @property
    def trusted(self) -> bool:
        return all(t.trusted for t in self.timings)

    def speedup(self, slow: int = 0, fast: int = -1) -> float:
        """Seconds of classifier ``slow`` over seconds of classifier ``fast`` (by position)."""
        return self.seconds[slow] / self.seconds[fast]

    def note(self) -> str:
        """How the seconds were measured, and whether to trust them (for a figure title or a print)."""
        how = (f"best of {self.timings[0].rounds} rounds, {self.threads} thread(s)" if self.threads
               else f"best of {self.timings[0].rounds} rounds")
        if self.trusted:
            return f"{how}; rounds agree within {MAX_TIMING_SPREAD:.0%}"
        worst = max(t.spread for t in self.timings)
        return (f"{how}; TOO NOISY TO TRUST: rounds differ by up to {worst:.0%} (a loaded machine, or too little "
                f"work: use more images); the passes are exact")


def compare_cost(classifiers: Mapping[str, DiffusionClassifier], x: Tensor, *, rounds: int = 2,
                 threads: int | None = 1, min_seconds: float = MIN_TIMING_SECONDS) -> CostComparison:
    """Passes (``network_passes``) and seconds (:func:`time_per_call`) of one call of each classifier on x (B, C, H, W)."""
    if x.shape[0] < 1:
        raise ValueError("compare_cost needs at least one image")
    sync = torch.cuda.synchronize if x.is_cuda else None
    names = list(classifiers)
    passes = [classifiers[n].network_passes(x.shape[0]) for n in names]
    timings = [time_per_call(lambda dc=classifiers[n]: dc(x), rounds=rounds, threads=threads, sync=sync,
                             min_seconds=min_seconds, warmup=lambda dc=classifiers[n]: dc(x[:1])) for n in names]
    return CostComparison(names, passes, timings, x.shape[0], threads)


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
    denoiser: Denoiser, classifier: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, config: LMConfig, *,
    grid: NoiseGrid | None = None, seed: int = 0, names: Sequence[str] | None = None,
) -> LMTrajectories:
    """Run LM (``config``) on x (B, C, H, W) in [0, 1] and score every iterate (see :class:`LMTrajectories`).

    The LM noise and the bound's fixed eps come from generators seeded with ``seed`` (so two calls
    with the same arguments agree); ``classifier`` maps images to logits (use a fixed-noise DC to
    make the posterior along the way a function of the image only).
    """
    check_images(x, channels=denoiser.img_channels, resolution=denoiser.img_resolution)
    check_labels(y, denoiser.num_classes, batch=x.shape[0])
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noise = draw_lm_noise(config.steps, tuple(x.shape), config.sigma_range, generator=gen, device=x.device,
                          dtype=x.dtype)
    res = likelihood_maximization(denoiser, x, noise=noise, config=config, return_trajectory=True)
    traj = res.trajectory                                                          # (N + 1, B, C, H, W)
    if grid is None:
        grid = classifier.grid if isinstance(getattr(classifier, "grid", None), NoiseGrid) else make_grid(GRID_LEVELS)
    null = torch.tensor([denoiser.null_label], device=x.device)
    eps = torch.randn((x.shape[0], 1, len(grid), *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
    bound = torch.stack([elbo_terms(denoiser, t, grid, classes=null, noise=eps).sum((1, 2)) for t in traj])
    pixels = x[0].numel()
    log_prior = getattr(classifier, "log_prior", None)
    probs = torch.stack([bayes_posterior(classifier(t), pixels, log_prior) for t in traj])
    names = list(names) if names is not None else [f"#{i} (label {int(v)})" for i, v in enumerate(y)]
    if len(names) != x.shape[0]:
        raise ValueError(f"names must have one entry per image ({x.shape[0]}), got {len(names)}")
    return LMTrajectories(traj.cpu(), res.losses.cpu(), bound.cpu(), probs.cpu(), y.cpu(), names, config,
                          pixels)


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
    model: nn.Module, x: Tensor, y: Tensor, make_attack: Callable[[nn.Module], object],
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
        result = attack.run(x[i:i + 1], y[i:i + 1])
        xs.append(torch.stack([r[0][0] for r in recorder.records]))
        ls.append(torch.stack([r[1].mean(0) for r in recorder.records]))
        lengths.append(len(recorder.records))
        adv.append(result.x_adv.detach().cpu())
        success.append(result.success.cpu())
    longest = max(lengths)
    pad = lambda t: torch.cat([t, t[-1:].expand(longest - t.shape[0], *t.shape[1:])])  # noqa: E731
    return AttackTrajectories(
        x=torch.stack([pad(t) for t in xs]), logits=torch.stack([pad(t) for t in ls]),
        length=torch.tensor(lengths), labels=y.detach().cpu(), x_adv=torch.cat(adv), success=torch.cat(success),
    )


# ---------------------------------------------------------------------------------- loss surface

@dataclass
class LossSurface:
    """Cross-entropy on the grid x + a d_grad + b d_rand (clipped to [0, 1]); loss[i, j] at (a_i, b_j)."""

    a: Tensor            # (P,) offsets along the gradient-sign direction (l_inf units)
    b: Tensor            # (P,) offsets along the random sign direction
    loss: Tensor         # (P, P)
    correct: Tensor      # (P, P) bool: still classified as the label


def loss_surface(
    model: Callable[[Tensor], Tensor], x: Tensor, y: int, *, radius: float, points: int,
    generator: torch.Generator | None = None, batch: int = 64,
) -> LossSurface:
    """Loss landscape around one image x (1, C, H, W) in [0, 1] with label y (Athalye et al. 2018 style).

    d_grad = sign(dL/dx) and d_rand = random signs both have l_inf norm 1, so the axes are l_inf
    distances; a smooth, rising surface along d_grad means the gradient points where the loss
    grows; a flat or jagged one is a sign of masked gradients.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image (1, C, H, W), got shape {tuple(x.shape)}")
    if points < 2 or not radius > 0:
        raise ValueError(f"need points >= 2 and radius > 0, got {points} and {radius}")
    label = torch.tensor([int(y)], device=x.device)
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xg), label), xg)
    d_grad = g.sign()
    d_rand = torch.where(torch.rand(x.shape, generator=generator, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
    a = torch.linspace(-radius, radius, points, device=x.device, dtype=x.dtype)
    aa, bb = torch.meshgrid(a, a, indexing="ij")
    grid = (x + aa.reshape(-1, 1, 1, 1) * d_grad + bb.reshape(-1, 1, 1, 1) * d_rand).clamp(0.0, 1.0)
    losses, correct = [], []
    with torch.no_grad():
        for start in range(0, grid.shape[0], batch):
            logits = model(grid[start:start + batch])
            lab = label.expand(logits.shape[0])
            losses.append(F.cross_entropy(logits, lab, reduction="none"))
            correct.append(logits.argmax(1) == lab)
    shape = (points, points)
    loss, ok = torch.cat(losses).reshape(shape).cpu(), torch.cat(correct).reshape(shape).cpu()
    return LossSurface(a.cpu(), a.cpu(), loss, ok)


def denoise_across_sigmas(
    denoisers: dict[str, Denoiser],     # name -> denoiser (all on the same image shape)
    x01: Tensor,                        # (C, H, W) or (1, C, H, W) one clean image in [0, 1]
    label: int | None,                  # class to condition on; None = null (unconditional)
    sigmas: Tensor | NoiseGrid,         # (T,)
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,        # (T, C, H, W) eps; drawn from `generator` if None
) -> dict[str, Tensor]:
    """Every denoiser on the same noisy copies of one image: {'noisy', *names} -> (T, C, H, W) in [0, 1].

    Outputs are mapped back from model space ((d + 1) / 2) and clipped to [0, 1] for display.
    """
    if not denoisers:
        raise ValueError("denoisers is empty; pass a dict name -> Denoiser")
    img = x01.unsqueeze(0) if x01.ndim == 3 else x01
    first = next(iter(denoisers.values()))
    check_images(img, channels=first.img_channels, resolution=first.img_resolution, name="x01")
    if img.shape[0] != 1:
        raise ValueError(f"x01 must be one image (C, H, W) or (1, C, H, W), got shape {tuple(x01.shape)}")
    s = noise_levels(sigmas, img)
    t_len = s.numel()
    if noise is None:
        noise = torch.randn((t_len, *img.shape[1:]), generator=generator, device=img.device, dtype=img.dtype)
    elif tuple(noise.shape) != (t_len, *img.shape[1:]):
        raise ValueError(f"noise must have shape {(t_len, *img.shape[1:])} (T, C, H, W), got {tuple(noise.shape)}")
    noisy = (img * 2 - 1) + s.reshape(-1, 1, 1, 1) * noise                    # (T, C, H, W) model space
    out = {"noisy": ((noisy + 1) / 2).clamp(0, 1)}
    with torch.no_grad():
        for name, den in denoisers.items():
            k = den.num_classes if label is None else int(label)
            lab = torch.full((t_len,), k, dtype=torch.long, device=img.device)
            out[name] = ((den(noisy, s, lab) + 1) / 2).clamp(0, 1)
    return out
