"""BabyAI expert, high level: a short plan of the env's own tools derived from the mission.

The mission grammar of BabyAI is small: instructions `go to D`, `pick up D`, `open D`, `put D next to
D`, joined by `and`, `, then` and `after you`; a description D is `the|a [colour] ball|box|key|door|object`
with an optional location (`on your left`, ...). Each instruction offers a few candidate macros of the
game's high-level actions (`go to red ball 1`, `pickup ...`, `toggle and go through ...`, turns to
look around); a depth-first search over copies of the game (`copy.deepcopy`, as `Episode.fork`) tries
them in order and returns the first action list after which the level's own reward says success.
Location words are not interpreted: a wrong object simply fails verification and the next is tried.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from envs.babyai_game import BabyAIGame, SeenObject

COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
DESCRIPTION = re.compile(r"(?:the|a) (?:(red|green|blue|purple|yellow|grey) )?(ball|box|key|door|object)")
TOOL_OF_ACTION = (("toggle and go through ", "toggle_and_go_through"), ("go through ", "go_through"),
                  ("go to ", "go_to"), ("pickup ", "pick_up"))
PRIMITIVE_TOOL = {"turn left": "turn_left", "turn right": "turn_right", "move forward": "move_forward",
                  "pickup": "pickup", "drop": "drop", "toggle": "toggle"}
LOOK_AROUND = (("turn left",), ("turn right",), ("turn left", "turn left"))
PUT_DOWN = (("drop",), ("turn left", "drop"), ("turn right", "drop"), ("turn left", "turn left", "drop"))
SIDE_STEPS = (("turn left", "move forward", "turn right", "drop"), ("turn right", "move forward", "turn left", "drop"))


@dataclass(frozen=True)
class Description:
    color: str | None
    kind: str  # ball / box / key / door / object

    def matches(self, obj: SeenObject) -> bool:
        kind_ok = obj.kind == self.kind or (self.kind == "object" and obj.kind in ("ball", "box", "key"))
        return kind_ok and (self.color is None or obj.color == self.color)


@dataclass(frozen=True)
class Instruction:
    verb: str  # goto / pickup / open / putnext
    target: Description
    other: Description | None = None  # putnext: the object to put the target next to


def _description(text: str) -> Description | None:
    match = DESCRIPTION.search(text)
    return Description(match.group(1), match.group(2)) if match else None


def _instruction(text: str) -> Instruction | None:
    text = text.strip()
    for prefix, verb in (("go to ", "goto"), ("pick up ", "pickup"), ("open ", "open")):
        if text.startswith(prefix):
            target = _description(text[len(prefix):])
            return Instruction(verb, target) if target else None
    if text.startswith("put ") and " next to " in text:
        first, second = text[len("put "):].split(" next to ", 1)
        target, other = _description(first), _description(second)
        return Instruction("putnext", target, other) if target and other else None
    return None


def parse_mission(mission: str) -> list[Instruction] | None:
    """The instructions of a mission in execution order; None if a part is not understood."""
    ordered: list[str] = []
    for part in mission.split(", then "):
        if " after you " in part:
            later, earlier = part.split(" after you ", 1)
            pieces = [earlier, later]
        else:
            pieces = [part]
        for piece in pieces:
            ordered += piece.split(" and ")
    instructions = [_instruction(p) for p in ordered]
    understood = [i for i in instructions if i is not None]
    return understood if len(understood) == len(instructions) else None


def tool_call(action: str) -> str:
    """The tool call of a game action text: 'go to red ball 1' -> "go_to('red ball 1')"."""
    if action in PRIMITIVE_TOOL:
        return f"{PRIMITIVE_TOOL[action]}()"
    for prefix, tool in TOOL_OF_ACTION:
        if action.startswith(prefix):
            return f"{tool}({action[len(prefix):]!r})"
    raise ValueError(f"no tool for BabyAI action {action!r}")


class _Search:
    """Depth-first search over macros with a budget of game actions tried."""

    def __init__(self, budget: int, explore_depth: int):
        self.budget = budget
        self.explore_depth = explore_depth

    def _run(self, game: BabyAIGame, macro: tuple[str, ...]) -> tuple[BabyAIGame, list[str]] | None:
        """Apply a macro to a copy of `game`; None if an action is unavailable (or the budget is spent)."""
        game = copy.deepcopy(game)
        done: list[str] = []
        for action in macro:
            self.budget -= 1
            if self.budget < 0 or game.done:
                return None
            plans = game._plans()[0]  # what `act` runs, without building the observation text (3x faster)
            if action not in plans:
                return None
            for primitive in plans[action]:
                if not game._step(primitive):
                    break
            done.append(action)
        return game, done

    def _macros(self, game: BabyAIGame, ins: Instruction) -> list[tuple[str, ...]]:
        objects = game.objects()
        carrying = game._carrying()
        matching = [o for o in objects if ins.target.matches(o)]
        drop_first = PUT_DOWN if carrying is not None else ((),)
        macros: list[tuple[str, ...]] = []
        if ins.verb == "goto":
            macros += [(f"go to {o.name}",) for o in matching]
        elif ins.verb == "pickup":
            if carrying is not None and ins.target.matches(_carried(carrying)):
                macros.append(PUT_DOWN[1] + ("pickup",))  # put it down and take it again
            macros += [d + (f"pickup {o.name}",) for d in drop_first for o in matching]
        elif ins.verb == "open":
            for door in matching:
                state = game.known[door.pos][2]
                if state == "closed":
                    macros.append((f"go to {door.name}", "toggle"))
                elif state == "locked":
                    holding_key = carrying is not None and carrying.type == "key" and carrying.color == door.color
                    if holding_key:
                        macros.append((f"go to {door.name}", "toggle"))
                    else:
                        macros += [d + (f"pickup {k.name}", f"go to {door.name}", "toggle") for d in drop_first
                                   for k in objects if k.kind == "key" and k.color == door.color]
        elif ins.verb == "putnext":
            others = [o for o in objects if ins.other.matches(o) and o.pos]
            if carrying is not None and ins.target.matches(_carried(carrying)):
                holds = [()]
            else:
                holds = [d + (f"pickup {o.name}",) for d in drop_first for o in matching]
            for hold in holds:
                for other in others:
                    macros += [hold + (f"go to {other.name}",) + side for side in SIDE_STEPS]
        return macros

    def _explore(self, game: BabyAIGame) -> list[tuple[str, ...]]:
        macros = list(LOOK_AROUND)
        for obj in game.objects():
            if obj.kind == "door":
                macros.append((f"toggle and go through {obj.name}",))
        return macros

    def solve(self, game: BabyAIGame, instructions: list[Instruction], explore_left: int) -> list[str] | None:
        """Actions that complete `instructions` from `game`, or None."""
        if game.success:
            return []
        if not instructions or game.done or self.budget <= 0:
            return None
        for macro in self._macros(game, instructions[0]):
            outcome = self._run(game, macro)
            if outcome is None:
                continue
            after, actions = outcome
            if after.success:
                return actions
            rest = self.solve(after, instructions[1:], self.explore_depth)
            if rest is not None:
                return actions + rest
        if explore_left > 0:
            for macro in self._explore(game):
                outcome = self._run(game, macro)
                if outcome is None:
                    continue
                after, actions = outcome
                rest = self.solve(after, instructions, explore_left - 1)
                if rest is not None:
                    return actions + rest
        return None


def _carried(obj) -> SeenObject:
    return SeenObject(f"{obj.color} {obj.type}", obj.type, obj.color, (-1, -1), True)


def high_level_plan(level: str, seed: int, budget: int = 60, explore_depth: int = 2,
                    max_actions: int = 12) -> list[str] | None:
    """Game action texts that solve `level:seed` with high-level tools, or None (mission not understood,
    no plan within `budget` tried actions, or longer than `max_actions`)."""
    game = BabyAIGame(level, seed)
    try:
        instructions = parse_mission(game.mission)
        if instructions is None:
            return None
        plan = _Search(budget, explore_depth).solve(game, instructions, explore_depth)
        return plan if plan is not None and len(plan) <= max_actions else None
    finally:
        game.close()
