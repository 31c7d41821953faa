"""ALFWorld (TextWorld) tasks: `load_env("alfworld", split="valid_unseen")`.

Splits: `train` (ALFWorld's valid_train, 200 games), `valid_seen` (140), `valid_unseen` (134, the
original's evaluation split). Task id = game folder relative to the split root,
`<task-dir>/<trial>`. Each episode's TextWorld game lives in its own host process forked from a
per-env zygote (`envs.forkable`), so `Episode.fork()` is an `os.fork` of the live game, not a replay.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from envs.alfworld_games import (GAME_FILE, SPLIT_DIRS, ensure_split_unpacked, list_task_ids, split_root,
                                 task_type)
from envs.alfworld_tools import PARAMETERS, TOOLS, to_command
from envs.base import Env, EnvError
from envs.locations import data_dir
from envs.tool_episode import GameHandle, ToolEpisode

PRELOAD = ["textworld", "textworld.gym", "alfworld.agents.environment.alfred_tw_env", "envs.alfworld_game"]


class ALFWorldGameHandle(GameHandle):
    """A TextWorld game in a forkable host process."""

    def __init__(self, remote: Any, state: dict, step_timeout: float):
        self._remote = remote
        self._step_timeout = step_timeout
        self.done = bool(state["done"])
        self.success = bool(state["won"])

    def tool(self, name: str, args: list[str]) -> str:
        reply = self._remote.call("command", to_command(name, args), timeout=self._step_timeout)
        self.done, self.success = bool(reply["done"]), bool(reply["won"])
        return reply["observation"]

    def fork(self) -> ALFWorldGameHandle:
        child = ALFWorldGameHandle.__new__(ALFWorldGameHandle)
        child.__dict__.update(self.__dict__)
        child._remote = self._remote.fork()
        return child

    def close(self) -> None:
        self._remote.close()


class ALFWorldEnv(Env):
    """ALFWorld games of one split; episodes run model code in a sandbox against the game's tools."""

    name = "alfworld"
    tools = TOOLS

    def __init__(self, split: str = "valid_unseen", data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, code_timeout: float = 10.0, step_timeout: float = 60.0,
                 max_tool_calls: int = 50):
        """`code_timeout`: seconds per action's code; `step_timeout`: per TextWorld call (the host is
        killed after it); `max_tool_calls`: tool calls allowed per action."""
        self.split = split
        self._data = Path(data_dir) if data_dir else None
        self._cache = Path(cache_dir) if cache_dir else None
        self._root = split_root(split, self._data, self._cache)  # raises EnvError for unknown splits
        self._ids: list[str] | None = None
        self.code_timeout, self.step_timeout, self.max_tool_calls = code_timeout, step_timeout, max_tool_calls
        self._server: Any = None
        self._lock = threading.Lock()

    def task_ids(self) -> list[str]:
        if self._ids is None:
            self._ids = list_task_ids(self._root)
        return list(self._ids)

    def task_info(self, task_id: str) -> dict[str, Any]:
        return {"task_type": task_type(task_id)}

    def data_files(self) -> dict[str, Path]:
        """The split's game files (what episodes load) and the archive they were unpacked from."""
        files = {f"alfworld/{self._root.name}/{t}/{GAME_FILE}": self._root / t / GAME_FILE for t in self.task_ids()}
        tarball = data_dir(self._data) / "alfworld" / f"{self._root.name}.tar.gz"
        if tarball.is_file():
            files[f"alfworld/{tarball.name}"] = tarball
        return files

    def game_file(self, task_id: str) -> Path:
        """The game file of `task_id`, looked up in this split first, then in the other splits."""
        task_id = str(task_id).strip("/")
        parts = Path(task_id).parts
        if len(parts) != 2 or ".." in parts:
            raise EnvError(f"bad alfworld task id {task_id!r}; expected '<task-dir>/<trial>' such as "
                           f"{self.task_ids()[0]!r}")
        others = [d for d in SPLIT_DIRS.values() if d != self._root.name]
        for root in [self._root] + [ensure_split_unpacked(d, self._data, self._cache) for d in others]:
            candidate = root / task_id / GAME_FILE
            if candidate.is_file():
                return candidate
        raise EnvError(f"unknown alfworld task id {task_id!r}: no {GAME_FILE} for it in any split; "
                       f"expected one of the {len(self.task_ids())} ids of split {self.split!r}, "
                       f"e.g. {self.task_ids()[0]!r}")

    def _fork_server(self) -> Any:
        with self._lock:
            if self._server is None:
                from envs.forkable import ForkServer

                self._server = ForkServer(preload=PRELOAD, name="alfworld-games")
            return self._server

    def start(self, task_id: str) -> ToolEpisode:
        """A fresh episode: the game is loaded in a new host process (about 1-3 s)."""
        from envs.sandbox import Sandbox

        path = self.game_file(task_id)
        task_type(str(task_id))  # validates the folder naming
        remote = self._fork_server().spawn("envs.alfworld_game:ALFWorldGame", str(path), timeout=self.step_timeout)
        try:
            state = remote.call("state", timeout=self.step_timeout)
            game = ALFWorldGameHandle(remote, state, self.step_timeout)
            return ToolEpisode(str(task_id).strip("/"), state["goal"], state["initial_observation"], game, TOOLS,
                               PARAMETERS, lambda names, handler: Sandbox(tools=names, tool_handler=handler),
                               self.code_timeout, self.max_tool_calls)
        except BaseException:
            remote.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None
