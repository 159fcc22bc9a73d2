"""AutoAttack-style ensemble: worst case per example over several attacks, resumable, chunked.

``run_ensemble`` processes the data in chunks. In each chunk it classifies the clean images (against a
stochastic model an image is a clean error only if ``verify`` calls all misclassify it), then runs
the attacks in order, each one only on the examples that every earlier attack failed to break, and
checks every attack's output with one more forward (as AutoAttack does), so an example counts as broken
only if the model misclassifies the returned image. For examples that stay robust it keeps the returned
image with the smallest margin (the closest call). After every chunk the state is written to
``state_path`` (torch.save, atomically); a later call with the same inputs and attacks resumes after the
last finished chunk. Attacks built with ``seed=`` reseed at every call, so a resumed run gives exactly
the result of an uninterrupted one. A state file that is damaged or was written for other inputs,
attacks or code raises ``StoredStateError`` naming it; ``restart=True`` moves it aside and starts afresh.

Queries are counted per example (clean check, every attack's own queries, the verification forwards)
and compared with the budget every attack would spend on every example without early stopping.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.progress import progress_bar
from ..core.stored_state import StoredStateError, load_torch_state, restart_aside, source_version
from ..core.utils import check_images
from .base import Attack, Model, eval_mode
from .losses import margin
from .registry import AUTOATTACK_MEMBERS, build_attack  # AUTOATTACK_MEMBERS: re-exported
from .verified import clean_verified, verified_run

__all__ = ["AUTOATTACK_MEMBERS", "ChunkReport", "EnsembleResult", "autoattack_suite", "run_ensemble"]

log = logging.getLogger(__name__)

_STATE_FORMAT = "rdc-ensemble-state/2"  # /2: with the code version
RESTART = "restart=True (run_ensemble)"
CLEAN_ERROR, ROBUST = -2, -1  # values of EnsembleResult.broken_by besides attack indices


def autoattack_suite(
    model: Model,
    *,
    steps: int = 100,
    seed: int = 0,
    square_queries: int = 5000,
    n_target_classes: int = 9,
    include_dlr: bool = True,
    **budget: Any,
) -> list[tuple[str, Attack]]:
    """AutoAttack 'standard' (APGD-CE, APGD-T with targeted DLR, Square) plus untargeted APGD-DLR.

    ``budget``: the other budget keywords of every member (eps, norm, restarts, eot, verify; see
    :class:`~rdc_lib.attacks.base.AttackBudget`). Order: apgd-ce, apgd-dlr (if ``include_dlr``), apgd-t, square.
    Against a stochastic defense every member averages ``eot`` draws: the APGD attacks their gradients, Square its
    scores (the margin of the mean logits, ``eot`` queries per iteration), and every member stops on an image only
    when ``verify`` fresh calls all misclassify it. ``eot`` and ``verify`` must be ints >= 1.
    """
    for name in ("eot", "verify"):
        value = budget.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"the AutoAttack-style ensemble needs {name} >= 1 (draws of a stochastic defense: "
                f"1 for a deterministic one), got {name} = {value!r}"
            )
    common = dict(seed=seed, **budget)
    suite = [("apgd-ce", build_attack("apgd-ce", model, steps=steps, **common))]
    if include_dlr:
        suite.append(("apgd-dlr", build_attack("apgd-dlr", model, steps=steps, **common)))
    suite.append(("apgd-t", build_attack("apgd-t", model, steps=steps, n_target_classes=n_target_classes, **common)))
    suite.append(("square", build_attack("square", model, steps=square_queries, **{**common, "restarts": 1})))
    return suite


@dataclass
class ChunkReport:
    """Progress after one finished chunk (passed to ``callback``)."""

    chunk: int  # index of the chunk just finished
    n_chunks: int
    examples_done: int
    clean_correct: int  # counts over the examples done so far
    robust: int


@dataclass
class EnsembleResult:
    """Worst case per example over the attacks of an ensemble (N examples, A attacks)."""

    x_adv: Tensor  # (N, C, H, W) in [0, 1]: first image that broke the example, else closest call
    clean_correct: Tensor  # (N,) bool
    robust: Tensor  # (N,) bool: correctly classified after every attack
    broken_by: Tensor  # (N,) int64: index into attack_names, -1 robust, -2 misclassified clean
    margin: Tensor  # (N,) z_y - max_{k != y} z_k at x_adv, as verified
    queries: Tensor  # (N,) int64 model evaluations spent per example
    attack_names: list[str]
    queries_per_attack: list[int]  # spent by each attack (its verification forwards included)
    budget_per_attack: list[int]  # each attack on every example, without early stopping

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    @property
    def queries_spent(self) -> int:
        return int(self.queries.sum())

    @property
    def queries_budget(self) -> int:
        """Queries without any early stopping: clean check + every attack on every example."""
        return self.x_adv.shape[0] + sum(self.budget_per_attack)

    @property
    def early_stop_saving(self) -> float:
        """1 - spent / budget: the share of model evaluations saved by early stopping."""
        return 1.0 - self.queries_spent / max(1, self.queries_budget)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (accuracies, per-attack counts and queries)."""
        per_attack = {
            name: {
                "broken": int((self.broken_by == i).sum()),
                "queries": self.queries_per_attack[i],
                "budget": self.budget_per_attack[i],
            }
            for i, name in enumerate(self.attack_names)
        }
        return {
            "n": int(self.robust.numel()),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "queries_spent": self.queries_spent,
            "queries_budget": self.queries_budget,
            "early_stop_saving": self.early_stop_saving,
            "attacks": per_attack,
        }


