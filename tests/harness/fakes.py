"""Deterministic stand-ins for the agent tests: a scripted math-like env and a scripted LLM.

`ScriptedMathEnv` implements the envs.base interface in-process (no sandbox): the state of an
episode is the list of actions it ran; `fork()` copies it. Class counters record starts, forks,
acts and closes so tests can check that the sampler forks instead of replaying.
`scripted_reply(messages, request)` is a pure function of the last message, the request seed, the
temperature and the choice index, so a rerun (or a resumed run) gets the same texts.
"""
from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from envs.base import Env, Episode, StepResult

COUNTS: dict[str, int] = {"start": 0, "fork": 0, "act": 0, "answer": 0, "close": 0}
_LOCK = threading.Lock()


def _count(key: str) -> None:
    with _LOCK:
        COUNTS[key] += 1


def reset_counts() -> None:
    with _LOCK:
        for key in COUNTS:
            COUNTS[key] = 0


class ScriptedEpisode(Episode):
    def __init__(self, task_id: str, target: str, state: list[str] | None = None) -> None:
        self.task_id = task_id
        self.goal = f"Find the secret number of task {task_id}."
        self.observation = ""
        self.target = target
        self.state = list(state or [])
        self.done = self.success = False
        self.closed = False

    def act(self, code: str) -> StepResult:
        _count("act")
        assert not self.closed, "act on a closed episode"
        if self.done:
            return StepResult("The episode is over.", True, self.success)
        self.state.append(code)
        return StepResult(f"step {len(self.state)}: {code.strip()[:40]} -> {len(''.join(self.state)) % 97}\n")

    def answer(self, text: str) -> StepResult:
        _count("answer")
        assert not self.closed, "answer on a closed episode"
        if self.done:
            return StepResult("The episode is over.", True, self.success)
        self.state.append("answer:" + text)
        if text.strip() == self.target:
            self.done = self.success = True
            return StepResult("Your answer is correct.", True, True)
        return StepResult("Your answer is incorrect.", False, False)

    def fork(self) -> ScriptedEpisode:
        _count("fork")
        assert not self.closed, "fork of a closed episode"
        child = ScriptedEpisode(self.task_id, self.target, self.state)
        child.done, child.success = self.done, self.success
        return child

    def close(self) -> None:
        if not self.closed:
            _count("close")
            self.closed = True


class ScriptedMathEnv(Env):
    """Tasks "0".."N-1" (N = 12 unless `size` is given); the answer of task i is str(i % 3)."""

    name = "scripted"
    requires_answer = True
    answer_type = "number"
    tools: list = []

    def __init__(self, split: str = "train", size: int = 12, **_: Any) -> None:
        self.split = split
        self.size = size

    def task_ids(self) -> list[str]:
        return [str(i) for i in range(self.size)]

    def start(self, task_id: str) -> ScriptedEpisode:
        _count("start")
        return ScriptedEpisode(task_id, str(int(task_id) % 3))

    def task_info(self, task_id: str) -> dict[str, Any]:
        return {"target": str(int(task_id) % 3), "task_type": "even" if int(task_id) % 2 == 0 else "odd"}


def _unit(*parts: Any) -> float:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def scripted_reply(messages: list[dict[str, Any]], request: dict[str, Any]) -> str:
    """A reply that depends only on the conversation end, the seed, the temperature and the choice."""
    temperature = float(request.get("temperature") or 0.0)
    key = (messages[-1]["content"], len(messages))
    r = _unit(key) if temperature == 0 else _unit(key, request.get("seed"), temperature,
                                                   request.get("choice_index", 0))
    if r < 0.45:
        return f"Thought: I think I know it.\nAnswer: {int(r * 1000) % 3}"
    if r < 0.55:
        return "Thought: I am not sure what to do next."   # invalid: neither Action nor Answer
    return f"Thought: compute more.\nAction:\nx = {int(r * 10000)}\nprint(x)\nEnd Action"
