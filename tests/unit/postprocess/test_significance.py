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


# ---- several samples per task -----------------------------------------------------------------------
import itertools  # noqa: E402
import random  # noqa: E402

from densepolicy.postprocess.significance import (clustered_mean, compare_rates, expected_sd_diff,  # noqa: E402
                                                  minimum_detectable_effect, sign_flip_permutation_p, t_quantile,
                                                  wilcoxon_signed_rank_p)


@pytest.mark.parametrize("p,df,value", [
    # Student t tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2)
    (0.975, 5, 2.571), (0.975, 10, 2.228), (0.975, 39, 2.023), (0.975, 100, 1.984), (0.8, 39, 0.851),
    (0.95, 20, 1.725),
])
def test_t_quantile_matches_tables(p, df, value):
    assert t_quantile(p, df) == pytest.approx(value, abs=1.5e-3)


def _brute_force_sign_flip(diffs):
    nz = [d for d in diffs if d != 0]
    observed = abs(sum(nz))
    hits = sum(abs(sum(s * d for s, d in zip(signs, nz))) >= observed - 1e-9
               for signs in itertools.product((1, -1), repeat=len(nz)))
    return hits / 2 ** len(nz)


def _brute_force_wilcoxon(diffs):
    nz = [d for d in diffs if d != 0]
    mags = sorted(abs(d) for d in nz)
    rank = {m: (mags.index(m) + 1 + len(mags) - mags[::-1].index(m)) / 2 for m in mags}  # average 1-based ranks
    ranks = [rank[abs(d)] for d in nz]
    total = sum(ranks)
    stat = lambda signs: sum(r for r, s in zip(ranks, signs) if s > 0)  # noqa: E731
    observed = stat([1 if d > 0 else -1 for d in nz])
    extreme = min(observed, total - observed)
    hits = sum(min(stat(signs), total - stat(signs)) <= extreme + 1e-9
               for signs in itertools.product((1, -1), repeat=len(nz)))
    return hits / 2 ** len(nz)


@pytest.mark.parametrize("seed", range(6))
def test_paired_tests_match_brute_force_enumeration_with_ties(seed):
    rng = random.Random(seed)
    diffs = [rng.choice([-0.5, -0.25, 0, 0, 0.25, 0.25, 0.5, 0.75, 1.0]) for _ in range(12)]
    assert sign_flip_permutation_p(diffs) == pytest.approx(_brute_force_sign_flip(diffs), rel=1e-12)
    assert wilcoxon_signed_rank_p(diffs) == pytest.approx(_brute_force_wilcoxon(diffs), rel=1e-12)


def test_paired_tests_edges():
    assert sign_flip_permutation_p([0, 0, 0]) == 1.0 and wilcoxon_signed_rank_p([0.0, 0.0]) == 1.0
    assert sign_flip_permutation_p([0.25] * 6) == pytest.approx(2 / 64)      # all one-sided: 2 of 2^6
    assert wilcoxon_signed_rank_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    # scipy.stats.wilcoxon(range(1, 11)) gives p = 0.001953125 (exact) = 2 / 1024
    assert wilcoxon_signed_rank_p(list(range(1, 11))) == pytest.approx(2 / 1024)
    # arbitrary reals beyond the exact-state cap fall back to seeded Monte Carlo, close to the exact value
    rng = random.Random(3)
    diffs = [rng.gauss(0.3, 1) for _ in range(14)]
    assert sign_flip_permutation_p(diffs, max_states=50) == pytest.approx(_brute_force_sign_flip(diffs), abs=0.01)


def test_clustered_mean_uses_the_task_as_the_unit():
    rates = [0.0, 0.25, 0.5, 1.0]                      # mean 0.4375, sd 0.4270
    m = clustered_mean(rates, samples=16)
    assert (m.tasks, m.samples, m.mean) == (4, 16, pytest.approx(0.4375))
    assert m.se == pytest.approx(0.42696 / 2, rel=1e-4)
    half = 3.182 * m.se                                # t_0.975(3)
    assert m.ci[0] == pytest.approx(0.0) and m.ci[1] == pytest.approx(min(1, 0.4375 + half), abs=2e-3)
    assert clustered_mean([]).tasks == 0 and clustered_mean([1.0]).ci[0] != clustered_mean([1.0]).ci[0]


def test_compare_rates_effect_interval_and_mde():
    a = {f"t{i}": r for i, r in enumerate([0.5, 0.75, 0.25, 1.0, 0.5, 0.75])}
    b = {f"t{i}": r for i, r in enumerate([0.25, 0.5, 0.25, 0.5, 0.5, 0.25])}
    r = compare_rates(a, b, samples=4)
    diffs = [0.25, 0.25, 0, 0.5, 0, 0.5]
    assert r.effect == pytest.approx(sum(diffs) / 6) and (r.a_better, r.b_better) == (4, 0)
    sd = (sum((d - r.effect) ** 2 for d in diffs) / 5) ** 0.5
    assert r.effect_ci[0] == pytest.approx(r.effect - t_quantile(0.975, 5) * sd / 6 ** 0.5)
    assert r.permutation_p == pytest.approx(_brute_force_sign_flip(diffs))
    assert r.mde == pytest.approx((t_quantile(0.975, 5) + t_quantile(0.8, 5)) * sd / 6 ** 0.5)
    with pytest.raises(ValueError, match="same task ids"):
        compare_rates(a, {"x": 0.5}, samples=4)


def test_the_minimum_detectable_effect_is_detected_about_80_percent_of_the_time():
    # 40 tasks whose rates spread around 35 %, 8 samples per task: simulate a true gain equal to the design MDE
    rng = random.Random(7)
    tasks, samples = 40, 8
    base = [min(0.9, max(0.05, rng.betavariate(0.7, 1.3))) for _ in range(tasks)]
    mde = minimum_detectable_effect(expected_sd_diff(base, samples), tasks)
    assert 0.05 < mde < 0.2
    detected, reps = 0, 300
    for _ in range(reps):
        rate = lambda p: sum(rng.random() < p for _ in range(samples)) / samples  # noqa: E731
        diffs = [rate(min(1.0, p + mde)) - rate(p) for p in base]
        detected += sign_flip_permutation_p(diffs) < 0.05
    assert 0.65 < detected / reps < 0.95


def test_identical_models_give_no_effect_and_no_observed_mde():
    rates = {f"t{i}": (i % 5) / 4 for i in range(40)}
    r = compare_rates(rates, dict(rates), samples=4)
    assert r.effect == 0 and r.permutation_p == 1.0 and r.wilcoxon_p == 1.0
    assert r.mde != r.mde and 0 < r.mde_design < 0.3  # observed: nothing to estimate from; design: binomial noise
