"""BabyAI (minigrid) tasks: `load_env("babyai", split="test")`.

Task id `<level>:<seed>` = `gymnasium.make(level).reset(seed=seed)`. Splits: `test` = seed 0 of the
original's 40 levels (40 tasks), `train` = seeds 1..train_seeds_per_level of each level. The game runs
in this (trusted) process; model code runs in a sandbox and reaches it only through the tools.
`Episode.fork()` deep-copies the minigrid env (cheap, no replay).
"""
from __future__ import annotations

import copy
from typing import Any

from envs.babyai_game import BabyAIGame
from envs.babyai_levels import parse_task_id, split_task_ids
from envs.base import Env, Tool
from envs.tool_episode import GameHandle, ToolEpisode

# name -> (parameters, action text template, description)
_TOOLS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "turn_left": ((), "turn left", "Turn left (90 degrees) where you stand."),
    "turn_right": ((), "turn right", "Turn right (90 degrees) where you stand."),
    "move_forward": ((), "move forward", "Move one step forward, if the cell in front of you is free."),
    "pickup": ((), "pickup", "Pick up the object right in front of you (you can carry one object)."),
    "drop": ((), "drop", "Drop the object you carry onto the free cell right in front of you."),
    "toggle": ((), "toggle", "Open (or close) the door or box right in front of you; a locked door needs "
                             "a key of its colour in your hands."),
    "go_to": (("obj",), "go to {}", "Walk to an object or door you have seen until you face it, "
                                    "e.g. go_to('grey key 1')."),
    "pick_up": (("obj",), "pickup {}", "Walk to an object you have seen and pick it up, e.g. "
                                       "pick_up('red ball 1'). You can carry one object at a time."),
    "go_through": (("door",), "go through {}", "Walk into an open door you have seen, e.g. "
                                               "go_through('blue open door 1')."),
    "toggle_and_go_through": (("door",), "toggle and go through {}",
                              "Walk to a door you have seen, open it if it is closed or locked (a locked door needs "
                              "a key of its colour in your hands) and step into it, e.g. "
                              "toggle_and_go_through('red closed door 1')."),
}
TOOLS: list[Tool] = [Tool(name, description, f"{name}({', '.join(p + ': str' for p in params)}) -> None")
                     for name, (params, _template, description) in _TOOLS.items()]
PARAMETERS: dict[str, tuple[str, ...]] = {name: spec[0] for name, spec in _TOOLS.items()}


def action_text(name: str, args: list[str]) -> str:
    """The game's action text of a validated tool call, e.g. go_to('red ball 1') -> "go to red ball 1"."""
    return _TOOLS[name][1].format(*args)


class BabyAIGameHandle(GameHandle):
    """In-process minigrid game; forked by deep copy."""

    def __init__(self, game: BabyAIGame):
        self.game = game

    @property
    def done(self) -> bool:  # type: ignore[override]
        return self.game.done

    @property
    def success(self) -> bool:  # type: ignore[override]
        return self.game.success

    def tool(self, name: str, args: list[str]) -> str:
        return self.game.act(action_text(name, args))

    def fork(self) -> "BabyAIGameHandle":
        return BabyAIGameHandle(copy.deepcopy(self.game))

    def close(self) -> None:
        self.game.close()


class BabyAIEnv(Env):
    """The original's 40 BabyAI levels (any registered BabyAI level is accepted by `start`)."""

    name = "babyai"
    tools = TOOLS

    def __init__(self, split: str = "test", train_seeds_per_level: int = 25, code_timeout: float = 10.0,
                 max_tool_calls: int = 50, data_dir: str | None = None):
        """`data_dir` is accepted for a uniform `load_env` call and unused (BabyAI needs no data)."""
        self._ids = split_task_ids(split, train_seeds_per_level)  # raises EnvError for unknown splits
        self.split = split
        self.code_timeout, self.max_tool_calls = code_timeout, max_tool_calls

    def task_ids(self) -> list[str]:
        return list(self._ids)

    def task_info(self, task_id: str) -> dict[str, Any]:
        return {"task_type": parse_task_id(task_id)[0]}

    def start(self, task_id: str) -> ToolEpisode:
        """A fresh episode of `<level>:<seed>`; the mission is the goal, the first view the observation."""
        from envs.sandbox import Sandbox

        level, seed = parse_task_id(task_id)
        game = BabyAIGame(level, seed)
        return ToolEpisode(f"{level}:{seed}", game.mission, game.description(), BabyAIGameHandle(game), TOOLS,
                           PARAMETERS, lambda names, handler: Sandbox(tools=names, tool_handler=handler),
                           self.code_timeout, self.max_tool_calls)
