"""The shared fixtures of tests/conftest.py do what the test modules rely on."""

from __future__ import annotations

import pytest
import torch

from .conftest import TINY_BACKBONE, tiny_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def threads_seen_by_a_module_fixture() -> int:
    return torch.get_num_threads()


def test_one_thread_covers_module_scoped_fixtures_and_tests(threads_seen_by_a_module_fixture):
    assert threads_seen_by_a_module_fixture == 1  # e.g. a CNN trained once per module runs single-threaded
    assert torch.get_num_threads() == 1


def test_tiny_backbone_builds_a_small_denoiser():
    net = tiny_denoiser("multi", num_classes=3)
    assert net.num_classes == 3 and sum(p.numel() for p in net.parameters()) < 100_000
    assert TINY_BACKBONE == dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, dropout=0.0)  # not mutated
