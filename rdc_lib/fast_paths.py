"""The exact speed-ups of the attack gradient (issue 41), switched on or off together.

Each fast path gives the same values as the code before it (up to float rounding; tests/test_fast_gradients.py) and
is on by default:

- ``EDMDenoiser.share_prefix``: a single-head FiLM denoiser evaluated for all classes computes the label-independent
  start of the network (input convolution, first block's first convolution and skip path, noise embedding) once per
  image instead of once per class (rdc_lib.models.film.FiLMNet.forward_classes).
- ``FiLMNet.split_decoder`` (single- and multi-head): the first decoder block convolves the upsampled and the skip
  features separately instead of their concatenation: the 3x3 convolution of the upsampled part is one transposed
  convolution at low resolution with summed taps (rdc_lib.models.film.conv3x3_upsampled) and its 1x1 skip runs
  before the upsampling (the same sums in another order: logits equal up to float rounding).
- ``FiLMNet.channels_last`` (single- and multi-head): the feature maps in channels-last memory format (the
  convolutions of 32 and 64 channels on 8x8 and 4x4 maps run faster there); a 1x1 convolution of channels-last
  features is a matrix product over the channels (rdc_lib.models.film.conv1x1).
- ``FiLMBlock.fused``: fewer elementwise passes and buffers per block: the FiLM multiply-add in one pass
  (addcmul), the first decoder block's sums and every residual's division by sqrt(2) in place (the same values).
- ``DiffusionClassifier.sparse_backward``: with a single-head network the backward runs only the (image, class)
  pairs with a nonzero incoming gradient (DLR: 3 of 10 classes; rdc_lib.defenses.dc_backward.SparseELBOSum).

``set_fast_paths(model, False)`` restores the code before them (benchmarks/timing/bench_grad_cost.py compares both in
one run).
"""

from __future__ import annotations

from torch import nn

from .defenses.classifier import DiffusionClassifier
from .models.film import FiLMBlock, FiLMNet
from .models.precond import EDMDenoiser

__all__ = ["fast_paths_state", "set_fast_paths"]


def set_fast_paths(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every fast path in ``model`` and its submodules on (``True``) or off; returns ``model``."""
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be True or False, got {enabled!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module (a defense or a denoiser), got {type(model).__name__}")
    for m in model.modules():
        if isinstance(m, EDMDenoiser):
            m.share_prefix = enabled
        if isinstance(m, DiffusionClassifier):
            m.sparse_backward = enabled
        if isinstance(m, FiLMNet):
            m.split_decoder = enabled
            m.channels_last = enabled
        if isinstance(m, FiLMBlock):
            m.fused = enabled
    return model


def fast_paths_state(model: nn.Module) -> dict[str, list[bool]]:
    """The switches found in ``model``: {'share_prefix': [...], 'sparse_backward': [...], 'split_decoder': [...],
    'channels_last': [...], 'fused': [...]} (one entry per module that has the switch)."""
    mods = list(model.modules())
    return {
        "share_prefix": [m.share_prefix for m in mods if isinstance(m, EDMDenoiser)],
        "sparse_backward": [m.sparse_backward for m in mods if isinstance(m, DiffusionClassifier)],
        "split_decoder": [m.split_decoder for m in mods if isinstance(m, FiLMNet)],
        "channels_last": [m.channels_last for m in mods if isinstance(m, FiLMNet)],
        "fused": [m.fused for m in mods if isinstance(m, FiLMBlock)],
    }
