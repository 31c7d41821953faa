"""`codeact_agent`: the evaluation agent (docs/original.md §2.5), greedy by default.

One task = one trajectory: generate, parse, execute, append [assistant, observation], until the
episode is done, `max_steps` / `max_turn` is reached, or the context is full (its own outcome,
`context_overflow`). `turns` counts answer attempts including the correct one, so accuracy @t for
t = 1..10 ("Max Trial", with correctness feedback) comes from one run (docs/original.md §2.7).

Its own settings (`AgentSettings`, the sampler config's `agent` section: `agent.max_turn=1` or
`max_turn=1`) are ignored by the tree sampler; the shared ones (`max_steps`, `top_p`, ...) are the sampler's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from agents.runtime import WorkerContext, execute_generation, generated_text, request_seed
from densepolicy.config import Range, check_ranges, help_field
from densepolicy.serving.llm_client import ContextLengthError


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """The settings only `codeact_agent` uses: their one definition (default, help, range)."""

    max_turn: int | None = help_field(None, help="Answer-attempt limit (math 10); the tree ignores it.")
    temperature: float = help_field(
        0.0, help="Sampling temperature (0 = greedy evaluation); the tree's temperatures are tree.temperature_cycle.")

    def __post_init__(self) -> None:
        check_ranges(self, AGENT_RANGES)


AGENT_RANGES: dict[str, Range] = {"max_turn": (1, None, False), "temperature": (0, None, False)}
"""The range of every numeric agent setting (densepolicy.config.check_ranges)."""


async def run_agent_task(ctx: WorkerContext, task_id: str) -> dict[str, Any]:
    """Run one task; returns the shard-CSV row fields of docs/formats.md."""
    cfg = ctx.cfg
    started = time.monotonic()
    episode = await ctx.blocking(ctx.env.start, task_id)
    try:
        messages, _ = ctx.opening(episode, task_id)
        context_tokens = ctx.counter.messages(messages)
        steps = turns = prompt_tokens = completion_tokens = 0
        status, success, log_infos = "", False, []
        while True:
            budget = ctx.completion_budget(context_tokens)
            if budget == 0:
                status = "context_overflow"
                log_infos.append(f"context length limitation {ctx.context_length} exceeded")
                break
            try:
                res = await ctx.client.chat(
                    messages, n=1, temperature=cfg.agent.temperature, top_p=cfg.top_p, stop=ctx.stop,
                    max_tokens=budget, seed=request_seed(cfg.seed, task_id, f"step{steps}"))
            except ContextLengthError as exc:
                status = "context_overflow"
                log_infos.append(str(exc))
                break
            text = generated_text(res, 0)
            prompt_tokens += res.prompt_tokens
            completion_tokens += res.completion_tokens
            outcome = await ctx.blocking(execute_generation, episode, text, ctx.env.requires_answer)
            messages = messages + [{"role": "assistant", "content": text},
                                   {"role": "user", "content": outcome.observation}]
            context_tokens = (res.prompt_tokens + res.completion_tokens + ctx.counter.text(outcome.observation)
                              + 2 * 8)
            steps += 1
            if outcome.kind == "answer":
                turns += 1
            if outcome.done:
                success = outcome.success
                status = "success" if success else "fail"
                break
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                status = "max_steps"
                break
            if cfg.agent.max_turn is not None and turns >= cfg.agent.max_turn:
                status = "max_turn"
                break
        if status != "success":
            log_infos.append(f"ended with {status} after {steps} steps")
        return {"status": status, "score": 1.0 if success else 0.0, "turns": turns, "steps": steps,
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "wall_time_s": round(time.monotonic() - started, 3), "history": messages,
                "extra": {"log_infos": log_infos}}
    finally:
        await ctx.blocking(episode.close)
