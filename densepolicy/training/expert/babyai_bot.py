"""BabyAI expert, low level: minigrid's `BabyAIBot` as primitive actions, in a killable subprocess.

The bot can loop forever on some levels, so it never runs in the caller's process:

    python -m densepolicy.training.expert.babyai_bot BabyAI-GoToLocal-v0:3 BabyAI-PickupLoc-v0:0
    -> one JSON line per task: {"task_id": ..., "actions": ["turn left", "move forward", ...], "success": true}

`bot_runs(task_ids, timeout_s)` runs that command with a wall-clock limit per task.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence

PRIMITIVE_TEXT = {0: "turn left", 1: "turn right", 2: "move forward", 3: "pickup", 4: "drop", 5: "toggle", 6: "done"}


def bot_actions(level: str, seed: int, max_actions: int = 500) -> dict:
    """Run the bot until the episode ends; returns the action texts and whether it succeeded."""
    import gymnasium
    import minigrid  # noqa: F401
    from minigrid.utils.baby_ai_bot import BabyAIBot

    env = gymnasium.make(level)
    with contextlib.redirect_stdout(io.StringIO()):
        env.reset(seed=seed)
    bot = BabyAIBot(env.unwrapped)
    actions, reward, done = [], 0.0, False
    while not done and len(actions) < max_actions:
        action = int(bot.replan())
        actions.append(PRIMITIVE_TEXT[action])
        _obs, reward, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    return {"actions": actions, "success": bool(done and reward > 0)}


def bot_runs(task_ids: Sequence[str], timeout_s: float, max_actions: int = 500,
             startup_s: float = 60.0) -> dict[str, dict]:
    """Bot results of `task_ids` (`level:seed`), computed in a subprocess that must print each task's
    line within `timeout_s` (plus `startup_s` for its imports). A task that runs past it is recorded as
    failed (`error: timeout`), the process is killed and a fresh one continues with the next task."""
    runs: dict[str, dict] = {}
    remaining = list(task_ids)
    while remaining:
        command = [sys.executable, "-m", __name__, f"--max_actions={max_actions}", *remaining]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            reader = _LineReader(proc.stdout.fileno())
            for i, task_id in enumerate(list(remaining)):
                line = reader.readline(timeout_s + (startup_s if i == 0 else 0.0))
                if line is None:
                    runs[task_id] = {"actions": [], "success": False, "error": "timeout"}
                    remaining = remaining[i + 1:]
                    break
                run = json.loads(line)
                runs[run.pop("task_id")] = run
            else:
                remaining = []
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
    return runs


class _LineReader:
    """`readline` with a deadline on a pipe (None on timeout or end of output)."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def readline(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def main(argv: Sequence[str]) -> None:
    """Print one JSON line per `level:seed` argument (`--max_actions=N` optional)."""
    max_actions = 500
    for arg in argv:
        if arg.startswith("--max_actions="):
            max_actions = int(arg.split("=", 1)[1])
            continue
        level, _, seed = arg.rpartition(":")
        try:
            run = bot_actions(level, int(seed), max_actions)
        except Exception as exc:  # noqa: BLE001 - the bot asserts on some levels (e.g. a key inside a box)
            run = {"actions": [], "success": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        print(json.dumps({"task_id": arg, **run}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
