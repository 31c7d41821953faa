"""BabyAI expert: a verified high-level plan (`babyai_plan`) when one is found, else BabyAIBot's
primitive actions (`babyai_bot`, in one subprocess per batch with a wall-clock limit per task)."""
from __future__ import annotations

from collections.abc import Sequence

from densepolicy.training.expert.babyai_bot import bot_runs
from densepolicy.training.expert.babyai_plan import high_level_plan, tool_call
from densepolicy.training.expert.replay import ExpertPlan, action_message
from envs.babyai_levels import parse_task_id


def expert_plans(task_ids: Sequence[str], search_budget: int = 60, max_actions: int = 12, bot: bool = False,
                 bot_timeout_s: float = 10.0, bot_max_actions: int = 12) -> list[ExpertPlan | None]:
    """Tool-call messages for each `level:seed` (None where neither expert solves it)."""
    plans: list[ExpertPlan | None] = []
    for task_id in task_ids:
        level, seed = parse_task_id(task_id)
        plan = high_level_plan(level, seed, budget=search_budget, max_actions=max_actions)
        plans.append(None if plan is None else
                     ExpertPlan(tuple(action_message(tool_call(a)) for a in plan), "high_level"))
    missing = [t for t, p in zip(task_ids, plans) if p is None]
    if not bot or not missing:
        return plans
    runs = bot_runs(missing, bot_timeout_s, bot_max_actions)
    for i, task_id in enumerate(task_ids):
        run = runs.get(task_id)
        if plans[i] is None and run and run["success"] and "done" not in run["actions"]:
            plans[i] = ExpertPlan(tuple(action_message(tool_call(a)) for a in run["actions"]), "bot")
    return plans
