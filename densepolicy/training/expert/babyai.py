"""BabyAI expert: a verified high-level plan (`babyai_plan`) when one is found, else BabyAIBot's
primitive actions (`babyai_bot`, in a subprocess with a wall-clock limit)."""
from __future__ import annotations

from densepolicy.training.expert.babyai_bot import bot_runs
from densepolicy.training.expert.babyai_plan import high_level_plan, tool_call
from densepolicy.training.expert.replay import ExpertPlan, action_message
from envs.babyai_levels import parse_task_id


def expert_plan(task_id: str, search_budget: int = 400, max_actions: int = 12, bot: bool = True,
                bot_timeout_s: float = 30.0, bot_max_actions: int = 12) -> ExpertPlan | None:
    """Tool-call messages for `level:seed`; None when neither expert solves it."""
    level, seed = parse_task_id(task_id)
    plan = high_level_plan(level, seed, budget=search_budget, max_actions=max_actions)
    if plan is not None:
        return ExpertPlan(tuple(action_message(tool_call(a)) for a in plan), "high_level")
    if not bot:
        return None
    run = bot_runs([task_id], bot_timeout_s, bot_max_actions).get(task_id)
    if not run or not run["success"] or "done" in run["actions"]:
        return None
    return ExpertPlan(tuple(action_message(tool_call(a)) for a in run["actions"]), "bot")
