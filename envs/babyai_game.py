"""One live BabyAI (minigrid) episode with a text interface close to AgentGym's (docs/original.md §4.3).

The observation describes the egocentric 7x7 view (objects with colours, door states, relative
positions in steps), the nearest wall straight ahead, what the agent remembers out of view and what
it carries, followed by `Available actions: [...]`. Objects are named `<color> <type> <n>` (doors
`<color> <state> door <n>`), numbered per name by distance, over every object the agent has seen.
High-level actions (go to, pickup, go through, toggle and go through) plan over the seen cells
(`envs.babyai_planner`) and run as primitive minigrid steps, stopping early when a step has no effect.

With `style="compact"` the same information is rendered in fewer tokens: `red ball 1 (2 ahead, 1 right)`
instead of `There is a red ball 1, 2 steps in front of you and 1 step to your right.`, and the available actions
as the tool calls that run them, grouped by tool, `any seen` where every seen object the tool takes is possible
(`render_actions`, supplied by `envs.babyai_env`).

Runs in the trusted worker process; `copy.deepcopy` of a game is an independent fork.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass

from envs.babyai_planner import DIR_TO_VEC, DROP, FORWARD, LEFT, PICKUP, RIGHT, TOGGLE, is_walkable, plan_path

Cell = tuple[str, str, str]  # (object type, colour, door state) as minigrid encodes it
OBJECT_KINDS = ("door", "key", "ball", "box", "goal", "lava")
PICKABLE = ("key", "ball", "box")


@dataclass(frozen=True)
class SeenObject:
    name: str  # e.g. "red ball 1", "grey locked door 2"
    kind: str
    color: str
    pos: tuple[int, int]
    visible: bool


def _plural(n: int, word: str = "step") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def relative_position(front: int, right: int) -> str:
    """Words for an offset of `front` steps ahead and `right` steps to the right."""
    side = "" if right == 0 else f"{_plural(abs(right))} to your {'right' if right > 0 else 'left'}"
    if front > 0:
        ahead = f"{_plural(front)} in front of you"
        return f"right in front of you {_plural(front)} away" if not side else f"{ahead} and {side}"
    if front < 0:
        behind = f"{_plural(-front)} behind you"
        return behind if not side else f"{behind} and {side}"
    return side or "where you are"


def compact_position(front: int, right: int) -> str:
    """`relative_position` in few words: (2, -1) -> "2 ahead, 1 left"; (0, 0) -> "here"."""
    parts = ([f"{front} ahead"] if front > 0 else [f"{-front} behind"] if front < 0 else []) + (
        [f"{right} right"] if right > 0 else [f"{-right} left"] if right < 0 else [])
    return ", ".join(parts) or "here"


class BabyAIGame:
    """Game state + text interface. `act(action, target)` is the only way to change it.

    `style`: "original" (the original's wording) or "compact" (shorter text, same information); compact
    needs `render_actions(available, unavailable)`, which turns the action texts possible now and those that
    are not (the keys of `_plans()`) into the line shown."""

    def __init__(self, level: str, seed: int, style: str = "original",
                 render_actions: Callable[[list[str], list[str]], str] | None = None):
        if style not in ("original", "compact"):
            raise ValueError(f"unknown BabyAI observation style {style!r}; expected 'original' or 'compact'")
        if style == "compact" and render_actions is None:
            raise ValueError("the compact BabyAI observation style needs `render_actions`")
        self.style, self._render_actions = style, render_actions
        import gymnasium
        import minigrid  # noqa: F401  (registers the levels)
        from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT

        self._idx_to_object, self._idx_to_color = IDX_TO_OBJECT, IDX_TO_COLOR
        self._env = gymnasium.make(level)
        with contextlib.redirect_stdout(io.StringIO()):  # "Sampling rejected: ..." prints during generation
            obs, _ = self._env.reset(seed=seed)
        self.level, self.seed = level, seed
        self.mission: str = obs["mission"]
        self.max_steps: int = int(self._env.unwrapped.max_steps)
        self.known: dict[tuple[int, int], Cell] = {}
        self.reward = 0.0
        self.terminated = self.truncated = False
        self._observe(obs)

    # ---- state -----------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def success(self) -> bool:
        """The level's own reward decides: reward > 0 once the episode has ended."""
        return self.done and self.reward > 0

    @property
    def steps(self) -> int:
        return int(self._env.unwrapped.step_count)

    def _pose(self) -> tuple[tuple[int, int], int]:
        u = self._env.unwrapped
        return (int(u.agent_pos[0]), int(u.agent_pos[1])), int(u.agent_dir)

    def _observe(self, obs: dict) -> None:
        """Record every visible cell of the 7x7 view in absolute coordinates."""
        image = obs["image"]
        (x, y), d = self._pose()
        fx, fy = DIR_TO_VEC[d]
        rx, ry = -fy, fx
        size = image.shape[0]
        self._visible: set[tuple[int, int]] = set()
        for i in range(size):
            for j in range(size):
                kind = self._idx_to_object[int(image[i, j, 0])]
                if kind == "unseen" or (i, j) == (size // 2, size - 1):
                    continue
                ahead, right = size - 1 - j, i - size // 2
                pos = (x + fx * ahead + rx * right, y + fy * ahead + ry * right)
                state = ("open", "closed", "locked")[int(image[i, j, 2])] if kind == "door" else ""
                self.known[pos] = (kind, self._idx_to_color[int(image[i, j, 1])], state)
                self._visible.add(pos)
        self.known[(x, y)] = ("empty", "", "")

    def _offset(self, pos: tuple[int, int]) -> tuple[int, int]:
        (x, y), d = self._pose()
        fx, fy = DIR_TO_VEC[d]
        dx, dy = pos[0] - x, pos[1] - y
        return dx * fx + dy * fy, dx * -fy + dy * fx

    def objects(self) -> list[SeenObject]:
        """Every object seen so far, numbered per name by distance (nearest = 1)."""
        (x, y), _ = self._pose()
        found = [(abs(p[0] - x) + abs(p[1] - y), p not in self._visible, p, c)
                 for p, c in self.known.items() if c[0] in OBJECT_KINDS]
        found.sort()
        counts: dict[str, int] = {}
        result = []
        for _dist, hidden, pos, (kind, color, state) in found:
            base = f"{color} {state} door" if kind == "door" else f"{color} {kind}"
            counts[base] = counts.get(base, 0) + 1
            result.append(SeenObject(f"{base} {counts[base]}", kind, color, pos, not hidden))
        return result

    def _front(self) -> tuple[tuple[int, int], Cell | None]:
        (x, y), d = self._pose()
        pos = (x + DIR_TO_VEC[d][0], y + DIR_TO_VEC[d][1])
        return pos, self.known.get(pos)

    def _carrying(self):
        return self._env.unwrapped.carrying

    # ---- text ------------------------------------------------------------------------------------
    def description(self) -> str:
        """What the agent sees, remembers and carries (no action list)."""
        if self.style == "compact":
            return self._compact_description()
        objects = self.objects()
        visible = [o for o in objects if o.visible]
        parts = []
        if visible:
            parts.append("In front of you in this room, you can see several objects: " + " ".join(
                f"There is a {o.name}, {relative_position(*self._offset(o.pos))}." for o in visible))
        else:
            parts.append("You cannot see any objects within sight.")
        wall = self._wall_ahead()
        parts.append("The room has walls around you." + (f" You are facing a wall {_plural(wall)} away." if wall else ""))
        hidden = [o for o in objects if not o.visible]
        if hidden:
            parts.append("Out of view, you remember: " + "; ".join(
                f"a {o.name}, {relative_position(*self._offset(o.pos))}" for o in hidden) + ".")
        carrying = self._carrying()
        parts.append(f"You are carrying a {carrying.color} {carrying.type}." if carrying
                     else "You are not carrying anything.")
        return " ".join(parts)

    def _compact_description(self) -> str:
        objects = self.objects()
        seen = [f"{o.name} ({compact_position(*self._offset(o.pos))})" for o in objects if o.visible]
        parts = ["You see: " + "; ".join(seen) + "." if seen else "You see no objects."]
        wall = self._wall_ahead()
        if wall:
            parts.append(f"Wall {wall} ahead.")
        hidden = [f"{o.name} ({compact_position(*self._offset(o.pos))})" for o in objects if not o.visible]
        if hidden:
            parts.append("Remembered: " + "; ".join(hidden) + ".")
        carrying = self._carrying()
        parts.append(f"Carrying: {carrying.color} {carrying.type}." if carrying else "Carrying: nothing.")
        return " ".join(parts)

    def _wall_ahead(self) -> int | None:
        (x, y), d = self._pose()
        for k in range(1, self._env.unwrapped.agent_view_size):
            cell = self.known.get((x + DIR_TO_VEC[d][0] * k, y + DIR_TO_VEC[d][1] * k))
            if cell is None:
                return None
            if cell[0] == "wall":
                return k
            if not is_walkable(cell):
                return None
        return None

    def observation(self) -> str:
        """Description + the list of actions that can be taken now."""
        if self.style == "compact":
            plans, errors = self._plans()
            return f"{self.description()}\n{self._render_actions(list(plans), list(errors))}"
        actions = ", ".join(f'"{a}"' for a in self.available_actions())
        return f"{self.description()}\nAvailable actions: [{actions}]"

    # ---- actions ---------------------------------------------------------------------------------
    def _plans(self) -> tuple[dict[str, list[int]], dict[str, str]]:
        """Executable actions (text -> primitive steps) and explanations for the unavailable ones."""
        plans: dict[str, list[int]] = {"turn left": [LEFT], "turn right": [RIGHT]}
        errors: dict[str, str] = {}
        front_pos, _ = self._front()
        carrying = self._carrying()
        u = self._env.unwrapped
        front_obj = u.grid.get(*front_pos)
        if front_obj is None or front_obj.can_overlap():
            plans["move forward"] = [FORWARD]
        else:
            errors["move forward"] = "There is a barrier in front of you, you can't move forward."
        if carrying is None and front_obj is not None and front_obj.can_pickup():
            plans["pickup"] = [PICKUP]
        else:
            errors["pickup"] = ("You cannot pick up anything, as you are already carrying something." if carrying
                                else "You cannot pick up anything, as there is no object right in front of you.")
        if carrying is not None and front_obj is None:
            plans["drop"] = [DROP]
        else:
            errors["drop"] = ("You cannot drop the object, as there is already an object in front of you."
                              if carrying else "You cannot drop the object, as you are not carrying anything.")
        if front_obj is not None and front_obj.type in ("door", "box"):
            plans["toggle"] = [TOGGLE]
        else:
            errors["toggle"] = "You cannot toggle, as there is no door or box right in front of you."
        start, direction = self._pose()
        for obj in self.objects():
            face = plan_path(self.known, start, direction, obj.pos, arrive=False)
            no_path = ", as there is no path leading to it."
            if obj.kind not in ("goal", "lava"):
                key = f"go to {obj.name}"
                if face is None:
                    errors[key] = f"You cannot go to {obj.name}{no_path}"
                else:
                    plans[key] = face
            if obj.kind in PICKABLE:
                key = f"pickup {obj.name}"
                if carrying is not None:
                    errors[key] = f"You cannot pickup {obj.name}, as you are already carrying something."
                elif face is None:
                    errors[key] = f"You cannot pickup {obj.name}{no_path}"
                else:
                    plans[key] = face + [PICKUP]
            if obj.kind == "goal":
                path = plan_path(self.known, start, direction, obj.pos, arrive=True)
                if path is None:
                    errors["go to goal"] = f"You cannot go to the goal{no_path}"
                else:
                    plans["go to goal"] = path
            if obj.kind != "door":
                continue
            state = self.known[obj.pos][2]
            through, toggle_through = f"go through {obj.name}", f"toggle and go through {obj.name}"
            if state == "open":
                path = plan_path(self.known, start, direction, obj.pos, arrive=True)
                if path is None:
                    errors[through] = errors[toggle_through] = f"You cannot go through {obj.name}{no_path}"
                else:
                    plans[through] = plans[toggle_through] = path
                continue
            errors[through] = f"You cannot go through {obj.name}, as it is {state}. You should toggle it first."
            if state == "locked" and (carrying is None or carrying.type != "key" or carrying.color != obj.color):
                errors[toggle_through] = (f"You cannot toggle and go through {obj.name}, as you are not carrying "
                                          f"a {obj.color} key.")
            elif face is None:
                errors[toggle_through] = f"You cannot toggle and go through {obj.name}{no_path}"
            else:
                plans[toggle_through] = face + [TOGGLE, FORWARD]
        return plans, errors

    def available_actions(self) -> list[str]:
        """Action texts that can be executed now (as in the original's `Available actions`)."""
        return list(self._plans()[0])

    def act(self, action: str) -> str:
        """Run one action text (e.g. "go to red ball 1"); returns the observation text."""
        if self.done:
            return self._end_text()
        action = " ".join(str(action).lower().split())
        plans, errors = self._plans()
        if action not in plans:
            if action in errors:
                return f"{errors[action]}\n{self.observation()}"
            return (f"The action {action!r} is not possible here: there is no such object in view or in memory."
                    f"\n{self.observation()}")
        for primitive in plans[action]:
            if not self._step(primitive):
                break
        if self.done:
            return self._end_text()
        return self.observation()

    def _step(self, primitive: int) -> bool:
        """One minigrid step; False when it changed nothing or ended the episode (stop the plan)."""
        before = (self._pose(), self._carrying(), self._front()[1])
        obs, reward, terminated, truncated, _ = self._env.step(primitive)
        self.reward = float(reward)
        self.terminated, self.truncated = bool(terminated), bool(truncated)
        self._observe(obs)
        after = (self._pose(), self._carrying(), self._front()[1])
        return not self.done and after != before

    def _end_text(self) -> str:
        if self.success:
            return f"{self.description()}\nThe task is completed."
        if self.truncated:
            return (f"{self.description()}\nThe episode has ended: the level's limit of {self.max_steps} "
                    f"primitive steps was reached.")
        return f"{self.description()}\nThe episode has ended without completing the task."

    def close(self) -> None:
        self._env.close()
