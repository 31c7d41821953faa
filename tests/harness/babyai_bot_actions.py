"""Print the primitive actions of minigrid's BabyAIBot on one level/seed as JSON (run in a subprocess:
the bot can hang forever on some levels, so callers kill it after a wall-clock limit).

    python tests/harness/babyai_bot_actions.py BabyAI-GoToLocal-v0:3 BabyAI-PickupLoc-v0:0
    -> one JSON line per task: {"task_id": ..., "actions": ["turn left", "move forward", ...], "success": true}

Thin wrapper of `densepolicy.training.expert.babyai_bot` (kept for the tests and benchmarks that run it).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from densepolicy.training.expert.babyai_bot import bot_actions, main  # noqa: F401

if __name__ == "__main__":
    main(sys.argv[1:])
