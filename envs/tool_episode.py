"""Episodes whose actions are model code calling game tools (ALFWorld, BabyAI).

The model's code runs in a `Sandbox` process that holds only tool *stubs*; each stub call is sent
back to this (trusted) process, validated here, and executed on the game by a `GameHandle`.
Neither the game object nor `done`/`success` is reachable from the sandbox: the episode's outcome
is read from the game after every call (docs/original.md §10 item 26 fixed).

Observation of one `act(code)` (docs/original.md §4.2): the text of the **last** tool call, as in the original.
If the code raised after its last tool call, the error line follows; if it called no tool, the
observation is the code's own output (or a hint to call a tool).
"""
from __future__ import annotations

import abc
from typing import Any

from envs.base import Episode, StepResult, Tool
from envs.sandbox import NO_OUTPUT

EPISODE_OVER = "The episode is over; no further actions are possible."
NO_TOOL_CALLED = "Your code did not call any tool, so nothing happened in the environment. Call one of the tools."


class GameHandle(abc.ABC):
    """Trusted access to one live game: run a validated tool call, report the outcome, fork."""

    done: bool = False
    success: bool = False

    @abc.abstractmethod
    def tool(self, name: str, args: list[str]) -> str:
        """Execute tool `name` with string arguments; return its observation text."""

    @abc.abstractmethod
    def fork(self) -> GameHandle:
        """An independent handle in the same game state."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the game."""


def bind_arguments(tool: Tool, parameters: tuple[str, ...], args: list, kwargs: dict) -> list[str] | str:
    """Positional string arguments for a call, or an explanation (str) of why the call is invalid."""
    usage = f"Invalid call of {tool.name}: {{}}. Its signature is {tool.signature}; e.g. {_example(tool, parameters)}."
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return usage.format("malformed arguments")
    if len(args) > len(parameters):
        return usage.format(f"it takes {len(parameters)} argument(s) but {len(args)} were given")
    values: dict[str, Any] = dict(zip(parameters, args))
    for key, value in kwargs.items():
        if key not in parameters:
            return usage.format(f"unexpected keyword argument {str(key)[:40]!r}")
        if key in values:
            return usage.format(f"argument {key!r} given twice")
        values[key] = value
    missing = [p for p in parameters if p not in values]
    if missing:
        return usage.format(f"missing argument(s) {', '.join(missing)}")
    bad = [p for p in parameters if not isinstance(values[p], (str, int)) or isinstance(values[p], bool)]
    if bad:
        return usage.format(f"argument(s) {', '.join(bad)} must be strings")
    text = [" ".join(str(values[p]).split()) for p in parameters]
    if any(not t or len(t) > 200 for t in text):
        return usage.format("arguments must be non-empty names of at most 200 characters")
    return text


def _example(tool: Tool, parameters: tuple[str, ...]) -> str:
    return f"{tool.name}({', '.join(repr(p.replace('_', ' ') + ' 1') for p in parameters)})"


class ToolEpisode(Episode):
    """An episode driven by sandboxed code that may only call the env's tools."""

    def __init__(self, task_id: str, goal: str, observation: str, game: GameHandle, tools: list[Tool],
                 parameters: dict[str, tuple[str, ...]], sandbox_factory: Any, code_timeout: float,
                 max_tool_calls: int, sandbox: Any = None):
        self.task_id, self.goal, self.observation = task_id, goal, observation
        self._game = game
        self._tools = {t.name: t for t in tools}
        self._parameters = parameters
        self._sandbox_factory = sandbox_factory
        self._code_timeout = code_timeout
        self._max_tool_calls = max_tool_calls
        self._calls: list[str] = []  # observations of the tool calls of the current act()
        self._closed = False
        self._sandbox = sandbox if sandbox is not None else sandbox_factory(sorted(self._tools), self._handle_tool)

    @property
    def done(self) -> bool:  # type: ignore[override]
        return self._game.done

    @property
    def success(self) -> bool:  # type: ignore[override]
        return self._game.success

    # ---- trusted side of the tool stubs ----------------------------------------------------------
    def _handle_tool(self, name: str, args: list, kwargs: dict) -> None:
        """Called (in this process) for every tool call the sandboxed code makes."""
        if len(self._calls) >= self._max_tool_calls:
            raise RuntimeError(f"at most {self._max_tool_calls} tool calls per action")
        if self._game.done:  # ended by an earlier call of this action: its text stays the observation
            return None
        tool = self._tools.get(name)
        if tool is None:
            observation = f"There is no tool named {str(name)[:40]!r}; available: {', '.join(self._tools)}."
        else:
            bound = bind_arguments(tool, self._parameters[name], args, kwargs)
            observation = bound if isinstance(bound, str) else self._game.tool(name, bound)
        self._calls.append(observation)
        return None

    # ---- Episode API -----------------------------------------------------------------------------
    def act(self, code: str) -> StepResult:
        """Run the code of one action in the sandbox; the game decides done/success."""
        if self._closed:
            return StepResult("The episode is closed.", self.done, self.success)
        if self.done:
            return StepResult(EPISODE_OVER, True, self.success)
        self._calls = []
        result = self._sandbox.run(str(code), timeout=self._code_timeout)
        output = (result.output or "").strip()
        if output == NO_OUTPUT:
            output = ""
        if self._calls:
            observation = self._calls[-1]
            error = _error_line(output)
            if error:
                observation += f"\n{error}"
        else:
            observation = output or NO_TOOL_CALLED
        if result.timed_out:
            observation += f"\nYour code was stopped after {self._code_timeout:g} s."
        return StepResult(observation, self.done, self.success,
                          info={"tool_calls": len(self._calls), "timed_out": bool(result.timed_out)})

    def fork(self) -> ToolEpisode:
        """Same game state and interpreter state, independent from here on (no replay)."""
        child = ToolEpisode.__new__(ToolEpisode)
        child.__dict__.update(self.__dict__)
        child._game = self._game.fork()
        child._calls = []
        child._sandbox = self._sandbox.fork(tool_handler=child._handle_tool)
        return child

    def close(self) -> None:
        """Stop the sandbox and release the game. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sandbox.close()
        finally:
            self._game.close()


def _error_line(output: str) -> str:
    """The exception line of the last traceback in `output` (e.g. "NameError: name 'x' is not defined")."""
    marker = "Traceback (most recent call last):"
    if marker not in output:
        return ""
    block = output.rsplit(marker, 1)[1].splitlines()
    for line in block:
        if line.strip() and not line.startswith((" ", "\t")):
            return line.strip()
    return ""
