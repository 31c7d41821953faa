"""Expert trajectories for the warm start: one expert per env, replayed through `envs` as the agent runs.

    plan = expert_plan(env, task_id, options)          # ExpertPlan(messages, source) or None
    trajectory = replay(env, task_id, plan.messages)     # the agent's prompt + real observations
    ok = accepted(env, task_id, trajectory)              # success (+ the printed gold for GSM8K)

Experts: GSM8K -> `gsm8k` (calculator annotations as a program), MATH -> `math_expert` (boxed answers
a sympy program prints), BabyAI -> `babyai` (high-level plan, else BabyAIBot), ALFWorld -> `alfworld`
(ALFWorld's handcoded expert). The dataset builder is `densepolicy.training.expert_data`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from densepolicy.training.expert.replay import ExpertPlan, Replay, replay
from envs.base import Env

EXPERT_ENVS = ("gsm8k", "math", "alfworld", "babyai")


@dataclass(frozen=True)
class ExpertOptions:
    """Knobs of the experts (the builder fills them from its config)."""

    babyai_search_budget: int = 60
    babyai_max_high_level_actions: int = 12
    babyai_bot: bool = False
    babyai_bot_timeout_s: float = 10.0
    babyai_bot_max_actions: int = 12
    alfworld_max_steps: int = 40


def expert_plan(env: Env, task_id: str, options: ExpertOptions = ExpertOptions()) -> ExpertPlan | None:
    """The expert's messages for `task_id` of `env`, or None if it has none."""
    if env.name == "gsm8k":
        from densepolicy.training.expert import gsm8k
        return gsm8k.expert_plan(env.rows[int(task_id)])
    if env.name == "math":
        from densepolicy.training.expert import math_expert
        return math_expert.expert_plan(env.rows[int(task_id)])
    if env.name == "babyai":
        return expert_plans(env, [task_id], options)[0]
    if env.name == "alfworld":
        from densepolicy.training.expert import alfworld
        return alfworld.expert_plan(env.game_file(task_id), options.alfworld_max_steps)
    raise ValueError(f"no expert for env {env.name!r}; expected one of {list(EXPERT_ENVS)}")


def expert_plans(env: Env, task_ids: Sequence[str], options: ExpertOptions = ExpertOptions(),
                 map_fn: Callable = map) -> list[ExpertPlan | None]:
    """`expert_plan` of several tasks (BabyAI runs its bot once for the batch; others use `map_fn`)."""
    if env.name == "babyai":
        from densepolicy.training.expert import babyai
        return babyai.expert_plans(task_ids, options.babyai_search_budget, options.babyai_max_high_level_actions,
                                   options.babyai_bot, options.babyai_bot_timeout_s, options.babyai_bot_max_actions)
    return list(map_fn(lambda task_id: expert_plan(env, task_id, options), task_ids))


def accepted(env: Env, task_id: str, trajectory: Replay) -> bool:
    """The replay ended in success (and, for math, the program printed the gold answer)."""
    if not trajectory.success:
        return False
    if env.name in ("gsm8k", "math"):
        from densepolicy.training.expert.gsm8k import printed_gold
        return printed_gold(trajectory, env.task_info(task_id)["target"])
    return True


__all__ = ["EXPERT_ENVS", "ExpertOptions", "ExpertPlan", "Replay", "accepted", "expert_plan", "expert_plans", "replay"]
