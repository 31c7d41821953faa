"""The environment interface every task family implements (see docs/architecture.md).

    env = load_env("gsm8k", split="test")
    ep = env.start(env.task_ids()[0])
    r = ep.act("print(1+1)")        # StepResult(observation="2\n", done=False, success=False)
    child = ep.fork()               # independent copy of the live episode (no replay)
    r = ep.answer("2")              # math only: "Your answer is correct." / "Your answer is incorrect."
    ep.close()

Model-generated code is hostile input: it never runs in the worker's process. Episodes run it
in a sandbox process; `success` is decided by trusted code only.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class EnvError(ValueError):
    """Bad env name, split, task id or data: the message names the thing and the expected values."""


PROMPT_STYLES = ("compact", "original")
"""Text styles of the prompt and of the observations an env renders: `original` = the wording of the
original pipeline (docs/original.md §2.2, §4.3; `preset=paper`), `compact` = the same information in fewer tokens
(docs/deviations.md)."""


@dataclass(frozen=True)
class Tool:
    """A tool the model may call from its code: name, one-line description, Python signature, and a
    short description for the compact prompt style ('' = the first sentence of `description`)."""

    name: str
    description: str
    signature: str
    brief: str = ""


@dataclass
class StepResult:
    """Outcome of one `act` / `answer` call."""

    observation: str
    done: bool = False
    success: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Episode(abc.ABC):
    """One live attempt at one task. Not thread-safe; use from one asyncio task / thread at a time."""

    task_id: str
    goal: str
    observation: str  # initial observation ("" if none)
    done: bool = False
    success: bool = False

    @abc.abstractmethod
    def act(self, code: str) -> StepResult:
        """Run the code of one `Action: ... End Action`; never raises for bad model code."""

    def answer(self, text: str) -> StepResult:
        """Submit `Answer: text`. Envs without answers return an explanatory observation."""
        return StepResult(
            observation="This task has no answer to submit; use the tools in an Action instead.",
            done=self.done, success=self.success)

    @abc.abstractmethod
    def fork(self) -> Episode:
        """An independent episode in the same state, without replaying actions."""

    @abc.abstractmethod
    def close(self) -> None:
        """End every process this episode started. Idempotent."""

    def __enter__(self) -> Episode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Env(abc.ABC):
    """A task family on one split: lists task ids and starts episodes."""

    name: str
    split: str
    tools: list[Tool] = []
    requires_answer: bool = False  # math: True (Answer: ...); ALFWorld/BabyAI: False
    prompt_style: str = "original"  # PROMPT_STYLES; only envs with style-dependent observations (BabyAI) read it
    answer_type: str | None = None  # "number" for GSM8K, "text" for MATH

    @abc.abstractmethod
    def task_ids(self) -> list[str]:
        """Stable string ids of this split, in a fixed order (shards are contiguous slices)."""

    @abc.abstractmethod
    def start(self, task_id: str) -> Episode:
        """A fresh episode of `task_id` (any valid id of this env, even outside the split)."""

    def task_info(self, task_id: str) -> dict[str, Any]:
        """Extra per-task fields for result rows (e.g. ALFWorld `task_type`, math `target`)."""
        return {}

    def data_files(self) -> dict[str, Path]:
        """The data files this env read, by a stable name (e.g. `gsm8k/test.jsonl`), for provenance."""
        return {}

    def close(self) -> None:  # noqa: B027 - an optional hook: envs without shared resources keep the no-op
        """Release shared resources (zygote processes, ...)."""
