"""Small-sample statistics for success rates: Wilson intervals, exact McNemar, and several samples per task.

All of it is standard-library Python (no SciPy). One episode per task: a success rate k/n gets a Wilson
interval, and two models run on the SAME tasks are compared by their discordant tasks (solved by one but
not the other) with the exact (binomial) McNemar test. Several episodes per task (`clustered_mean`,
`compare_rates`): the task is the unit; per-task success rates get a task-clustered interval, two models
are compared by their per-task rate differences (paired sign-flip permutation and Wilcoxon signed-rank
tests, the effect with its interval) and the minimum detectable effect at 80 % power is reported.
"""
from __future__ import annotations

import collections
import math
import random
import statistics
from dataclasses import dataclass

Z_95 = 1.959963984540054
"""Two-sided 95 % normal quantile."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion `successes / n` (95 % by default).

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate at 0/n or n/n.
    Returns ``(nan, nan)`` for ``n == 0``.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts `b` and `c`.

    `b` = tasks solved by model A but not by B, `c` = solved by B but not by A. Under the null both
    kinds of discordance are equally likely, so min(b, c) ~ Binomial(b + c, 1/2); the p-value is
    ``min(1, 2 * P(X <= min(b, c)))`` (as statsmodels' ``mcnemar(exact=True)``). 1.0 when b + c == 0.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """Model A vs model B on the same tasks: `a_only` solved only by A, `b_only` only by B."""

    n: int
    a_only: int
    b_only: int
    p_value: float


def paired_comparison(a: dict[str, bool], b: dict[str, bool]) -> PairedComparison:
    """Exact McNemar test of two per-task outcome maps (task id -> solved) over the same task ids.

    Raises ValueError if the task ids differ: a paired test of different tasks means nothing.
    """
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"paired test needs the same task ids: {len(only_a)} only in the first "
                         f"({only_a[:5]}), {len(only_b)} only in the second ({only_b[:5]})")
    a_only = sum(1 for t in a if a[t] and not b[t])
    b_only = sum(1 for t in a if b[t] and not a[t])
    return PairedComparison(n=len(a), a_only=a_only, b_only=b_only, p_value=exact_mcnemar(a_only, b_only))


# ---- several samples per task -------------------------------------------------------------------
# A held-out task run n times (at a sampling temperature) gives a per-task success rate. Models are
# compared on the SAME tasks by the per-task differences of those rates: the unit of the analysis is the
# task (samples of one task are correlated), as recommended by Miller, "Adding Error Bars to Evals" (2024):
# clustered standard errors, paired differences, and a power analysis before the run.

def normal_quantile(p: float) -> float:
    """Quantile of the standard normal distribution."""
    return statistics.NormalDist().inv_cdf(p)


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with `df` degrees of freedom (Cornish-Fisher expansion, Abramowitz & Stegun 26.7.5).

    Within 1e-3 of the exact value for df >= 5 (t_0.975(10) = 2.2281, t_0.975(39) = 2.0227), 0.004 at df = 3;
    df = inf gives the normal quantile.
    """
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    z = normal_quantile(p)
    if math.isinf(df):
        return z
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


@dataclass(frozen=True)
class ClusteredMean:
    """Mean of per-task success rates with a 95 % interval clustered by task (t on the task means)."""

    tasks: int
    samples: int          # episodes in all
    mean: float
    se: float
    ci: tuple[float, float]


def clustered_mean(task_rates: list[float], samples: int | None = None) -> ClusteredMean:
    """Mean success over tasks and its 95 % CI, treating each task (not each episode) as the unit.

    `task_rates` = per-task success rates (successes / samples of that task). The standard error is the
    sample standard deviation of the task rates over sqrt(tasks), which is the cluster-robust standard error
    of the grand mean when every task has the same number of samples; the interval uses t with tasks - 1
    degrees of freedom and is clipped to [0, 1]. Fewer than two tasks: the interval is (nan, nan).
    """
    t = len(task_rates)
    if t == 0:
        return ClusteredMean(0, samples or 0, float("nan"), float("nan"), (float("nan"), float("nan")))
    mean = sum(task_rates) / t
    if t < 2:
        return ClusteredMean(t, samples or t, mean, float("nan"), (float("nan"), float("nan")))
    se = statistics.stdev(task_rates) / math.sqrt(t)
    half = t_quantile(0.975, t - 1) * se
    return ClusteredMean(t, samples or t, mean, se, (max(0.0, mean - half), min(1.0, mean + half)))