def _fingerprint(x: Tensor, y: Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(str((tuple(x.shape), str(x.dtype))).encode())
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _fresh_state(x: Tensor, attacks: Sequence[tuple[str, Attack]], chunk_size: int, fingerprint: str) -> dict:
    n = x.shape[0]
    return {
        "format": _STATE_FORMAT,
        "fingerprint": fingerprint,
        "chunk_size": chunk_size,
        "code": source_version(),
        "attacks": [f"{name}: {atk!r}" for name, atk in attacks],
        "next_chunk": 0,
        "x_adv": x.detach().clone(),
        "clean_correct": torch.zeros(n, dtype=torch.bool),
        "robust": torch.zeros(n, dtype=torch.bool),
        "broken_by": torch.full((n,), ROBUST, dtype=torch.int64),
        "margin": torch.full((n,), float("inf")),
        "queries": torch.zeros(n, dtype=torch.int64),
        "queries_per_attack": torch.zeros(len(attacks), dtype=torch.int64),
        "budget_per_attack": torch.zeros(len(attacks), dtype=torch.int64),
    }


def _load_state(path: Path, expected: dict, device: torch.device) -> dict:
    """The checked state in ``path``; damage or a mismatch raises :class:`StoredStateError`."""
    state = load_torch_state(path, restart=RESTART, map_location=device)
    if state.get("format") != _STATE_FORMAT:
        raise StoredStateError(
            path,
            f"it is not an ensemble state file of this version (format "
            f"{state.get('format')!r}, expected {_STATE_FORMAT!r})",
            restart=RESTART,
        )
    for key, what in (
        ("fingerprint", "inputs (x, y)"),
        ("chunk_size", "chunk_size"),
        ("attacks", "attacks"),
        ("code", "code version"),
    ):
        if state.get(key) != expected[key]:
            raise StoredStateError(
                path, f"it was written for other {what}: {state.get(key)!r} != {expected[key]!r}", restart=RESTART
            )
    n_chunks = -(-expected["x_adv"].shape[0] // expected["chunk_size"])
    next_chunk = state.get("next_chunk")
    if not isinstance(next_chunk, int) or isinstance(next_chunk, bool) or not 0 <= next_chunk <= n_chunks:
        raise StoredStateError(
            path, f"next_chunk is {next_chunk!r}, expected an int in [0, {n_chunks}]", restart=RESTART
        )
    for key, ref in expected.items():
        if not isinstance(ref, Tensor):
            continue
        got = state.get(key)
        if not isinstance(got, Tensor) or got.shape != ref.shape or got.dtype != ref.dtype:
            found = f"{got.dtype} {tuple(got.shape)}" if isinstance(got, Tensor) else type(got).__name__
            raise StoredStateError(
                path, f"{key!r} is {found}, expected {ref.dtype} {tuple(ref.shape)}", restart=RESTART
            )
    if not torch.isfinite(state["x_adv"]).all() or state["x_adv"].min() < 0 or state["x_adv"].max() > 1:
        raise StoredStateError(path, "x_adv has values outside [0, 1] or not finite", restart=RESTART)
    return state


def _save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.cpu() if isinstance(v, Tensor) else v for k, v in state.items()}, tmp)
    tmp.replace(path)


def _run_chunk(model: Model, x: Tensor, y: Tensor, attacks: Sequence[tuple[str, Attack]], verify: bool) -> dict:
    """All attacks on one chunk (the verified protocol of ``verified.py``); returns the chunk's rows of the state."""
    n = x.shape[0]
    clean, clean_correct, queries = clean_verified(model, x, y, max(a.verify for _, a in attacks) if verify else 1)
    out = {
        "x_adv": x.detach().clone(),
        "clean_correct": clean_correct,
        "robust": clean_correct.clone(),
        "broken_by": torch.where(clean_correct, ROBUST, CLEAN_ERROR).to(torch.int64),
        "margin": margin(clean, y).to(x.dtype),
        "queries": queries,
        "queries_per_attack": [0] * len(attacks),
        "budget_per_attack": [0] * len(attacks),
    }
    for i, (_, attack) in enumerate(attacks):
        draws = attack.verify if verify else 0
        out["budget_per_attack"][i] = n * (attack.max_queries + draws)
        idx = out["robust"].nonzero().flatten()
        if idx.numel() == 0:
            continue
        run = verified_run(model, attack, x[idx], y[idx], draws)
        queries[idx] += run.spent
        out["queries_per_attack"][i] = int(run.spent.sum())
        take = run.fooled | (run.margin < out["margin"][idx])
        out["x_adv"][idx[take]] = run.result.x_adv[take]
        out["margin"][idx[take]] = run.margin[take]
        out["robust"][idx[run.fooled]] = False
        out["broken_by"][idx[run.fooled]] = i
    return out


