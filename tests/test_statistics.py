import numpy as np
import pytest

from benchmark.evaluation.statistics import bootstrap_ci, holm, paired_test


def test_holm_matches_the_step_down_rule_by_hand():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 → 0.04, max(0.04, 0.06), max(.., 0.06), max(.., 0.5)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


def test_wilcoxon_exact_p_value_by_hand():
    # six positive differences with distinct ranks: the exact two-sided p is 2 / 2^6
    a = [0.9, 0.8, 0.85, 0.7, 0.95, 0.75]
    b = [x - d for x, d in zip(a, (0.01, 0.02, 0.03, 0.04, 0.05, 0.06))]
    assert paired_test(a, b) == pytest.approx(2 / 64)
    assert paired_test(a, a) == 1.0
    with pytest.raises(ValueError, match="same cases"):
        paired_test(a, a[:3])


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.normal(0.7, 0.1, 8))
    large = bootstrap_ci(rng.normal(0.7, 0.1, 200))
    assert small.low < small.mean < small.high and large.low < large.mean < large.high
    assert (large.high - large.low) < (small.high - small.low)
    assert abs(large.mean - 0.7) < 0.03 and large.n == 200
    # the percentile interval of the mean: about ±1.96 σ/√n for a large sample
    assert (large.high - large.low) / 2 == pytest.approx(1.96 * 0.1 / np.sqrt(200), rel=0.25)


def test_bootstrap_degenerate_inputs():
    assert str(bootstrap_ci([])) == "n/a" and bootstrap_ci([]).n == 0
    one = bootstrap_ci([0.5, float("nan")])
    assert (one.mean, one.low, one.high, one.n) == (0.5, 0.5, 0.5, 1)
