"""Record ALFWorld's handcoded-expert solutions as our tool calls (test fixtures, oracle checks).

    .venv/bin/python scripts/alfworld_expert_plans.py split=valid_unseen per_type=1 out=tests/data/alfworld_expert_plans.json

alfworld 0.4.2's expert only knows the newer grammar (`move O to R`), while the shipped json_2.1.1 games
say `put O in/on R` (docs/deviations.md). The expert therefore plays a grammar-patched copy of each
game (same PDDL, only wording changed) and its commands are mapped back to our tools:
`move O to R` -> put(O, R), `go to R` -> goto(R), ... Each plan is re-played on the original game
through `ALFWorldGame` and kept only if it wins there.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from densepolicy.paths import resolve
from envs.alfworld_game import ALFWorldGame
from envs.alfworld_games import GAME_FILE, TASK_TYPE_PREFIXES, list_task_ids, split_root, task_type
from envs.alfworld_tools import from_command, to_command

GRAMMAR_PATCH = [("You arrive at {lend.name}.", "You arrive at {r.name}."),
                 ("put {o} in/on {r}", "move {o} to {r}"),
                 ("You put the {o.name} in/on the {r.name}.", "You move the {o.name} to the {r.name}.")]

def expert_commands(game_file: Path, max_steps: int) -> list[str] | None:
    """Commands of the handcoded expert on a patched copy of `game_file`; None if it does not win."""
    import textworld
    import textworld.gym
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos

    data = json.loads(game_file.read_text())
    for old, new in GRAMMAR_PATCH:
        data["grammar"] = data["grammar"].replace(old, new)
    with tempfile.TemporaryDirectory() as tmp:
        patched = Path(tmp) / GAME_FILE
        patched.write_text(json.dumps(data))
        shutil.copy(game_file.parent / "traj_data.json", tmp)  # the expert reads the task from it
        request = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "expert_plan"])
        env_id = textworld.gym.register_game(str(patched), request, max_episode_steps=max_steps, wrappers=[
            AlfredDemangler(shuffle=False), AlfredInfos, AlfredExpert("handcoded")])
        env = textworld.gym.make(env_id)
        _obs, infos = env.reset()
        commands, done = [], False
        while not done and len(commands) < max_steps:
            commands.append(infos["extra.expert_plan"][0])
            _obs, _score, done, infos = env.step(commands[-1])
        env.close()
        return commands if infos["won"] else None


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
