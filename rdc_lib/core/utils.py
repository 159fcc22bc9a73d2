"""Small shared helpers: input validation, generators, shape utilities.

Every public entry point of ``rdc_lib`` validates user input here, so a bad tensor fails with a
``ValueError`` naming what was wrong and what was expected instead of a shape error deep in torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "append_dims",
    "check_images",
    "check_labels",
    "make_generator",
    "spawn_generator",
    "resolve_device",
]


def append_dims(x: Tensor, target_dims: int) -> Tensor:
    """Append trailing singleton dims to ``x`` until it has ``target_dims`` dims."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


def check_images(
    x: Tensor,
    *,
    channels: int | None = None,
    resolution: int | None = None,
    name: str = "x",
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """Validate a batch of images: a float tensor (B, C, H, W), finite, values in ``value_range``.

    Returns ``x`` unchanged. Raises ``ValueError`` that names the offending property.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) (4 dims), got {x.ndim} dims with shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor (float32/float64) in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0); expected at least one image")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels, expected {channels} (shape (B, {channels}, H, W))")
    if resolution is not None and (x.shape[2] != resolution or x.shape[3] != resolution):
        raise ValueError(f"{name} has spatial size {x.shape[2]}x{x.shape[3]}, expected {resolution}x{resolution}")
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf values; expected finite values")
        if value_range is not None:
            lo, hi = value_range
            x_min, x_max = float(x.min()), float(x.max())
            tol = 1e-6
            if x_min < lo - tol or x_max > hi + tol:
                raise ValueError(f"{name} has values in [{x_min:.4g}, {x_max:.4g}], expected images in [{lo}, {hi}]")
    return x


def check_labels(y: Tensor, num_classes: int, *, batch: int | None = None, name: str = "y") -> Tensor:
    """Validate integer class labels of shape (B,) in [0, num_classes)."""
    if not isinstance(y, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of int64 labels, got {type(y).__name__}")
    if y.ndim != 1:
        raise ValueError(f"{name} must have shape (B,), got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (int64), got dtype {y.dtype}")
    if batch is not None and y.shape[0] != batch:
        raise ValueError(f"{name} has {y.shape[0]} labels but the batch has {batch} images")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{name} has labels in [{int(y.min())}, {int(y.max())}], expected labels in [0, {num_classes - 1}]"
        )
    return y


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a device argument into a ``torch.device``; ``None`` means CPU (never an implicit CUDA)."""
    if device is None:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but CUDA is not available on this machine; use 'cpu'")
    return device


def make_generator(seed: int, device: str | torch.device | None = None) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (the global RNG is never touched)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return torch.Generator(device=resolve_device(device)).manual_seed(seed)


def spawn_generator(generator: torch.Generator | None, device: torch.device | None = None) -> torch.Generator:
    """Derive an independent child generator from ``generator`` (or from fresh OS entropy if None).

    Used to give each stochastic stage (LM, DC, purification) its own stream without ever touching
    the global RNG.
    """
    device = device or torch.device("cpu")
    if generator is None:
        seed = int.from_bytes(__import__("os").urandom(8), "little") >> 1
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator(device=device).manual_seed(seed)


class OwnedRandomness:
    """Mixin for modules that own their random stream (never the global RNG).

    Needs attributes ``seed: int``, ``noise_mode: 'stochastic' | 'fixed'`` and ``_generator``.
    'fixed': the same draw on every call (a fresh generator seeded with ``seed``); 'stochastic': one
    persistent generator, seeded once, advancing with every call.
    """

    seed: int
    noise_mode: str
    _generator: torch.Generator | None

    def reseed(self, seed: int) -> None:
        """Restart the module's random stream from ``seed``."""
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        self._generator = None

    def _gen(self, device: torch.device) -> torch.Generator:
        if self.noise_mode == "fixed":
            return torch.Generator(device=device).manual_seed(self.seed)
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator


def batched(seq: Sequence[int] | int, size: int) -> list[slice]:
    """Slices that cut ``range(n)`` into consecutive chunks of at most ``size``."""
    n = seq if isinstance(seq, int) else len(seq)
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
