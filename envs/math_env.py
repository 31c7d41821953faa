"""GSM8K and MATH: write Python in a persistent sandboxed interpreter, then submit `Answer: ...`.

    env = load_env("math", split="test")          # MATH-500
    ep = env.start("0")                           # task id = row index in the split's file
    ep.act("from sympy import *\\nprint(factor(x**2 - 1))")   # observation "(x - 1)*(x + 1)\\n"
    ep.answer("(x-1)(x+1)")                       # "Your answer is correct." -> done, success
    child = ep.fork()                             # os.fork of the live interpreter

Splits (files under the data directory, see shared/data/README.md):
  gsm8k  `train` (gsm8k/train.jsonl, 7,473), `test` (gsm8k/test.jsonl, 1,319); target = number after
         `####`, commas removed.
  math   `train` = the 4,500 rows of math/math_test5000.jsonl outside MATH-500 (for tree sampling),
         `test5000` = all 5,000 rows of that file, `test` = MATH-500 (math/math500_test.jsonl);
         target = `answer`. `train` and `test5000` share ids (row index in math_test5000.jsonl), so
         `start()` of a `train` env accepts any of the 5,000; `test` ids index math500_test.jsonl.
The interpreter is created on the first `act` (fresh per episode, like the original's reset).
`answer` is checked with `envs.math_grading.math_equal` in this (trusted) process.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, ClassVar

from envs.base import Env, EnvError, Episode, StepResult
from envs.locations import data_dir as default_data_dir
from envs.math_grading import math_equal
from envs.sandbox import Sandbox, SandboxLimits

CORRECT = "Your answer is correct."
INCORRECT = "Your answer is incorrect."
EPISODE_OVER = "The episode is over: the answer was already accepted. No further actions or answers are needed."

_CACHE: dict[Path, list[dict[str, Any]]] = {}
_CACHE_LOCK = threading.Lock()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with _CACHE_LOCK:
        if path not in _CACHE:
            if not path.is_file():
                raise EnvError(f"data file {path} is missing; expected the offline data directory "
                               "(config key data_dir or $DENSEPOLICY_DATA_DIR) to contain it, see shared/data/README.md")
            with open(path, encoding="utf-8") as f:
                _CACHE[path] = [json.loads(line) for line in f if line.strip()]
        return _CACHE[path]


class MathEpisode(Episode):
    """One attempt at one problem; code runs in its own `Sandbox` (created on first `act`)."""

    def __init__(self, task_id: str, goal: str, target: str, limits: SandboxLimits,
                 action_timeout: float, sandbox: Sandbox | None = None):
        self.task_id = task_id
        self.goal = goal
        self.observation = ""
        self.target = target
        self.done = False
        self.success = False
        self._limits = limits
        self._action_timeout = action_timeout
        self._sandbox = sandbox
        self._closed = False

    def _over(self) -> StepResult:
        return StepResult(observation=EPISODE_OVER, done=True, success=self.success)

    def act(self, code: str) -> StepResult:
        """Run `code` in the persistent interpreter; the observation is its output."""
        if self.done:
            return self._over()
        if self._closed:
            return StepResult(observation="The episode was closed.", done=True, success=self.success)
        if self._sandbox is None:
            self._sandbox = Sandbox(limits=self._limits)
        result = self._sandbox.run(str(code), timeout=self._action_timeout)
        return StepResult(observation=result.output, done=False, success=False,
                          info={"timed_out": result.timed_out, "restarted": result.restarted,
                                "run_seconds": result.run_seconds})

    def answer(self, text: str) -> StepResult:
        """Check `text` against the target; a correct answer ends the episode."""
        if self.done:
            return self._over()
        if math_equal(str(text).strip(), self.target):
            self.done = self.success = True
            return StepResult(observation=CORRECT, done=True, success=True)
        return StepResult(observation=INCORRECT, done=False, success=False)

    def fork(self) -> MathEpisode:
        """Same state, independent future: the live interpreter is `os.fork`ed (no replay)."""
        sandbox = self._sandbox.fork() if self._sandbox is not None and not self._closed else None
        child = MathEpisode(self.task_id, self.goal, self.target, self._limits, self._action_timeout, sandbox)
        child.done, child.success = self.done, self.success
        return child

    def close(self) -> None:
        """Kill the interpreter and everything the code started."""
        self._closed = True
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


class _MathLikeEnv(Env):
    """Shared loading and validation; subclasses say which files make which split."""

    requires_answer = True
    tools: ClassVar[list] = []
    SPLITS: ClassVar[dict[str, str]] = {}

    def __init__(self, split: str = "test", data_dir: str | Path | None = None, action_timeout: float = 5.0,
                 sandbox_limits: SandboxLimits | dict[str, int] | None = None):
        if split not in self.SPLITS:
            raise EnvError(f"unknown {self.name} split {split!r}; expected one of {sorted(self.SPLITS)}")
        if action_timeout <= 0:
            raise EnvError(f"action_timeout must be > 0, got {action_timeout}")
        if isinstance(sandbox_limits, dict):
            try:
                sandbox_limits = SandboxLimits(**sandbox_limits)
            except TypeError as exc:
                raise EnvError(f"bad sandbox_limits: {exc}; fields are {list(SandboxLimits.__dataclass_fields__)}") from None
        self.split = split
        self.root = default_data_dir(data_dir)
        self.action_timeout = float(action_timeout)
        self.limits = sandbox_limits or SandboxLimits()
        self.rows = _read_jsonl(self.root / self.SPLITS[split])
        self._ids = self._split_ids()

    def _split_ids(self) -> list[str]:
        return [str(i) for i in range(len(self.rows))]

    def task_ids(self) -> list[str]:
        return list(self._ids)

    def data_files(self) -> dict[str, Path]:
        return {self.SPLITS[self.split]: self.root / self.SPLITS[self.split]}

    def _row(self, task_id: str) -> dict[str, Any]:
        tid = str(task_id)
        if not tid.isdigit() or int(tid) >= len(self.rows):
            raise EnvError(f"unknown {self.name} task id {task_id!r} for split {self.split!r}; expected a row index "
                           f"'0'..'{len(self.rows) - 1}' of {self.SPLITS[self.split]}")
        return self.rows[int(tid)]

    def start(self, task_id: str) -> MathEpisode:
        row = self._row(task_id)
        return MathEpisode(str(int(task_id)), self._goal(row), self._target(row), self.limits, self.action_timeout)

    def task_info(self, task_id: str) -> dict[str, Any]:
        return {"target": self._target(self._row(task_id))}

    def _goal(self, row: dict[str, Any]) -> str:
        raise NotImplementedError

    def _target(self, row: dict[str, Any]) -> str:
        raise NotImplementedError


class GSM8KEnv(_MathLikeEnv):
    """Grade-school math word problems (numeric answers)."""

    name = "gsm8k"
    answer_type = "number"
    SPLITS: ClassVar[dict[str, str]] = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}

    def _goal(self, row: dict[str, Any]) -> str:
        return row["question"]

    def _target(self, row: dict[str, Any]) -> str:
        return row["answer"].split("####")[-1].strip().replace(",", "")


class MATHEnv(_MathLikeEnv):
    """Competition math (Hendrycks MATH); answers may be symbolic."""

    name = "math"
    answer_type = "text"
    SPLITS: ClassVar[dict[str, str]] = {"train": "math/math_test5000.jsonl",
                                        "test5000": "math/math_test5000.jsonl",
                                        "test": "math/math500_test.jsonl"}

    def _split_ids(self) -> list[str]:
        if self.split == "train":
            return [str(i) for i, row in enumerate(self.rows) if row.get("math500_unique_id") is None]
        return super()._split_ids()

    def _goal(self, row: dict[str, Any]) -> str:
        return row["problem"]

    def _target(self, row: dict[str, Any]) -> str:
        return row["answer"]

    def task_info(self, task_id: str) -> dict[str, Any]:
        row = self._row(task_id)
        return {"target": row["answer"], "level": row.get("level"), "subject": row.get("subject", row.get("type"))}
