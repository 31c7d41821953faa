#!/usr/bin/env python
"""Restoring an embodied episode: fork() vs replay, side by side; env construction times.

    .venv/bin/python benchmarks/bench_env_fork.py [--depth 8] [--repeats 5]

ALFWorld (one `train` game with a >= depth-step expert plan, tests/data/alfworld_expert_plans.json):
- `fork`: `Episode.fork()` of a live episode at `depth` (os.fork of the TextWorld host + the sandbox).
- `replay (episode)`: what the original does for every new leaf: a fresh episode (`env.start`) and the
  `depth` ancestor actions replayed through the sandbox.
- `replay (game reset)`: the cheapest possible replay: TextWorld `reset()` of an already loaded game in
  this process + `depth` commands (no sandbox, no process start).
Both replays are checked to reach the same next observation as the fork.
BabyAI (`BabyAI-UnlockLocalDist-v0:0`, BabyAIBot's actions): the same three rows (its `fork` is a deepcopy).
Construction: `env.start(task)` (game + sandbox) and the bare game object, for one ALFWorld game and one
BabyAI level. Target: ALFWorld fork >= 10x faster than replay from reset.
Prints a table and writes benchmarks/results/env_fork.csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envs import load_env  # noqa: E402
from envs.alfworld_game import ALFWorldGame  # noqa: E402
from envs.alfworld_tools import to_command  # noqa: E402
from envs.babyai_game import BabyAIGame  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "env_fork.csv"
PLANS = ROOT / "tests" / "data" / "alfworld_expert_plans.json"
BABYAI_TASK = "BabyAI-UnlockLocalDist-v0:0"
BOT_TOOL = {"turn left": "turn_left()", "turn right": "turn_right()", "move forward": "move_forward()",
            "pickup": "pickup()", "drop": "drop()", "toggle": "toggle()"}


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls of fn() and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def to_code(call: list[str]) -> str:
    return f"{call[0]}({', '.join(repr(a) for a in call[1:])})"


def bench_episode(env, task_id: str, codes: list[str], depth: int, repeats: int, game_replay) -> list[dict]:
    """fork / replay(episode) / replay(game) rows for one task; asserts they agree on the next step."""
    ep = env.start(task_id)
    for code in codes[:depth]:
        ep.act(code)
    children = []

    def fork():
        child = ep.fork()
        children.append(child)
        return child

    def replay_episode():
        fresh = env.start(task_id)
        for code in codes[:depth]:
            fresh.act(code)
        children.append(fresh)
        return fresh

    t_fork, forked = timed(fork, repeats)
    t_replay, replayed = timed(replay_episode, max(1, repeats // 2))
    t_game, _ = timed(game_replay, repeats)
    next_code = codes[depth]
    expected = forked.act(next_code).observation
    assert replayed.act(next_code).observation == expected, "fork and replay disagree"
    for child in children:
        child.close()
    ep.close()
    name = env.name
    return [
        {"env": name, "task": task_id, "depth": depth, "method": "fork", "seconds": t_fork},
        {"env": name, "task": task_id, "depth": depth, "method": "replay (episode)", "seconds": t_replay},
        {"env": name, "task": task_id, "depth": depth, "method": "replay (game reset)", "seconds": t_game},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=8, help="actions before the restore point (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per row (median; default 5)")
    args = parser.parse_args()
    if args.depth < 1 or args.repeats < 1:
        parser.error("--depth and --repeats must be >= 1")
    rows: list[dict] = []

    # ---- ALFWorld
    plans = json.loads(PLANS.read_text())
    task_id, calls = next((t, c) for t, c in sorted(plans["plans"].items()) if len(c) > args.depth)
    alf = load_env("alfworld", split=plans["split"])
    game_file = str(alf.game_file(task_id))
    ALFWorldGame(game_file).close()  # warm-up: the first construction also imports TextWorld
    t_game_new, game = timed(lambda: ALFWorldGame(game_file), 1)

    def alf_game_replay():
        game.reset()
        for call in calls[:args.depth]:
            out = game.command(to_command(call[0], call[1:]))
        return out

    rows += bench_episode(alf, task_id, [to_code(c) for c in calls], args.depth, args.repeats, alf_game_replay)
    t_start, ep = timed(lambda: alf.start(task_id), 1)
    ep.close()
    rows += [{"env": "alfworld", "task": task_id, "depth": 0, "method": "construct: env.start (game host + sandbox)",
              "seconds": t_start},
             {"env": "alfworld", "task": task_id, "depth": 0, "method": "construct: game in-process",
              "seconds": t_game_new}]
    game.close()
    alf.close()

    # ---- BabyAI
    bot = subprocess.run([sys.executable, str(ROOT / "tests" / "harness" / "babyai_bot_actions.py"), BABYAI_TASK],
                         capture_output=True, text=True, timeout=120, check=True)
    actions = [a for a in json.loads(bot.stdout.strip().splitlines()[-1])["actions"] if a != "done"]
    baby = load_env("babyai", split="test")
    level, seed = BABYAI_TASK.rsplit(":", 1)

    def baby_game_replay():
        g = BabyAIGame(level, int(seed))
        for action in actions[:args.depth]:
            out = g.act(action)
        return out

    rows += bench_episode(baby, BABYAI_TASK, [BOT_TOOL[a] for a in actions], args.depth, args.repeats,
                          baby_game_replay)
    t_start, ep = timed(lambda: baby.start(BABYAI_TASK), args.repeats)
    ep.close()
    t_game_new, _ = timed(lambda: BabyAIGame(level, int(seed)), args.repeats)
    rows += [{"env": "babyai", "task": BABYAI_TASK, "depth": 0, "method": "construct: env.start (game + sandbox)",
              "seconds": t_start},
             {"env": "babyai", "task": BABYAI_TASK, "depth": 0, "method": "construct: game in-process",
              "seconds": t_game_new}]

    # ---- report
    fork_time = {r["env"]: r["seconds"] for r in rows if r["method"] == "fork"}
    for r in rows:
        r["vs_fork"] = round(r["seconds"] / fork_time[r["env"]], 1) if r["depth"] else ""
        r["seconds"] = round(r["seconds"], 4)
    print(f"{'env':9} {'method':44} {'depth':>5} {'seconds':>9} {'x fork':>7}")
    for r in rows:
        print(f"{r['env']:9} {r['method']:44} {r['depth']:>5} {r['seconds']:>9.4f} {str(r['vs_fork']):>7}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["env", "task", "method", "depth", "seconds", "vs_fork"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
