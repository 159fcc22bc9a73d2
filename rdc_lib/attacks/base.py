"""The attack base class and the per-call bookkeeping every attack shares.

An attack is built with its budget (torchattacks shape) and called on a batch:
``x_adv = attack(x, y)`` or ``result = attack.run(x, y)``. Shared behaviour, implemented once here:

- the model is switched to eval mode for the attack and every submodule's mode is restored afterwards;
- examples the model already misclassifies are returned unchanged and cost one (clean) query only;
- every model call goes through :class:`AttackContext`, which counts queries per example, keeps per
  example the most adversarial point seen (the first misclassified one, else the smallest margin), and
  drops an example from further work as soon as it is misclassified (early stopping per example);
- against a stochastic model one misclassified call can be a lucky draw: with ``verify = V > 1`` a candidate
  counts as a success only if V independent calls all misclassify it (V - 1 extra forwards, counted), and
  unconfirmed candidates compete for the best point by their margin averaged over the V calls;
- randomness comes from a ``torch.Generator`` passed in, or from a fresh generator seeded with ``seed``
  at every call (the same call then gives the same result); the global RNG is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.choices import NORMS
from ..core.utils import check_images, check_labels
from .losses import LossFn, margin
from .projections import check_norm

FLOW = "flow"  # the threat model of THREAT_NORMS beyond the l_p balls (StAdv): eps bounds a per-pixel flow

__all__ = ["Attack", "AttackBudget", "AttackContext", "AttackResult", "Model", "eval_mode", "input_gradient"]

Model = Callable[[Tensor], Tensor]


@dataclass
class AttackResult:
    """Outcome of one attack on a batch of B examples."""

    x_adv: Tensor  # (B, C, H, W) in [0, 1], inside the eps-ball around x
    success: Tensor  # (B,) bool: the model misclassified x_adv when it was queried (clean errors included)
    queries: Tensor  # (B,) int64 model evaluations spent per example (EOT copies counted)
    margin: Tensor  # (B,) z_y - max_{k != y} z_k observed at x_adv (< 0: misclassified)
    clean_correct: Tensor  # (B,) bool: correctly classified before the attack
    max_queries: int  # per-example queries the attack would spend without early stopping
    loss_history: list[float] = field(default_factory=list)  # mean objective of the still-active examples per step

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float((~self.success).float().mean())

    @property
    def query_ratio(self) -> float:
        """Queries spent / queries without early stopping (1 - the saving from early stopping)."""
        return float(self.queries.sum()) / max(1, self.max_queries * self.queries.numel())


@contextmanager
def eval_mode(model: Model) -> Iterator[None]:
    """Put an ``nn.Module`` (and all submodules) in eval mode; restore each submodule's own mode after."""
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class AttackContext:
    """Bookkeeping of one attack call on (x, y): queries, best point per example, early stopping, randomness.

    Attacks address examples by their index ``idx`` (int64, (n,)) into the full batch and always pass the
    candidate images of exactly those examples.
    """

    def __init__(self, model: Model, x: Tensor, y: Tensor, *, eot: int, generator: torch.Generator, verify: int = 1):
        self.model = model
        self.x = x.detach()
        self.y = y
        self.eot = eot
        self.verify = verify
        self.generator = generator
        b = x.shape[0]
        self.x_best = self.x.clone()
        self.margin = torch.full((b,), math.inf, device=x.device, dtype=x.dtype)
        self.success = torch.zeros(b, dtype=torch.bool, device=x.device)
        self.queries = torch.zeros(b, dtype=torch.int64, device=x.device)
        self.history: list[float] = []
        self.clean_logits: Tensor | None = None

    # -- randomness (device of the generator, moved to the input's device) --
    def rand(self, *shape: int) -> Tensor:
        """U[0, 1) of ``shape`` on the input's device and dtype."""
        out = torch.rand(shape, generator=self.generator, device=self.generator.device, dtype=self.x.dtype)
        return out.to(self.x.device)

    def randn(self, *shape: int) -> Tensor:
        out = torch.randn(shape, generator=self.generator, device=self.generator.device, dtype=self.x.dtype)
        return out.to(self.x.device)

    def signs(self, *shape: int) -> Tensor:
        """Uniform random signs in {-1, +1}."""
        return torch.where(self.rand(*shape) < 0.5, -1.0, 1.0).to(self.x.dtype)

    def randint(self, high: int) -> int:
        """One integer uniform in [0, high)."""
        return int(torch.randint(0, high, (1,), generator=self.generator, device=self.generator.device))

    # -- model access; every call is counted --
    def _logits(self, idx: Tensor, x_in: Tensor, copies: int) -> Tensor:
        self.queries[idx] += copies
        logits = self.model(x_in)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x_in.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the model must return logits of shape (B, K) = ({x_in.shape[0]}, K), got {got}")
        return logits

    def observe(self, idx: Tensor, x_cand: Tensor, logits: Tensor) -> None:
        """Record candidates: first misclassified point, else the smallest margin, per example.

        With ``verify`` = V > 1, a misclassified candidate of a still-open example is re-queried V - 1
        times; it is a success only if every call misclassifies it, otherwise its margin becomes the
        mean over the V calls (a confirmed-adversarial point is never replaced).
        """
        y = self.y[idx]
        m = margin(logits.detach(), y).to(self.margin.dtype)
        fooled = logits.detach().argmax(dim=1) != y
        open_ = ~self.success[idx]
        if self.verify > 1:
            fooled, m = self._confirm(idx, x_cand, fooled & open_, fooled, m)
        better = open_ & (fooled | (m < self.margin[idx]))
        if better.any():
            sel = idx[better]
            self.x_best[sel] = x_cand.detach()[better]
            self.margin[sel] = m[better]
            self.success[sel] = fooled[better]

    def _confirm(self, idx: Tensor, x_cand: Tensor, check: Tensor, fooled: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """Re-query the candidates in ``check`` (bool over idx) V - 1 times: all-fooled and mean margins."""
        if not check.any():
            return fooled, m
        sel = check.nonzero().flatten()
        reps, n = self.verify - 1, sel.numel()
        x_rep = x_cand.detach()[sel].repeat(reps, *([1] * (x_cand.ndim - 1)))
        with torch.no_grad():
            logits = self._logits(idx[sel], x_rep, reps).reshape(reps, n, -1)
        y = self.y[idx[sel]]
        extra_fooled = (logits.argmax(dim=2) != y).all(dim=0)
        extra_m = torch.stack([margin(logits[r], y) for r in range(reps)]).to(m.dtype)
        fooled, m = fooled.clone(), m.clone()
        fooled[sel] = extra_fooled  # the observed call (EOT-averaged when eot > 1) already misclassified them
        m[sel] = (m[sel] + extra_m.sum(dim=0)) / self.verify
        return fooled, m

    def evaluate(self, idx: Tensor, x_cand: Tensor, draws: int = 1) -> Tensor:
        """Scores (no gradient) at ``x_cand`` for examples ``idx``: the logits (n, K) of one forward, or with
        ``draws`` = M > 1 their mean over M batched draws of a stochastic model (M queries counted), which is
        also what is recorded (a score-based attack on EOT-averaged scores)."""
        n = x_cand.shape[0]
        with torch.no_grad():
            xr = x_cand if draws == 1 else x_cand.repeat(draws, *([1] * (x_cand.ndim - 1)))
            logits = self._logits(idx, xr, draws)
        if draws > 1:
            logits = logits.reshape(draws, n, -1).mean(dim=0)
        self.observe(idx, x_cand, logits)
        return logits

    def eot_draws(
        self, idx: Tensor, x_cand: Tensor, loss_fn: LossFn, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits (eot * n, K), losses (eot * n,) and input gradients (eot * n, C, H, W) of ``eot`` draws of
        the model at ``x_cand`` (n, C, H, W), in one batched forward: the batch repeated ``eot`` times, draw-major."""
        eot = self.eot
        with torch.enable_grad():
            xr = x_cand.detach().repeat(eot, 1, 1, 1).requires_grad_(True)
            logits = self._logits(idx, xr, eot)
            tr = None if target is None else target.repeat(eot)
            losses = loss_fn(logits, self.y[idx].repeat(eot), tr)
            grad = input_gradient(losses, xr)
        return logits, losses, grad

    def loss_grad(
        self, idx: Tensor, x_cand: Tensor, loss_fn: LossFn, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Loss (n,) and its input gradient (n, C, H, W), both averaged over ``eot`` batched draws.

        The batch is repeated ``eot`` times in one forward, so a stochastic model draws independent
        randomness for every copy; gradients and losses are then averaged per example.
        """
        n, eot = x_cand.shape[0], self.eot
        logits, losses, grad = self.eot_draws(idx, x_cand, loss_fn, target)
        grad = grad.reshape(eot, n, *x_cand.shape[1:]).mean(dim=0)
        loss = losses.detach().reshape(eot, n).mean(dim=0)
        self.observe(idx, x_cand, logits.detach().reshape(eot, n, -1).mean(dim=0))
        self.history.append(float(loss.mean()))
        return loss, grad

    def open(self, idx: Tensor) -> Tensor:
        """Boolean mask over ``idx``: examples not yet misclassified."""
        return ~self.success[idx]


@dataclass(frozen=True)
class AttackBudget:
    """The budget every attack shares, validated here once (torchattacks shape).

    Fields:
        eps: radius of the ball (>= 0; <= 1 for 'linf'), or the flow bound in [0, 2] for 'flow'.
        norm: threat model, 'linf' or 'l2' (an l_p ball), or 'flow' (StAdv's per-pixel flow bound).
        steps: iterations (gradient steps, or queries for score-based attacks), >= 1.
        restarts: independent runs; later runs only touch examples still classified correctly, >= 1.
        eot: model copies per gradient (Expectation over Transformation), >= 1.
        verify: for stochastic models, calls that must all misclassify a candidate before the example
            counts as broken and stops (1 = trust one call, the deterministic-model default); see
            :class:`AttackContext`.
        seed: seeds a fresh generator at every call (0 when neither seed nor generator is given).
        generator: a ``torch.Generator`` to draw from instead (its stream advances across calls).
    """

    eps: float
    norm: str = "linf"
    steps: int = 10
    restarts: int = 1
    eot: int = 1
    verify: int = 1
    seed: int | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        norm, eps, seed, generator = self.norm, self.eps, self.seed, self.generator
        finite = not isinstance(eps, bool) and isinstance(eps, (int, float)) and math.isfinite(eps)
        if norm == FLOW:
            if not finite or not 0 <= eps <= 2:
                raise ValueError(
                    f"the flow bound (eps; StAdv's bound=, normalised grid units where [-1, 1] spans the image) "
                    f"must be a finite number in [0, 2], got {eps!r}"
                )
        else:
            check_norm(norm)
            if not finite or eps < 0:
                raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if norm == "linf" and eps > 1:
            raise ValueError(f"l_inf eps must be <= 1 for images in [0, 1], got {eps}")
        for name in ("steps", "restarts", "eot", "verify"):
            _positive_int(getattr(self, name), name)
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        object.__setattr__(self, "eps", float(eps))
        object.__setattr__(self, "seed", 0 if seed is None and generator is None else seed)


_BUDGET_KEYWORDS = tuple(f.name for f in fields(AttackBudget))


def _budget_keywords(attack: str, keywords: dict[str, Any]) -> dict[str, Any]:
    """``keywords`` if they are all fields of :class:`AttackBudget`; a TypeError naming the others otherwise."""
    unknown = sorted(set(keywords) - set(_BUDGET_KEYWORDS))
    if "alpha" in unknown:
        raise TypeError(
            f"{attack} got alpha=: the step size is step_size= (alpha is the certification failure probability)"
        )
    if unknown:
        raise TypeError(
            f"{attack} got unexpected keyword arguments {unknown}; budget keywords: {', '.join(_BUDGET_KEYWORDS)} "
            "(the attack's own keywords: see its docstring)"
        )
    if "eps" not in keywords:
        raise TypeError(f"{attack} needs eps= (the radius of the threat model's ball)")
    return keywords


def step_size_or_default(step_size: float | None, radius: float, steps: int) -> float:
    """``step_size`` (> 0) checked, or the default 2.5 * radius / steps (Madry et al.)."""
    if step_size is None:
        return 2.5 * radius / steps
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise ValueError(f"step_size must be a number > 0 (None: 2.5 * eps / steps), got {step_size!r}")
    return float(step_size)


class Attack:
    """Base class: an attack with a fixed budget, called on (x, y) to produce adversarial images.

    Arguments:
        model: callable x (B, C, H, W) in [0, 1] -> logits (B, K); an ``nn.Module`` is put in eval mode
            during the attack and every submodule's train/eval mode is restored afterwards.
        budget keywords: the fields of :class:`AttackBudget` (norm, eps, steps, restarts, eot, verify, seed,
            generator; ``steps`` defaults to the attack's ``default_steps``), validated there and kept as
            ``attack.budget`` (and as the attributes of the same names).

    Shape:
        - x: (B, C, H, W), float, values in [0, 1].
        - y: (B,), int64 labels in [0, K).
        - output: (B, C, H, W) in [0, 1] with ||output - x|| <= eps per example.

    Examples::
        >>> attack = PGD(model, norm="linf", eps=0.1, steps=20)
        >>> x_adv = attack(x, y)
        >>> result = attack.run(x, y)  # AttackResult with success, queries, margin
    """

    default_steps: ClassVar[int] = 10  # ``steps`` when the budget keywords leave it out
    norms: ClassVar[tuple[str, ...]] = NORMS  # the threat models it attacks

    def __init__(self, model: Model, **budget_keywords: Any):
        if not callable(model):
            raise ValueError(f"model must be callable x -> logits, got {type(model).__name__}")
        self.model = model
        keywords = _budget_keywords(type(self).__name__, budget_keywords)
        budget = AttackBudget(**{"steps": self.default_steps, **keywords})
        if budget.norm not in self.norms:
            valid = ", ".join(self.norms)
            raise ValueError(f"{type(self).__name__}: unknown norm {budget.norm!r}; valid choices: {valid}")
        self.budget = budget
        self.norm, self.eps, self.steps, self.restarts = budget.norm, budget.eps, budget.steps, budget.restarts
        self.eot, self.verify, self.seed, self.generator = budget.eot, budget.verify, budget.seed, budget.generator

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def max_queries(self) -> int:
        """Per-example model evaluations without early stopping (clean check included)."""
        raise NotImplementedError

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        """Attack examples ``idx`` (all correctly classified); record candidates through ``ctx``."""
        raise NotImplementedError

    def _restarts(self, ctx: AttackContext, idx: Tensor, run: Callable[[Tensor], None]) -> bool:
        """``self.restarts`` calls of ``run(idx)``, each on the images of ``idx`` still open (not yet broken);
        False as soon as none is open."""
        for _ in range(self.restarts):
            idx = idx[ctx.open(idx)]
            if idx.numel() == 0:
                return False
            run(idx)
        return True

    def _generator_for(self, device: torch.device) -> torch.Generator:
        if self.generator is not None:
            return self.generator
        return torch.Generator(device=device).manual_seed(int(self.seed))

    def run(self, x: Tensor, y: Tensor) -> AttackResult:
        """Attack (x, y) and return the :class:`AttackResult` (best point per example, queries, success)."""
        check_images(x)
        if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be a (B,) = ({x.shape[0]},) tensor of labels, got {getattr(y, 'shape', type(y))}")
        y = y.to(x.device)
        ctx = AttackContext(self.model, x, y, eot=self.eot, generator=self._generator_for(x.device), verify=self.verify)
        everyone = torch.arange(x.shape[0], device=x.device)
        with eval_mode(self.model):
            with torch.no_grad():
                clean = ctx._logits(everyone, x, 1)
            check_labels(y, clean.shape[1])
            ctx.clean_logits = clean.detach()
            ctx.observe(everyone, x, clean)
            clean_correct = ~ctx.success.clone()
            todo = everyone[clean_correct]
            if todo.numel() and self.eps > 0:
                self._perturb(ctx, todo)
        return AttackResult(
            x_adv=ctx.x_best,
            success=ctx.success,
            queries=ctx.queries,
            margin=ctx.margin,
            clean_correct=clean_correct,
            max_queries=self.max_queries,
            loss_history=ctx.history,
        )

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial images (B, C, H, W) in [0, 1] within the eps-ball around ``x``."""
        return self.run(x, y).x_adv

    def __repr__(self) -> str:
        return (
            f"{self.name}(norm={self.norm!r}, eps={self.eps:g}, steps={self.steps}, "
            f"restarts={self.restarts}, eot={self.eot}, verify={self.verify}, seed={self.seed}{self._repr_extra()})"
        )

    def _repr_extra(self) -> str:
        """Settings a subclass adds to the repr, each as ', name=value' (none here)."""
        return ""


def input_gradient(losses: Tensor, x: Tensor) -> Tensor:
    """d(sum of losses)/dx, with a clear error when the model gives no gradient (needs-gradient attacks)."""
    if not losses.requires_grad:
        raise ValueError(
            "this attack needs input gradients, but the model's logits do not depend differentiably on the input "
            "(computed under no_grad, detached, or a non-differentiable stage); valid choices for such a model: "
            "a score-based attack ('square'), or wrap the non-differentiable stage in BPDA (rdc_lib.attacks.BPDA)"
        )
    (grad,) = torch.autograd.grad(losses.sum(), x)
    return grad


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value
