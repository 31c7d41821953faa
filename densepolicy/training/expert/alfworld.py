"""ALFWorld expert: ALFWorld's handcoded expert, its commands mapped to our tools.

alfworld 0.4.2's expert only knows the newer grammar (`move O to R`), while the shipped json_2.1.1 games
say `put O in/on R` (docs/deviations.md). The expert therefore plays a grammar-patched copy of each
game (same PDDL, only wording changed) and its commands are mapped back to our tools:
`move O to R` -> put(O, R), `go to R` -> goto(R), ...; the plan is then replayed on the original game.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from densepolicy.training.expert.replay import ExpertPlan, action_message
from envs.alfworld_games import GAME_FILE
from envs.alfworld_tools import from_command

GRAMMAR_PATCH = [("You arrive at {lend.name}.", "You arrive at {r.name}."),
                 ("put {o} in/on {r}", "move {o} to {r}"),
                 ("You put the {o.name} in/on the {r.name}.", "You move the {o.name} to the {r.name}.")]
EXPERT_HASH_SEED = "0"
EXPERT_RANDOM_SEED = 0
"""The expert picks among equal objects with `random.choice` over lists built from sets of names: with an
unseeded `random` and Python's per-process hash randomisation it takes `cd 1` in one run and `cd 3` in the
next. It runs in a subprocess with a fixed PYTHONHASHSEED and seeded `random` so that the same game always
gives the same plan (and the dataset is reproducible); processes also run in parallel,
which TextWorld's grammar parser (not thread-safe) would not allow in threads."""


def expert_commands(game_file: Path, max_steps: int, timeout_s: float = 900.0) -> list[str] | None:
    """Commands of the handcoded expert on a patched copy of `game_file` (in a subprocess with a fixed
    hash seed); None if it does not win within `max_steps` or `timeout_s`."""
    command = [sys.executable, "-m", __name__, str(game_file), str(max_steps)]
    env = {**os.environ, "PYTHONHASHSEED": EXPERT_HASH_SEED}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("[") or line == "null"]
    return json.loads(lines[-1]) if done.returncode == 0 and lines else None


def _expert_commands(game_file: Path, max_steps: int) -> list[str] | None:
    """In-process expert run (the subprocess's body)."""
    import textworld
    import textworld.gym
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos

    data = json.loads(Path(game_file).read_text())
    for old, new in GRAMMAR_PATCH:
        data["grammar"] = data["grammar"].replace(old, new)
    with tempfile.TemporaryDirectory() as tmp:
        patched = Path(tmp) / GAME_FILE
        patched.write_text(json.dumps(data))
        shutil.copy(Path(game_file).parent / "traj_data.json", tmp)  # the expert reads the task from it
        request = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "expert_plan"])
        env_id = textworld.gym.register_game(str(patched), request, max_episode_steps=max_steps, wrappers=[
            AlfredDemangler(shuffle=False), AlfredInfos, AlfredExpert("handcoded")])
        env = textworld.gym.make(env_id)
        try:
            _obs, infos = env.reset()
            commands, done = [], False
            while not done and len(commands) < max_steps:
                commands.append(infos["extra.expert_plan"][0])
                _obs, _score, done, infos = env.step(commands[-1])
        finally:
            env.close()
        return commands if infos["won"] else None


def tool_call(call: list[str]) -> str:
    """`["take", "apple 1", "fridge 1"]` -> "take('apple 1', 'fridge 1')"."""
    return f"{call[0]}({', '.join(repr(a) for a in call[1:])})"


def expert_plan(game_file: Path, max_steps: int = 40) -> ExpertPlan | None:
    """One tool call per message, or None if the expert does not win within `max_steps` commands."""
    commands = expert_commands(game_file, max_steps)
    if commands is None:
        return None
    while commands and commands[0] == "look":  # the expert opens with `look`: it repeats the prompt's text
        commands = commands[1:]
    return ExpertPlan(tuple(action_message(tool_call(from_command(c))) for c in commands), "handcoded")


if __name__ == "__main__":
    random.seed(EXPERT_RANDOM_SEED)  # the expert picks among equal objects with random.choice
    print(json.dumps(_expert_commands(Path(sys.argv[1]), int(sys.argv[2]))), flush=True)
