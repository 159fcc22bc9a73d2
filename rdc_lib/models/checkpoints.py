"""Safe checkpoints: safetensors weights with a JSON config in the file's metadata.

A checkpoint is one ``.safetensors`` file: tensors (the state dict) plus metadata
``{"rdc_kind": "denoiser" | "classifier" | ..., "config": <json>, "extra": <json>}``. Loading never
unpickles anything. ``load_denoiser`` rebuilds the network from the stored config and refuses a
file of another kind or whose weights do not fit the architecture, with a clear error.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .base import Denoiser
from .config import DenoiserConfig, build_denoiser
from .diffusers_adapter import inspect_diffusers_folder, is_diffusers_ref, load_diffusers_denoiser

__all__ = ["save_checkpoint", "read_checkpoint", "load_denoiser", "save_denoiser", "load_state_into"]


def save_checkpoint(path: str | Path, module: nn.Module, kind: str, config: dict, extra: dict | None = None) -> Path:
    """Write ``module``'s state dict and its config to ``path`` (a .safetensors file), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    meta = {"rdc_kind": kind, "config": json.dumps(config), "extra": json.dumps(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, expected_kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read (state_dict, config, extra) from a checkpoint written by ``save_checkpoint``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .safetensors file written by rdc)")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {err}") from err
    kind = meta.get("rdc_kind")
    if kind is None or "config" not in meta:
        raise ValueError(f"{path} is a safetensors file but not an rdc checkpoint (no 'rdc_kind'/'config' metadata)")
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"{path} holds a '{kind}' checkpoint, expected a '{expected_kind}' checkpoint")
    return state, json.loads(meta["config"]), json.loads(meta.get("extra", "{}"))


class _FromDict(Protocol):
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any: ...


ConfigT = TypeVar("ConfigT", bound=_FromDict)


def read_typed_checkpoint(
    path: str | Path, kind: str, config_type: type[ConfigT]
) -> tuple[dict[str, torch.Tensor], ConfigT]:
    """The state dict and the config of the ``kind`` checkpoint at ``path``, the config parsed by
    ``config_type.from_dict``; a config that does not parse is a clear error naming the file."""
    state, config, _ = read_checkpoint(path, expected_kind=kind)
    try:
        return state, config_type.from_dict(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} has an invalid {kind} config: {err}") from err


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``load_state_dict`` that reports missing / unexpected / mis-shaped weights by name."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} with wrong shapes "
                f"(e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
            )
        raise ValueError(f"checkpoint {source} does not match the architecture: " + "; ".join(parts))
    module.load_state_dict(state)
    return module


def save_denoiser(path: str | Path, denoiser: Denoiser, config: DenoiserConfig, extra: dict | None = None) -> Path:
    return save_checkpoint(path, denoiser, "denoiser", asdict(config), extra)


def load_denoiser(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Denoiser:
    """Rebuild a denoiser from a checkpoint, in eval mode, on ``device`` with ``dtype``. ``'diffusers:FOLDER'``
    loads a local diffusers model through the adapter (rdc_lib.models.diffusers_adapter; digits-sized)."""
    if is_diffusers_ref(path):
        return load_diffusers_denoiser(path, device=device, dtype=dtype)
    state, cfg = read_typed_checkpoint(path, "denoiser", DenoiserConfig)
    net = build_denoiser(cfg)
    load_state_into(net, state, str(path))
    return net.to(device=device, dtype=dtype).eval()


def require_trained_null_label(path: str | Path, use: str) -> None:
    """Refuse a single-head checkpoint trained without label dropout for ``use`` (LM, purification), which
    denoises with the null label (p(x)): such a network never saw that label, its output there is untrained.
    Checkpoints without training settings (imported ones) pass; a diffusers model passes if it has a null label."""
    if is_diffusers_ref(path):
        if inspect_diffusers_folder(path)["null_label"] is None:
            raise ValueError(
                f"{use} denoises with the null label (p(x)), but the diffusers model {path} has none "
                "(num_class_embeds = the number of classes); use one trained with label dropout and "
                "num_class_embeds = classes + 1"
            )
        return
    train = checkpoint_extra(path).get("train_config") or {}
    if train.get("heads") == "single" and train.get("label_dropout") == 0:
        raise ValueError(
            f"{use} denoises with the null label (p(x)), but checkpoint {path} was trained with "
            "label_dropout 0, so its null label was never trained; use a checkpoint trained with "
            "label dropout > 0 (e.g. the default) or a multi-head one"
        )


def checkpoint_extra(path: str | Path) -> dict[str, Any]:
    """The free-form 'extra' metadata (training settings, provenance) of a checkpoint."""
    return read_checkpoint(path)[2]
