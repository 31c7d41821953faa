"""One live ALFWorld game (TextWorld) with the original pipeline's text processing (docs/original.md §4.2).

This object holds TextWorld state that cannot be pickled or deep-copied, so episodes keep it in a
forkable host process (`envs.forkable`); it never lives in the sandbox that runs model code.
"""
from __future__ import annotations

import json
import re

INVALID_ACTION = ("The action is not valid and therefore takes no effect. "
                  "Please remember to satisfy the restriction of actions.")
"""What the original says instead of TextWorld's "Nothing happens." (docs/original.md §4.2)."""

_ARRIVE = re.compile(r"^You arrive at loc \d+\. ")


def split_banner(text: str) -> tuple[str, str]:
    """(initial observation, goal) from the reset text: the two lines after the TextWorld banner."""
    lines = "\n".join(text.split("\n\n")[1:]).split("\n")
    observation = lines[0] if lines else ""
    goal = lines[1] if len(lines) > 1 else ""
    return observation, goal.replace("Your task is to: ", "", 1)


def process_observation(text: str) -> str:
    """Drop "You arrive at loc N. " and turn "Nothing happens." into the original's invalid message."""
    text = _ARRIVE.sub("", text)
    if "Nothing happens" in text:
        return INVALID_ACTION
    return text


class ALFWorldGame:
    """A single ALFWorld game loaded from its `game.tw-pddl` (no split-wide game list is built)."""

    def __init__(self, game_file: str):
        import textworld
        import textworld.gym
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

        with open(game_file) as f:
            # json_2.1.1 games (shipped) say `put O in/on R`; newer ALFWorld grammars say `move O to R`
            self._move_grammar = "move {o} to {r}" in json.load(f).get("grammar", "")
        request = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
        env_id = textworld.gym.register_game(
            game_file, request, max_episode_steps=None,
            wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])
        self._env = textworld.gym.make(env_id)
        self.reset()

    def reset(self) -> dict:
        """Back to the start of the game (TextWorld reset); returns `state()`."""
        text, infos = self._env.reset()
        self.initial_observation, self.goal = split_banner(text)
        self.won = bool(infos["won"])
        self.done = self.won
        self.admissible_commands: list[str] = list(infos["admissible_commands"])
        self._location_text = self.initial_observation  # what `look` repeats (the original's env_ob)
        return self.state()

    def state(self) -> dict:
        """Plain-data summary for the trusted side: goal, initial observation, won/done."""
        return {"goal": self.goal, "initial_observation": self.initial_observation,
                "won": self.won, "done": self.done}

    def command(self, command: str) -> dict:
        """Run one text command; returns {"observation", "won", "done"} (observation processed)."""
        command = command.strip()
        if command.endswith("."):
            command = command[:-1]
        if command == "look":
            text = self._location_text  # the original repeats the last location text
        elif command == "check valid actions":
            text = "Choose an action from these valid actions: " + ", ".join(self.admissible_commands)
        else:
            if self._move_grammar and command.startswith("put ") and " in/on " in command:
                command = "move " + command[len("put "):].replace(" in/on ", " to ", 1)
            text, _score, done, infos = self._env.step(command)
            if ("go to" in command or "open" in command) and "Nothing happens" not in text:
                self._location_text = text
            self.admissible_commands = list(infos["admissible_commands"])
            self.won = bool(infos["won"])
            self.done = bool(done) or self.won
        return {"observation": process_observation(text), "won": self.won, "done": self.done}

    def close(self) -> None:
        """Release TextWorld resources."""
        self._env.close()
