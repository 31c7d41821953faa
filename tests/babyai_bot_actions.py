"""Print the primitive actions of minigrid's BabyAIBot on one level/seed as JSON (run in a subprocess:
the bot can hang forever on some levels, so callers kill it after a wall-clock limit).

    python tests/babyai_bot_actions.py BabyAI-GoToLocal-v0:3 BabyAI-PickupLoc-v0:0
    -> one JSON line per task: {"task_id": ..., "actions": ["turn left", "move forward", ...], "success": true}
"""
from __future__ import annotations

import contextlib
import io
import json
import sys

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


if __name__ == "__main__":
    for task_id in sys.argv[1:]:
        level, _, seed = task_id.rpartition(":")
        print(json.dumps({"task_id": task_id, **bot_actions(level, int(seed))}), flush=True)
