"""Breadth-first path planning for BabyAI's high-level actions over the cells the agent has seen.

A state is (x, y, direction); moves are minigrid's primitive `left`/`right`/`forward`. Unknown cells
are never entered, so plans only use what the agent has observed.
"""
from __future__ import annotations

from collections import deque

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE = 0, 1, 2, 3, 4, 5
"""minigrid.core.actions.Actions values."""

DIR_TO_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))
"""minigrid's direction index -> unit vector (0 = east, 1 = south, 2 = west, 3 = north)."""

WALKABLE = {"empty", "floor", "goal"}


def is_walkable(cell: tuple[str, str, str] | None) -> bool:
    """Known, free cell: empty floor, goal or an open door."""
    if cell is None:
        return False
    kind, _color, state = cell
    return kind in WALKABLE or (kind == "door" and state == "open")


def plan_path(known: dict[tuple[int, int], tuple[str, str, str]], start: tuple[int, int], direction: int,
              target: tuple[int, int], arrive: bool) -> list[int] | None:
    """Shortest primitive-action list from (start, direction) to stand on `target` (arrive=True) or to
    face it from an adjacent cell (arrive=False); None if no path through known walkable cells exists."""
    def reached(pos: tuple[int, int], d: int) -> bool:
        if arrive:
            return pos == target
        dx, dy = DIR_TO_VEC[d]
        return (pos[0] + dx, pos[1] + dy) == target

    begin = (start, direction)
    parents: dict = {begin: None}
    queue = deque([begin])
    while queue:
        pos, d = queue.popleft()
        if reached(pos, d):
            actions = []
            node = (pos, d)
            while parents[node] is not None:
                node, action = parents[node]
                actions.append(action)
            return actions[::-1]
        dx, dy = DIR_TO_VEC[d]
        for action, nxt in ((FORWARD, ((pos[0] + dx, pos[1] + dy), d)),
                            (LEFT, (pos, (d - 1) % 4)), (RIGHT, (pos, (d + 1) % 4))):
            if nxt in parents:
                continue
            if action == FORWARD and not is_walkable(known.get(nxt[0])):
                continue
            parents[nxt] = ((pos, d), action)
            queue.append(nxt)
    return None
