"""Wilson intervals and the exact McNemar test against values computed by hand / published tables."""
import math

import pytest

from densepolicy.postprocess.significance import exact_mcnemar, paired_comparison, wilson_interval


@pytest.mark.parametrize("k,n,low,high", [
    # Newcombe (1998), Table I, method 3 (Wilson score): 81/263, 15/148, 0/20, 1/29
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    # by hand: p = 1/2, n = 10 -> centre 0.5, half = 1.96/1.384 * sqrt(0.025 + 0.0096) = 0.2634
    (5, 10, 0.2366, 0.7634),
])
def test_wilson_matches_references(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_edges():
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(1 - 0.2775, abs=1e-4)  # mirror of 0/10 -> (0, 0.2775)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


@pytest.mark.parametrize("b,c,p", [
    (0, 0, 1.0),
    (0, 5, 2 / 32),                      # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    (1, 9, 2 * (1 + 10) / 1024),         # 0.021484375
    (9, 1, 2 * (1 + 10) / 1024),         # symmetric
    (5, 5, 1.0),                         # 2 * P(X <= 5) > 1 -> clipped
    (2, 8, 2 * (1 + 10 + 45) / 1024),    # 0.109375
    (0, 6, 2 / 64),                      # 0.03125: the smallest all-one-sided count below 0.05
])
def test_exact_mcnemar_by_hand(b, c, p):
    assert exact_mcnemar(b, c) == pytest.approx(p, rel=1e-12)


def test_exact_mcnemar_matches_binomial_test_reference():
    # statsmodels mcnemar([[a, 12], [3, d]], exact=True).pvalue == 2 * binom.cdf(3, 15, 0.5) = 0.03515625
    assert exact_mcnemar(12, 3) == pytest.approx(0.03515625, rel=1e-12)


def test_paired_comparison_counts_discordant_tasks_only():
    a = {"t1": True, "t2": True, "t3": False, "t4": False, "t5": True}
    b = {"t1": True, "t2": False, "t3": True, "t4": False, "t5": False}
    cmp = paired_comparison(a, b)
    assert (cmp.n, cmp.a_only, cmp.b_only) == (5, 2, 1)
    assert cmp.p_value == pytest.approx(exact_mcnemar(2, 1))


def test_paired_comparison_refuses_different_task_ids():
    with pytest.raises(ValueError, match="same task ids"):
        paired_comparison({"t1": True, "t2": False}, {"t1": True, "t3": False})