def run_ensemble(
    model: Model,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[tuple[str, Attack]],
    *,
    chunk: int = 256,
    state_path: str | Path | None = None,
    progress: bool = True,
    callback: Callable[[ChunkReport], None] | None = None,
    verify: bool = True,
    restart: bool = False,
) -> EnsembleResult:
    """Worst case per example over ``attacks`` (list of (name, attack)), run in chunks, resumable.

    Arguments:
        model: x (B, C, H, W) in [0, 1] -> logits (B, K); used for the clean check and verification.
        x, y: (N, C, H, W) images in [0, 1] and (N,) labels.
        attacks: (name, attack) pairs, run in this order; each sees only still-robust examples.
        chunk: examples per chunk (the unit of progress and of saved state; stored as ``chunk_size``).
        state_path: file to save the state to after every chunk and to resume from.
        progress: show a tqdm bar over chunks.
        callback: called with a :class:`ChunkReport` after each chunk (after the state is saved).
        verify: re-classify every attack's output (AutoAttack's check) with ``attack.verify`` forwards that
            must all misclassify it (one forward for deterministic models); with False the attack's own
            success flags are trusted (cheaper for expensive deterministic models).
        restart: move an existing ``state_path`` aside (renamed ``.damaged-<time>`` or ``.replaced-<time>``,
            never deleted) and start afresh. Without it, a damaged or mismatched state file raises
            :class:`~rdc_lib.core.stored_state.StoredStateError` naming the file.
    """
    check_images(x)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    if not attacks:
        raise ValueError("attacks is empty; pass a list of (name, Attack), e.g. autoattack_suite(...)")
    for item in attacks:
        if not (
            isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Attack)
        ):
            raise ValueError(f"attacks must be (name, Attack) pairs, got {item!r}")
    if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a ({x.shape[0]},) tensor of labels, got {getattr(y, 'shape', type(y))}")
    y = y.to(x.device)
    names = [name for name, _ in attacks]
    n, n_chunks = x.shape[0], -(-x.shape[0] // chunk)
    state = _fresh_state(x, attacks, chunk, _fingerprint(x, y))
    path = Path(state_path) if state_path is not None else None
    if path is not None and restart:
        restart_aside([path], lambda: _load_state(path, state, x.device))
    if path is not None and path.exists():
        state = _load_state(path, state, x.device)
        log.info("resuming ensemble from %s at chunk %d/%d", path, state["next_chunk"], n_chunks)
    state = {k: v.to(x.device) if isinstance(v, Tensor) else v for k, v in state.items()}
    bar = progress_bar(n_chunks, "ensemble", "chunk", enabled=progress, initial=state["next_chunk"])
    try:
        with eval_mode(model):
            for c in range(state["next_chunk"], n_chunks):
                sl = slice(c * chunk, min(n, (c + 1) * chunk))
                rows = _run_chunk(model, x[sl], y[sl], attacks, verify)
                for key in ("x_adv", "clean_correct", "robust", "broken_by", "margin", "queries"):
                    state[key][sl] = rows[key].to(state[key].dtype)
                for key in ("queries_per_attack", "budget_per_attack"):
                    state[key] += torch.tensor(rows[key], dtype=torch.int64, device=x.device)
                state["next_chunk"] = c + 1
                if path is not None:
                    _save_state(path, state)
                done = sl.stop
                report = ChunkReport(
                    c, n_chunks, done, int(state["clean_correct"][:done].sum()), int(state["robust"][:done].sum())
                )
                bar.update(1)
                bar.set_postfix(clean=f"{report.clean_correct / done:.3f}", robust=f"{report.robust / done:.3f}")
                if callback is not None:
                    callback(report)
    finally:
        bar.close()
    return EnsembleResult(
        x_adv=state["x_adv"],
        clean_correct=state["clean_correct"],
        robust=state["robust"],
        broken_by=state["broken_by"],
        margin=state["margin"],
        queries=state["queries"],
        attack_names=names,
        queries_per_attack=[int(v) for v in state["queries_per_attack"]],
        budget_per_attack=[int(v) for v in state["budget_per_attack"]],
    )
