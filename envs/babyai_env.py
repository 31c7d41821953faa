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

# name -> (parameters, action text template, description, brief description for the compact prompt style)
_TOOLS: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "turn_left": ((), "turn left", "Turn left (90 degrees) where you stand.", "turn left"),
    "turn_right": ((), "turn right", "Turn right (90 degrees) where you stand.", "turn right"),
    "move_forward": ((), "move forward", "Move one step forward, if the cell in front of you is free.",
                     "step forward"),
    "pickup": ((), "pickup", "Pick up the object right in front of you (you can carry one object).",
               "pick up the object in front (you carry at most one)"),
    "drop": ((), "drop", "Drop the object you carry onto the free cell right in front of you.",
             "drop what you carry in front"),
    "toggle": ((), "toggle", "Open (or close) the door or box right in front of you; a locked door needs "
                             "a key of its colour in your hands.",
               "open/close the door or box in front (locked: needs its colour's key)"),
    "go_to": (("obj",), "go to {}", "Walk to an object or door you have seen until you face it, "
                                    "e.g. go_to('grey key 1').", "walk to a seen object, e.g. go_to('grey key 1')"),
    "pick_up": (("obj",), "pickup {}", "Walk to an object you have seen and pick it up, e.g. "
                                       "pick_up('red ball 1'). You can carry one object at a time.",
                "walk to a seen object and pick it up"),
    "go_through": (("door",), "go through {}", "Walk into an open door you have seen, e.g. "
                                               "go_through('blue open door 1').", "walk into an open door"),
    "toggle_and_go_through": (("door",), "toggle and go through {}",
                              "Walk to a door you have seen, open it if it is closed or locked (a locked door needs "
                              "a key of its colour in your hands) and step into it, e.g. "
                              "toggle_and_go_through('red closed door 1').",
                              "open a door if needed and walk into it"),
}
TOOLS: list[Tool] = [Tool(name, description, f"{name}({', '.join(p + ': str' for p in params)}) -> None", brief)
                     for name, (params, _template, description, brief) in _TOOLS.items()]
PARAMETERS: dict[str, tuple[str, ...]] = {name: spec[0] for name, spec in _TOOLS.items()}


def action_text(name: str, args: list[str]) -> str:
    """The game's action text of a validated tool call, e.g. go_to('red ball 1') -> "go to red ball 1"."""
    return _TOOLS[name][1].format(*args)


# (action text prefix, tool) of the tools with an argument, longest prefix first ("go through" is a suffix
# of "toggle and go through", "pickup" also a primitive)
_PREFIXES = sorted(((spec[1][:-len(" {}")], name) for name, spec in _TOOLS.items() if spec[0]), key=lambda p: -len(p[0]))
_PRIMITIVES = {spec[1]: name for name, spec in _TOOLS.items() if not spec[0]}


def tool_of_action(action: str) -> tuple[str, str | None]:
    """The tool call that runs a game action text: "go to red ball 1" -> ("go_to", "red ball 1"),
    "turn left" -> ("turn_left", None). Raises ValueError for a text no tool produces."""
    if action in _PRIMITIVES:
        return _PRIMITIVES[action], None
    for prefix, name in _PREFIXES:
        if action.startswith(prefix + " "):
            return name, action[len(prefix) + 1:]
    raise ValueError(f"no BabyAI tool runs the action {action!r}")


COMPACT_ACTIONS_PREFIX = "Actions: "
ALL = "any seen"


def compact_actions(available: list[str], unavailable: list[str] = ()) -> str:
    """The possible actions as the tool calls that run them, grouped by tool (compact observation style), e.g.
    `Actions: turn_left(), turn_right(), move_forward(); go_to: any seen; pick_up: 'red ball 1'`. `any seen` stands for
    every seen object the tool takes (no action of that tool is in `unavailable`); a tool none of whose
    actions is possible is left out."""
    primitives: list[str] = []
    arguments: dict[str, list[str]] = {}
    for action in available:
        name, argument = tool_of_action(action)
        if argument is None:
            primitives.append(f"{name}()")
        else:
            arguments.setdefault(name, []).append(repr(argument))
    blocked = {tool_of_action(a)[0] for a in unavailable}
    groups = [", ".join(primitives)] if primitives else []
    groups += [f"{name}: {ALL if name not in blocked else ', '.join(arguments[name])}"
               for name in _TOOLS if name in arguments]
    return COMPACT_ACTIONS_PREFIX + "; ".join(groups)


def parse_compact_actions(line: str, objects: list[str]) -> list[str]:
    """The tool calls a `compact_actions` line allows, `any seen` expanded over `objects` (the names of the
    observation, in order), e.g. ["turn_left()", "go_to('red ball 1')"]. For tests and benchmarks."""
    import ast

    if not line.startswith(COMPACT_ACTIONS_PREFIX):
        raise ValueError(f"not a compact actions line: {line[:60]!r}")
    calls: list[str] = []
    for group in line[len(COMPACT_ACTIONS_PREFIX):].split("; "):
        name, sep, rest = group.partition(": ")
        if not sep:
            calls += [c.strip() for c in group.split(", ") if c.strip()]
            continue
        if rest == ALL:
            names = [("goal" if _kind(o) == "goal" else o) for o in objects if _takes(name, _kind(o))]
        else:
            names = [ast.literal_eval(a) for a in rest.split(", ")]
        calls += [f"{name}({n!r})" for n in names]
    return calls


def _kind(name: str) -> str:
    """"red ball 1" -> "ball", "grey locked door 2" -> "door"."""
    return name.split()[-2]


def _takes(tool: str, kind: str) -> bool:
    """Whether `tool` takes objects of `kind` (pick_up: balls, boxes, keys; the door tools: doors)."""
    if tool in ("go_through", "toggle_and_go_through"):
        return kind == "door"
    if tool == "pick_up":
        return kind in ("ball", "box", "key")
    return kind != "lava"


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

    def fork(self) -> BabyAIGameHandle:
        return BabyAIGameHandle(copy.deepcopy(self.game))

    def close(self) -> None:
        self.game.close()


class BabyAIEnv(Env):
    """The original's 40 BabyAI levels (any registered BabyAI level is accepted by `start`).

    Observations are rendered in `prompt_style` (set by `envs.load_env`; compact: see `envs.babyai_game`)."""

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
        game = BabyAIGame(level, seed, self.prompt_style, compact_actions)
        return ToolEpisode(f"{level}:{seed}", game.mission, game.description(), BabyAIGameHandle(game), TOOLS,
                           PARAMETERS, lambda names, handler: Sandbox(tools=names, tool_handler=handler),
                           self.code_timeout, self.max_tool_calls)
