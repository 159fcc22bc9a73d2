"""The paired (McNemar) comparison of two defenses' per-image outcomes (rdc_lib.evaluation.stats)."""

import pytest

from rdc_lib.evaluation.stats import paired_comparison


def test_counts_and_exact_p_value_by_hand():
    # 5 discordant images, all on one side: p = 2 * (1/2)^5
    a = [True] * 5 + [True, False, False]
    b = [False] * 5 + [True, False, False]
    cmp = paired_comparison(a, b)
    assert (cmp.both, cmp.a_only, cmp.b_only, cmp.neither) == (1, 5, 0, 2)
    assert cmp.p_value == pytest.approx(2 / 32)


def test_a_large_one_sided_difference_is_significant_and_a_balanced_one_is_not():
    lopsided = paired_comparison([True] * 49 + [False] * 10, [False] * 49 + [True] * 10)
    assert lopsided.p_value < 1e-6  # 49 against 10 discordant images
    balanced = paired_comparison([True] * 10 + [False] * 10, [False] * 10 + [True] * 10)
    assert balanced.p_value == 1.0
    assert paired_comparison([True, False], [True, False]).p_value == 1.0  # no discordant image


def test_the_test_is_symmetric():
    a, b = [True, True, True, False, True], [False, False, True, True, False]
    assert paired_comparison(a, b).p_value == paired_comparison(b, a).p_value


def test_outcomes_on_different_images_are_refused():
    with pytest.raises(ValueError, match="same images"):
        paired_comparison([True, False], [True])
