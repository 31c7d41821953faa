"""What both agents share: the worker context, one executed step, token counting and seeds.

A step (docs/original.md §2.4): parse the generation, run it on the episode (in a thread: env calls block on
sandbox processes), and build the observation text that becomes the next user message.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agents.incontext import example_pool
from agents.parser import parse_generation
from agents.prompts import InContextExample, initial_messages
from envs.base import Env, Episode

log = logging.getLogger(__name__)
T = TypeVar("T")

FINISHED_SUFFIX = " You finished the task."
REMINDER_PREFIX = "\n*Extra reminder: "
END_ACTION = "End Action"
MESSAGE_OVERHEAD_TOKENS = 8  # chat-template tokens around one message (role header + end marker)


@dataclass(frozen=True)
class StepOutcome:
    """Result of executing one assistant message."""

    kind: str            # action / answer / invalid
    observation: str     # the next user message
    done: bool
    success: bool


def request_seed(seed: int, task_id: str, node: str) -> int:
    """Per-request sampling seed from the run seed, the task and the node (31-bit, stable across runs)."""
    digest = hashlib.sha256(f"{seed}|{task_id}|{node}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def task_rng(seed: int, task_id: str, purpose: str) -> random.Random:
    """A per-task RNG (proposals, in-context example order) independent of scheduling."""
    return random.Random(request_seed(seed, task_id, purpose))


def execute_generation(episode: Episode, text: str, requires_answer: bool) -> StepOutcome:
    """Run one generation on `episode` (blocking) and build the observation of docs/original.md §2.4."""
    parsed = parse_generation(text)
    reminder = REMINDER_PREFIX + parsed.reminder if parsed.reminder else ""
    if parsed.kind == "invalid":
        return StepOutcome("invalid", parsed.feedback, episode.done, episode.success)
    if parsed.kind == "answer":
        result = episode.answer(parsed.content)
        # the original reminds of the ignored extra answers only when the answer is incorrect
        return StepOutcome("answer", result.observation + ("" if result.success else reminder),
                           result.done, result.success)
    result = episode.act(parsed.content)
    observation = result.observation + reminder
    if not requires_answer and result.success:  # the original: only when the task is solved
        observation += FINISHED_SUFFIX
    return StepOutcome("action", observation, result.done, result.success)


def restore_end_action(text: str, finish_reason: str, stop_reason: Any = None) -> str:
    """Put back the 'End Action' that our stop string cut off, so the stored message is what the model
    generated: the server returns the text up to the stop string with the whitespace the model wrote before
    it, and 'End Action' follows that text directly. Only when the server says that stop string ended the
    choice (vLLM's `stop_reason`); a generation that ended on the model's own end token (`stop_reason` None)
    is stored as it is."""
    if (finish_reason == "stop" and stop_reason == END_ACTION and "Action:" in text
            and END_ACTION not in text and "Answer:" not in text):
        return text + END_ACTION
    return text


def generated_text(res: Any, index: int = 0) -> str:
    """The stored assistant message of choice `index` of a `ChatResult` (see `restore_end_action`)."""
    stop_reasons = getattr(res, "stop_reasons", None) or [None] * len(res.texts)
    return restore_end_action(res.texts[index], res.finish_reasons[index], stop_reasons[index])


class TokenCounter:
    """Counts prompt tokens with the model's tokenizer (or ~4 characters per token without one)."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def for_model_dir(cls, model_dir: Any) -> TokenCounter:
        """Load the tokenizer of a local model directory (falls back to the estimate on failure)."""
        try:
            from transformers import AutoTokenizer
            return cls(AutoTokenizer.from_pretrained(str(model_dir)))
        except Exception as exc:  # noqa: BLE001 - any tokenizer problem only costs accuracy
            log.warning("no tokenizer for %s (%s); estimating 4 characters per token", model_dir, exc)
            return cls(None)

    def text(self, text: str) -> int:
        """Tokens of a plain text."""
        if self.tokenizer is None:
            return len(text) // 4 + 1
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def messages(self, messages: Sequence[dict]) -> int:
        """Tokens of a whole chat with the generation prompt."""
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
        return sum(self.text(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages) + MESSAGE_OVERHEAD_TOKENS


@dataclass
class WorkerContext:
    """Everything the agents need, shared by the tasks of one worker."""

    cfg: Any                        # densepolicy.sampling.config.SamplerConfig (a layer above: not imported)
    env: Env
    client: Any                     # densepolicy.serving.llm_client.LLMClient (or a test double with `chat`)
    context_length: int
    stop: list[str]
    counter: TokenCounter = field(default_factory=TokenCounter)
    executor: ThreadPoolExecutor | None = None
    examples: list[InContextExample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(self.cfg.env_threads, thread_name_prefix="env")
        if not self.examples:
            self.examples = example_pool(self.cfg.env if ":" not in self.cfg.env else self.cfg.dataset)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking env call in the worker's env thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def task_examples(self, task_id: str, draw: str = "") -> list[InContextExample]:
        """`in_context_number` examples in a per-task random order (seeded; docs/original.md §2.1); `draw`
        names another independent draw of the same task (the tree's first-step label with
        `incontext_draw=first_step`)."""
        n = min(self.cfg.in_context_number, len(self.examples))
        purpose = f"incontext|{draw}" if draw else "incontext"
        return task_rng(self.cfg.seed, task_id, purpose).sample(self.examples, n) if n else []

    def opening(self, episode: Episode, task_id: str, draw: str = "") -> tuple[list[dict], list[dict]]:
        """(messages with in-context examples, training prompt without them) for a fresh episode."""
        kwargs = dict(goal=episode.goal, observation=episode.observation, tools=self.env.tools,
                      requires_answer=self.env.requires_answer, answer_type=self.env.answer_type,
                      style=self.cfg.prompt_style)
        return (initial_messages(examples=self.task_examples(task_id, draw), **kwargs), initial_messages(**kwargs))

    def completion_budget(self, prompt_tokens: int) -> int:
        """max_tokens for a prompt of this size, or 0 if the context is exhausted."""
        free = self.context_length - prompt_tokens
        if free < self.cfg.min_completion_tokens:
            return 0
        return min(self.cfg.max_tokens, free)
