"""Record ALFWorld's handcoded-expert solutions as our tool calls (test fixtures, oracle checks).

    .venv/bin/python scripts/alfworld_expert_plans.py split=valid_unseen per_type=1 out=tests/data/alfworld_expert_plans.json

The expert itself (grammar patch, command mapping) lives in `densepolicy.training.expert.alfworld`;
this script records its plans, re-played on the original game through `ALFWorldGame`.
"""
from __future__ import annotations

import json
import sys

from densepolicy.paths import resolve
from densepolicy.training.expert.alfworld import expert_commands
from envs.alfworld_game import ALFWorldGame
from envs.alfworld_games import GAME_FILE, TASK_TYPE_PREFIXES, list_task_ids, split_root, task_type
from envs.alfworld_tools import from_command, to_command


def main(argv: list[str]) -> None:
    """Entry point; `key=value` arguments: split, per_type, max_steps, out."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    args = {"split": "valid_unseen", "per_type": "1", "max_steps": "60", "out": "tests/data/alfworld_expert_plans.json"}
    for a in argv:
        key, _, value = a.partition("=")
        if key not in args:
            raise SystemExit(f"unknown argument {key!r}; expected {sorted(args)}")
        args[key] = value
    out = resolve(args["out"])
    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    root = split_root(args["split"])
    plans: dict[str, list] = {}
    for wanted in TASK_TYPE_PREFIXES.values():
        found = 0
        for task_id in (t for t in list_task_ids(root) if task_type(t) == wanted):
            commands = expert_commands(root / task_id / GAME_FILE, int(args["max_steps"]))
            if commands is None:
                continue
            calls = [from_command(c) for c in commands]
            game = ALFWorldGame(str(root / task_id / GAME_FILE))
            won = any(game.command(to_command(c[0], c[1:]))["won"] for c in calls)
            game.close()
            if won:
                plans[task_id] = calls
                found += 1
                print(f"{wanted}: {task_id} ({len(calls)} steps)", flush=True)
            if found >= int(args["per_type"]):
                break
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": args["split"], "plans": plans}, indent=1) + "\n")
    print(f"wrote {len(plans)} plans to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