def _paired_differences(a: dict[str, float], b: dict[str, float]) -> list[float]:
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"paired test needs the same task ids: {len(only_a)} only in the first "
                         f"({only_a[:5]}), {len(only_b)} only in the second ({only_b[:5]})")
    return [a[t] - b[t] for t in sorted(a)]


def sign_flip_permutation_p(diffs: list[float], max_states: int = 100_000, draws: int = 200_000,
                            seed: int = 0) -> float:
    """Two-sided paired permutation (sign-flip) test of mean(diffs) == 0.

    Under the null each task's difference is as likely to have either sign; the p-value is the share of the
    2^k sign assignments of the k non-zero differences whose |sum| is at least the observed |sum|. Computed
    exactly by dynamic programming over the distinct partial sums (rate differences are multiples of 1/n, so
    there are few); only if they exceed `max_states` (arbitrary real differences) `draws` seeded Monte-Carlo
    assignments are used instead (the observed one counted, so p > 0). 1.0 when every difference is zero.
    """
    nz = [d for d in diffs if abs(d) > 1e-12]
    if not nz:
        return 1.0
    # compare sums on an integer grid so that ties are ties, not float noise
    ints = [round(d * 1e9) for d in nz]
    observed = abs(sum(ints))
    sums: collections.Counter = collections.Counter({0: 1})
    for v in ints:
        nxt: collections.Counter = collections.Counter()
        for s, c in sums.items():
            nxt[s + v] += c
            nxt[s - v] += c
        sums = nxt
        if len(sums) > max_states:
            break
    else:
        hits = sum(c for s, c in sums.items() if abs(s) >= observed)
        return min(1.0, hits / 2 ** len(ints))
    rng = random.Random(seed)
    hits = 1
    for _ in range(draws):
        if abs(sum(v if rng.random() < 0.5 else -v for v in ints)) >= observed:
            hits += 1
    return min(1.0, hits / (draws + 1))


