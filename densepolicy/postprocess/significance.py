"""Small-sample statistics for success rates: Wilson score intervals and the exact McNemar test.

Both work on counts only (no SciPy): a success rate k/n gets a Wilson interval, and two models run on
the SAME tasks are compared by their discordant tasks (solved by one but not the other) with the exact
(binomial) McNemar test, which is the right test for paired binary outcomes at the sample sizes a
CPU experiment affords.
"""
from __future__ import annotations

import math
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
