"""Discriminative baselines for digits: a small CNN, trained normally or with PGD adversarial training.

- :class:`DigitsCNN`: x (B, 1, 8, 8) in [0, 1] -> logits (B, 10), about 0.1 M parameters.
- :func:`train_classifier`: Adam on the digits train split; ``adversarial=True`` is Madry et al. (2018)
  PGD adversarial training (every batch replaced by PGD-``attack_steps`` examples at ``eps``, step
  2.5 eps / steps, random start), the model in eval mode while the attack runs.
- :func:`load_classifier` rebuilds the network from the config stored in the safetensors checkpoint.

Everything random (weight init, shuffling, random starts) comes from one generator seeded by ``seed``, so
a run is reproducible on the same machine and torch build.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attacks.projections import check_norm, project_ball, steepest_direction
from ..core.utils import check_images, make_generator, resolve_device
from ..data import load_dataset
from ..models.checkpoints import load_state_into, read_typed_checkpoint, save_checkpoint

__all__ = [
    "BASELINE_KINDS",
    "CLASSIFIER_ARCHITECTURES",
    "ClassifierConfig",
    "DigitsCNN",
    "TrainedClassifier",
    "build_classifier",
    "load_classifier",
    "train_baseline_kind",
    "train_classifier",
]

log = logging.getLogger(__name__)

CLASSIFIER_ARCHITECTURES = ("digits-cnn",)
# The settings of the shipped checkpoints (data/checkpoints/digits_cnn.safetensors, digits_at_cnn.safetensors).
BASELINE_KINDS: dict[str, dict[str, Any]] = {
    "cnn": {"adversarial": False},
    "at-cnn": {"adversarial": True, "eps": 0.1, "norm": "linf", "attack_steps": 10},
}


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a baseline classifier (stored next to the weights)."""

    arch: str = "digits-cnn"
    img_channels: int = 1
    img_resolution: int = 8
    num_classes: int = 10
    channels: tuple[int, int] = (16, 32)  # conv widths at full and half resolution
    hidden: int = 64  # width of the fully connected layer

    def __post_init__(self) -> None:
        if self.arch not in CLASSIFIER_ARCHITECTURES:
            raise ValueError(
                f"unknown classifier arch {self.arch!r}; valid choices: {', '.join(CLASSIFIER_ARCHITECTURES)}"
            )
        if self.img_resolution % 2 or self.img_resolution < 2:
            raise ValueError(f"img_resolution must be an even number >= 2, got {self.img_resolution}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassifierConfig":
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return cls(**d)


class DigitsCNN(nn.Module):
    """conv3x3-ReLU, conv3x3-ReLU, maxpool 2, conv3x3-ReLU, linear-ReLU, linear: (B, C, H, W) -> (B, K)."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        config = config if config is not None else ClassifierConfig()
        c1, c2 = config.channels
        self.config = config
        self.features = nn.Sequential(
            nn.Conv2d(config.img_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.ReLU(),
        )
        side = config.img_resolution // 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [0, 1] -> logits (B, K)."""
        check_images(x, channels=self.config.img_channels, resolution=self.config.img_resolution)
        return self.head(self.features(x))


def build_classifier(config: ClassifierConfig, generator: torch.Generator | None = None) -> DigitsCNN:
    """A classifier with He-uniform weights drawn from ``generator`` (zero biases)."""
    net = DigitsCNN(config)
    if generator is not None:
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    fan_in = module.weight[0].numel()
                    bound = math.sqrt(6.0 / fan_in)
                    noise = torch.rand(module.weight.shape, generator=generator, device=generator.device)
                    module.weight.copy_((2 * noise - 1) * bound)
                    module.bias.zero_()
    return net


@dataclass
class TrainedClassifier:
    """What :func:`train_classifier` returns."""

    model: DigitsCNN
    path: Path
    test_accuracy: float
    train_loss: list[float] = field(default_factory=list)  # mean loss per epoch
    settings: dict[str, Any] = field(default_factory=dict)


def _pgd_batch(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, steps: int, generator: torch.Generator
) -> Tensor:
    """Madry PGD on the CE loss with a uniform random start (no early stopping: the training attack)."""
    alpha = 2.5 * eps / steps
    noise = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device)
    x_adv = project_ball(x + (2 * noise - 1) * eps, x, norm, eps)  # l2: the cube's point projected on the ball
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = project_ball(x_adv.detach() + alpha * steepest_direction(grad, norm), x, norm, eps)
    return x_adv.detach()


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train_classifier(
    out: str | Path,
    *,
    adversarial: bool = False,
    eps: float = 0.1,
    norm: str = "linf",
    attack_steps: int = 10,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    dataset: str = "digits",
    config: ClassifierConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainedClassifier:
    """Train a baseline classifier on ``dataset`` and save it to ``out`` (safetensors, kind 'classifier').

    Arguments:
        out: checkpoint path (.safetensors).
        adversarial: Madry PGD adversarial training at (``norm``, ``eps``) with ``attack_steps`` steps.
        epochs, batch_size, lr, weight_decay: Adam (decoupled weight decay) training, cosine learning rate.
        seed: seeds weight init, shuffling and the training attack's random starts.
    """
    check_norm(norm)
    if adversarial and not (eps > 0 and attack_steps >= 1):
        raise ValueError(
            f"adversarial training needs eps > 0 and attack_steps >= 1, got eps={eps}, steps={attack_steps}"
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    device = resolve_device(device)
    x_train, y_train = (t.to(device) for t in load_dataset(dataset, "train"))
    x_test, y_test = (t.to(device) for t in load_dataset(dataset, "test"))
    if config is None:
        config = ClassifierConfig(
            img_channels=x_train.shape[1], img_resolution=x_train.shape[2], num_classes=int(y_train.max()) + 1
        )
    gen = make_generator(seed, device)
    model = build_classifier(config, gen).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-x_train.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    history: list[float] = []
    bar = tqdm(range(epochs), desc="train " + ("at-cnn" if adversarial else "cnn"), unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(x_train.shape[0], generator=gen, device=device)
        total = 0.0
        for start in range(0, x_train.shape[0], batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if adversarial:
                model.eval()
                xb = _pgd_batch(model, xb, yb, eps=eps, norm=norm, steps=attack_steps, generator=gen)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        history.append(total / x_train.shape[0])
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    test_acc = _accuracy(model, x_test, y_test)
    settings = {
        "dataset": dataset,
        "adversarial": adversarial,
        "eps": eps,
        "norm": norm,
        "attack_steps": attack_steps,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "test_accuracy": test_acc,
    }
    path = save_checkpoint(out, model, kind="classifier", config=_config_dict(config), extra=settings)
    log.info("saved %s (test accuracy %.4f)", path, test_acc)
    return TrainedClassifier(model=model, path=path, test_accuracy=test_acc, train_loss=history, settings=settings)


def train_baseline_kind(
    kind: str, out: str | Path, *, seed: int = 0, progress: bool = True, device: str | torch.device | None = None
) -> dict[str, Any]:
    """Train baseline ``kind`` ('cnn' or 'at-cnn') with the shipped settings (:data:`BASELINE_KINDS`).

    Returns a JSON-serialisable summary: path, kind, test accuracy, final training loss, settings.
    The shipped files are ``train_baseline_kind('cnn', 'data/checkpoints/digits_cnn.safetensors', seed=0)``
    and ``train_baseline_kind('at-cnn', 'data/checkpoints/digits_at_cnn.safetensors', seed=0)``.
    """
    if kind not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline kind {kind!r}; valid choices: {', '.join(BASELINE_KINDS)}")
    trained = train_classifier(out, seed=seed, progress=progress, device=device, **BASELINE_KINDS[kind])
    return {
        "kind": kind,
        "path": str(trained.path),
        "test_accuracy": trained.test_accuracy,
        "final_train_loss": trained.train_loss[-1],
        "settings": trained.settings,
    }


def _config_dict(config: ClassifierConfig) -> dict[str, Any]:
    d = asdict(config)
    d["channels"] = list(config.channels)
    return d


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> DigitsCNN:
    """Rebuild a baseline classifier from a checkpoint, in eval mode on ``device``."""
    state, cfg = read_typed_checkpoint(path, "classifier", ClassifierConfig)
    model = DigitsCNN(cfg)
    load_state_into(model, state, str(path))
    return model.to(resolve_device(device)).eval()