def wilcoxon_signed_rank_p(diffs: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value (zero differences dropped, tied |d| get average ranks).

    Exact null distribution (all sign assignments, by dynamic programming over doubled ranks) for up to 60
    non-zero differences, else the normal approximation with the tie correction. 1.0 when all are zero.
    """
    nz = [d for d in diffs if abs(d) > 1e-12]
    k = len(nz)
    if k == 0:
        return 1.0
    order = sorted(range(k), key=lambda i: abs(nz[i]))
    ranks = [0.0] * k
    i = 0
    while i < k:
        j = i
        while j + 1 < k and abs(abs(nz[order[j + 1]]) - abs(nz[order[i]])) <= 1e-12:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    w_plus = sum(r for r, d in zip(ranks, nz) if d > 0)
    total = k * (k + 1) / 2
    if k <= 60:
        doubled = [round(2 * r) for r in ranks]          # average ranks are multiples of 1/2
        counts = [0] * (sum(doubled) + 1)
        counts[0] = 1
        for r in doubled:
            for s in range(len(counts) - 1 - r, -1, -1):
                if counts[s]:
                    counts[s + r] += counts[s]
        observed = round(2 * w_plus)
        mirror = round(2 * total) - observed
        low, high = min(observed, mirror), max(observed, mirror)
        tail = sum(c for s, c in enumerate(counts) if s <= low or s >= high)
        return min(1.0, tail / 2 ** k)
    ties = collections.Counter(ranks)
    var = k * (k + 1) * (2 * k + 1) / 24 - sum(c ** 3 - c for c in ties.values()) / 48
    z = (w_plus - total / 2) / math.sqrt(var)
    return min(1.0, 2 * (1 - statistics.NormalDist().cdf(abs(z))))


def minimum_detectable_effect(sd_diff: float, tasks: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired test at `alpha` detects with probability `power`.

    MDE = (t_{1-alpha/2} + t_{power}) * sd_diff / sqrt(tasks), t with tasks - 1 degrees of freedom, where
    `sd_diff` is the standard deviation of the per-task differences (observed in the run, or expected:
    `expected_sd_diff`). nan for fewer than two tasks.
    """
    if tasks < 2 or not sd_diff == sd_diff:
        return float("nan")
    df = tasks - 1
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * sd_diff / math.sqrt(tasks)


def expected_sd_diff(task_rates: list[float], samples: int) -> float:
    """Expected sd of per-task rate differences between two models with these per-task rates and no true effect.

    Each task's rate is a mean of `samples` Bernoulli draws, so under the null its difference between two
    models has variance 2 p (1 - p) / samples. p is the Jeffreys estimate (k + 1/2) / (n + 1) of the task's
    rate, so that a task solved in none or all of its samples still counts as uncertain (a raw 0 or 1 would
    claim no noise at all). Heterogeneity of the true effect is left out: this is the design's best case.
    """
    if not task_rates or samples < 1:
        return float("nan")
    shrunk = [(p * samples + 0.5) / (samples + 1) for p in task_rates]
    var = sum(2 * p * (1 - p) / samples for p in shrunk) / len(shrunk)
    return math.sqrt(var)


@dataclass(frozen=True)
class RateComparison:
    """Model A vs model B on the same tasks, each run `samples` times per task: per-task rate differences."""

    tasks: int
    samples: int
    mean_a: float
    mean_b: float
    effect: float                       # mean over tasks of rate_A - rate_B
    effect_ci: tuple[float, float]      # 95 %, paired t on the per-task differences, clipped to [-1, 1]
    permutation_p: float                # paired sign-flip permutation test
    wilcoxon_p: float                   # Wilcoxon signed-rank test
    a_better: int                       # tasks where A's rate is higher
    b_better: int
    mde: float                          # minimum detectable effect at 80 % power for these tasks (observed sd;
                                        # nan when every difference is equal, e.g. two identical models)
    mde_design: float                   # the same from B's per-task rates and `samples` (no-effect variance)


def compare_rates(a: dict[str, float], b: dict[str, float], samples: int) -> RateComparison:
    """Paired comparison of per-task success rates (task id -> rate) of two models over the same task ids.

    Effect = mean of rate_A - rate_B over tasks with a paired-t 95 % interval; p-values of the sign-flip
    permutation test and of the Wilcoxon signed-rank test; the minimum detectable effect at 80 % power.
    Raises ValueError if the task ids differ.
    """
    diffs = _paired_differences(a, b)
    t = len(diffs)
    mean_a = sum(a.values()) / t if t else float("nan")
    mean_b = sum(b.values()) / t if t else float("nan")
    effect = sum(diffs) / t if t else float("nan")
    if t >= 2:
        sd = statistics.stdev(diffs)
        half = t_quantile(0.975, t - 1) * sd / math.sqrt(t)
        ci = (max(-1.0, effect - half), min(1.0, effect + half))
    else:
        sd, ci = float("nan"), (float("nan"), float("nan"))
    return RateComparison(
        tasks=t, samples=samples, mean_a=mean_a, mean_b=mean_b, effect=effect, effect_ci=ci,
        permutation_p=sign_flip_permutation_p(diffs), wilcoxon_p=wilcoxon_signed_rank_p(diffs),
        a_better=sum(d > 0 for d in diffs), b_better=sum(d < 0 for d in diffs),
        mde=minimum_detectable_effect(sd, t) if sd > 0 else float("nan"),  # no spread observed: nothing to say
        mde_design=minimum_detectable_effect(
            expected_sd_diff(list(b.values()), samples), t))
