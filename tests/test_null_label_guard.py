"""LM and DiffPure denoise with the null label: a single-head checkpoint trained without label dropout is refused."""

from __future__ import annotations

import pytest

from rdc_lib.core.paths import checkpoint_path
from rdc_lib.defenses import DefenseSpec, build_defense
from rdc_lib.models.checkpoints import require_trained_null_label

UNTRAINED_NULL = checkpoint_path("digits_film_single_ld0")  # rdc train ... --label-dropout 0


@pytest.mark.parametrize("defense", ["rdc", "diffpure"])
def test_a_checkpoint_without_label_dropout_is_refused_where_the_null_label_is_used(defense):
    with pytest.raises(ValueError, match="label_dropout 0, so its null label was never trained"):
        build_defense(DefenseSpec(name=defense, heads="single", denoiser_path=str(UNTRAINED_NULL)))


def test_the_dc_does_not_use_the_null_label_and_accepts_it():
    assert build_defense(DefenseSpec(name="dc", heads="single", denoiser_path=str(UNTRAINED_NULL))) is not None


def test_lm_switched_off_needs_no_null_label():
    spec = DefenseSpec(name="rdc", heads="single", denoiser_path=str(UNTRAINED_NULL), lm_steps=0)
    assert build_defense(spec) is not None


@pytest.mark.parametrize("name", ["digits_film_single", "digits_single", "digits_film_multi_distill9"])
def test_checkpoints_with_a_trained_null_label_pass(name):
    require_trained_null_label(checkpoint_path(name), "likelihood maximization")
