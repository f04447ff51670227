"""tools.expert_tolerance: a biased expert fails where its unbiased self succeeds; directions are paired."""

from __future__ import annotations

import numpy as np
import pytest

from tools.expert_tolerance import bias_vector, format_tolerance, tolerance


def test_bias_vectors_are_horizontal_of_the_asked_length_and_shared_across_lengths():
    a, b = bias_vector(0.01, 0, 3), bias_vector(0.03, 0, 3)
    assert a[2] == b[2] == 0.0 and np.linalg.norm(a) == pytest.approx(0.01)
    np.testing.assert_allclose(b, 3 * a)
    assert not np.allclose(bias_vector(0.01, 0, 4), a)


def test_a_large_target_bias_breaks_the_expert_and_the_table_says_so():
    results = tolerance("simpler_google", ["pick_coke_can_horizontal"], [0.0, 0.08], episodes=2)
    assert results["pick_coke_can_horizontal"][0.0] == [True, True]
    assert results["pick_coke_can_horizontal"][0.08] == [False, False]
    table = format_tolerance(results)
    assert "| pick_coke_can_horizontal | 100% [34, 100] | 0% [0, 66] |" in table
