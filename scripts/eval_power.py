#!/usr/bin/env python
"""Power of the experiment's paired evaluation, by simulation: how often a true gain is detected (p < 0.05).

    .venv/bin/python scripts/eval_power.py [--tasks 40] [--mean 0.35] [--concentration 2] [--gain 0.10]

Per-task success rates of the baseline are drawn from Beta(mean * c, (1 - mean) * c) (c = concentration: small
c = tasks very unlike each other), the improved model adds `gain` to every task's rate; each model runs every
task `samples` times. For each design the table gives the share of simulated experiments in which the test
finds the gain (two-sided p < 0.05), and the design's minimum detectable effect at 80 % power (the formula the
experiment report prints, from the baseline's rates). One sample = McNemar on single episodes (the greedy
run); more = the sign-flip permutation test on per-task rates (densepolicy/postprocess/significance.py).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densepolicy.postprocess.significance import (exact_mcnemar, expected_sd_diff,
                                                  minimum_detectable_effect, sign_flip_permutation_p)


def simulated_power(tasks: int, samples: int, mean: float, concentration: float, gain: float, reps: int,
                    seed: int) -> float:
    """Share of `reps` simulated experiments in which the paired test gives p < 0.05."""
    rng = random.Random(seed)
    hits = 0
    for _ in range(reps):
        base = [rng.betavariate(mean * concentration, (1 - mean) * concentration) for _ in range(tasks)]
        draws = lambda p: [rng.random() < p for _ in range(samples)]  # noqa: E731
        a = [draws(min(1.0, p + gain)) for p in base]
        b = [draws(p) for p in base]
        if samples == 1:
            p_value = exact_mcnemar(sum(x[0] and not y[0] for x, y in zip(a, b)),
                                    sum(y[0] and not x[0] for x, y in zip(a, b)))
        else:
            p_value = sign_flip_permutation_p([(sum(x) - sum(y)) / samples for x, y in zip(a, b)])
        hits += p_value < 0.05
    return hits / reps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--mean", type=float, default=0.35)
    parser.add_argument("--concentration", type=float, default=2.0)
    parser.add_argument("--gain", type=float, default=0.10)
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    typical = [rng.betavariate(args.mean * args.concentration, (1 - args.mean) * args.concentration)
               for _ in range(args.tasks)]
    print(f"{args.tasks} tasks, baseline rates ~ Beta(mean {args.mean}, concentration {args.concentration}), "
          f"true gain {100 * args.gain:.0f} points, {args.reps} simulated experiments per row")
    print(f"{'samples/task':>12} | {'test':<24} | {'power':>6} | {'MDE at 80 % (points)':>20}")
    for n in args.samples:
        power = simulated_power(args.tasks, n, args.mean, args.concentration, args.gain, args.reps, args.seed + n)
        test = "exact McNemar" if n == 1 else "sign-flip permutation"
        mde = minimum_detectable_effect(expected_sd_diff([round(p * n) / n for p in typical], n), args.tasks)
        print(f"{n:>12} | {test:<24} | {100 * power:5.1f}% | {100 * mde:20.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
