"""Replay an expert's assistant messages through `envs` exactly as the agent runs them.

The prompt is the agent's training prompt (`agents.prompts.initial_messages` without in-context
examples, in the env's `prompt_style`); every observation comes from `agents.runtime.execute_generation` on a fresh episode, the
function the sampling and evaluation agents call for each step. Nothing is typed by hand.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.prompts import initial_messages
from agents.runtime import execute_generation
from envs.base import Env


@dataclass(frozen=True)
class ExpertPlan:
    """What an expert proposes for one task: the assistant messages, and which expert made them
    (e.g. `annotations`, `high_level`, `bot`, `handcoded`)."""

    messages: tuple[str, ...]
    source: str


def action_message(code: str) -> str:
    """One assistant message with one action, in the layout the instruction asks for."""
    return f"Action: {code}\nEnd Action" if "\n" not in code else f"Action:\n{code}\nEnd Action"


@dataclass
class Replay:
    """A replayed trajectory: the chat up to and including the last assistant message.

    `final_observation` is what the env answered to the last message (not part of the chat).
    `success` is the env's verdict; `steps` the number of assistant messages that were executed."""

    messages: list[dict] = field(default_factory=list)
    final_observation: str = ""
    success: bool = False
    steps: int = 0
    error: str = ""


def opening_messages(env: Env, episode) -> list[dict]:
    """The agent's prompt for a fresh episode, without in-context examples (as `WorkerContext.opening`), in
    the env's `prompt_style` (the style its observations are rendered in)."""
    return initial_messages(goal=episode.goal, observation=episode.observation, tools=env.tools,
                            requires_answer=env.requires_answer, answer_type=env.answer_type,
                            style=env.prompt_style)


def replay(env: Env, task_id: str, assistant_messages: Sequence[str]) -> Replay:
    """Run `assistant_messages` one by one on a fresh episode of `task_id`.

    Success needs the episode to end with the last message and not before (a trajectory that is done
    early, or never, is not a clean demonstration)."""
    result = Replay()
    episode = env.start(task_id)
    try:
        result.messages = opening_messages(env, episode)
        for i, text in enumerate(assistant_messages):
            outcome = execute_generation(episode, text, env.requires_answer)
            result.steps = i + 1
            result.messages.append({"role": "assistant", "content": text})
            last = i == len(assistant_messages) - 1
            if outcome.kind == "invalid":
                result.error = f"message {i} does not parse: {outcome.observation}"
                return result
            if outcome.done and not last:
                result.error = f"episode ended after message {i} of {len(assistant_messages)}"
                return result
            if last:
                result.final_observation = outcome.observation
                result.success = outcome.done and outcome.success
                if not result.success:
                    result.error = "the episode did not end in success"
            else:
                result.messages.append({"role": "user", "content": outcome.observation})
        return result
    finally:
        episode.close()
