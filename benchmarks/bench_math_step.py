#!/usr/bin/env python
"""Math env step overhead (sandboxed code execution), answer checking, fork vs replay.

    .venv/bin/python benchmarks/bench_math_step.py [--steps 200] [--depth 5] [--repeats 20]

Rows (all measured in this run, on GSM8K test task 0):
- `act overhead`: wall time of `Episode.act(code)` minus the time the code itself ran inside the
  interpreter (`info["run_seconds"]`), median over `--steps` steps of small realistic actions.
  Target <= 10 ms. (The original paid >= 3 s of fixed drain/read time per action, docs/original.md §10.14.)
- `act total`: the same steps, wall time.
- `answer (numeric)` / `answer (symbolic)`: `Episode.answer`, decided in-process vs by the grading process.
- `start + first act`: a new episode and its first action (spawns the interpreter).
- `fork`: `Episode.fork()` of an episode that ran `--depth` actions, plus the fork's first action.
- `replay`: what the original does for every new leaf: a fresh episode and `--depth` actions replayed,
  then the next action. The fork/replay ratio is printed.
- `timeout restart`: `act` of an endless loop with a 0.5 s limit, minus 0.5 s.
Prints a table and writes benchmarks/results/math_step.csv.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envs import load_env  # noqa: E402 - after the sys.path set-up above

RESULTS = ROOT / "benchmarks" / "results" / "math_step.csv"
ACTIONS = [
    "eggs = 16 - 3 - 4\nprint(eggs * 2)",
    "total = sum(range(1, 101))\nprint(total)",
    "import math\nprint(math.comb(10, 3))",
    "from fractions import Fraction\nprint(Fraction(3, 4) + Fraction(1, 6))",
    "import sympy\nx = sympy.symbols('x')\nprint(sympy.solve(x**2 - 5*x + 6, x))",
    "prices = [3.5, 2.25, 10]\nprint(round(sum(prices) * 1.08, 2))",
    "print(undefined_variable)",
]


def _ms(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values) * 1000, values[int(0.9 * (len(values) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed act() steps (default 200)")
    parser.add_argument("--depth", type=int, default=5, help="actions before fork / replayed (default 5)")
    parser.add_argument("--repeats", type=int, default=20, help="repetitions of start/fork/replay/answer rows (default 20)")
    args = parser.parse_args()
    if args.steps < 1 or args.depth < 1 or args.repeats < 1:
        parser.error("--steps, --depth and --repeats must be >= 1")

    env = load_env("gsm8k", split="test")
    rows: list[tuple[str, int, float, float, str]] = []

    warm = env.start("0")  # starts the zygote (imports numpy/sympy once per worker)
    warm.act("print(1)")
    warm.answer("x^2+2x")
    warm.close()

    ep = env.start("0")
    overhead, total = [], []
    for i in tqdm(range(args.steps), desc="act steps"):
        t0 = time.perf_counter()
        r = ep.act(ACTIONS[i % len(ACTIONS)])
        wall = time.perf_counter() - t0
        total.append(wall)
        overhead.append(wall - r.info["run_seconds"])
    rows.append(("act overhead", args.steps, *_ms(overhead), "wall - code run time; target <= 10 ms"))
    rows.append(("act total", args.steps, *_ms(total), "small realistic actions"))

    for label, text in (("answer (numeric)", "17"), ("answer (symbolic)", "x^2+2x")):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ep.answer(text)
            times.append(time.perf_counter() - t0)
        rows.append((label, args.repeats, *_ms(times), "incorrect answer, full check"))
    ep.close()

    start_times, fork_times, replay_times = [], [], []
    for _ in tqdm(range(args.repeats), desc="fork vs replay"):
        t0 = time.perf_counter()
        e = env.start("0")
        e.act(ACTIONS[0])
        start_times.append(time.perf_counter() - t0)
        for a in ACTIONS[1:args.depth]:
            e.act(a)
        t0 = time.perf_counter()
        child = e.fork()
        obs_fork = child.act("print(eggs, total)").observation
        fork_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        replay = env.start("0")
        for a in ACTIONS[:args.depth]:
            replay.act(a)
        obs_replay = replay.act("print(eggs, total)").observation
        replay_times.append(time.perf_counter() - t0)
        assert obs_fork == obs_replay, (obs_fork, obs_replay)
        for x in (e, child, replay):
            x.close()
    rows.append(("start + first act", args.repeats, *_ms(start_times), "spawns the interpreter"))
    fork_med, fork_p90 = _ms(fork_times)
    replay_med, replay_p90 = _ms(replay_times)
    rows.append(("fork + next act", args.repeats, fork_med, fork_p90, f"after {args.depth} actions"))
    rows.append(("replay + next act", args.repeats, replay_med, replay_p90,
                 f"fresh episode + {args.depth} actions; fork is {replay_med / fork_med:.1f}x faster"))

    slow = load_env("gsm8k", split="test", action_timeout=0.5).start("0")
    slow.act("print(0)")
    restarts = []
    for _ in range(3):
        t0 = time.perf_counter()
        assert slow.act("while True:\n    pass").info["timed_out"]
        restarts.append(time.perf_counter() - t0 - 0.5)
    slow.close()
    rows.append(("timeout restart", len(restarts), *_ms(restarts), "kill + fresh interpreter, beyond the 0.5 s limit"))

    header = ("metric", "n", "median_ms", "p90_ms", "note")
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'n':>4}  {'median ms':>10}  {'p90 ms':>10}  note")
    for name, n, med, p90, note in rows:
        print(f"{name:<{width}}  {n:>4}  {med:>10.2f}  {p90:>10.2f}  {note}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows((name, n, f"{med:.3f}", f"{p90:.3f}", note) for name, n, med, p90, note in rows)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
