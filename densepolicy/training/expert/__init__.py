"""Expert trajectories for the warm start: one expert per env, replayed through `envs` as the agent runs.

    plan = expert_plan(env, task_id, options)          # ExpertPlan(messages, source) or None
    trajectory = replay(env, task_id, plan.messages)     # the agent's prompt + real observations
    ok = accepted(env, task_id, trajectory)              # success (+ the printed gold for GSM8K)

Experts: GSM8K -> `gsm8k` (calculator annotations as a program), MATH -> `math_expert` (boxed answers
a sympy program prints), BabyAI -> `babyai` (high-level plan, else BabyAIBot), ALFWorld -> `alfworld`
(ALFWorld's handcoded expert), registered in `EXPERTS` by env name. The dataset builder is
`densepolicy.training.expert_data`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from densepolicy.training.expert.replay import ExpertPlan, Replay, replay
from envs.base import Env


@dataclass(frozen=True)
class ExpertOptions:
    """Knobs of the experts (the builder fills them from its config's fields of the same names)."""

    babyai_train_seeds: int = 25
    babyai_search_budget: int = 60
    babyai_max_high_level_actions: int = 12
    babyai_bot: bool = False
    babyai_bot_timeout_s: float = 10.0
    babyai_bot_max_actions: int = 12
    alfworld_max_steps: int = 40


@dataclass(frozen=True)
class Expert:
    """An env's expert: how it plans (one task, or a batch at once), what else a success must show, and how
    many tasks an env thread tries together."""

    plan: Callable[[Env, str, ExpertOptions], ExpertPlan | None] | None = None
    """The messages for one task (None: the expert plans batches only)."""
    plans: Callable[[Env, Sequence[str], ExpertOptions], list[ExpertPlan | None]] | None = None
    """The messages for a batch of tasks at once (BabyAI runs its bot once per batch); None: task by task."""
    check: Callable[[Env, str, Replay], bool] | None = None
    """What a successful replay must also show to be kept (math: the program printed the gold answer)."""
    batch: int = 1
    """Tasks per env thread tried together."""
    train_env_kwargs: Callable[[ExpertOptions], dict[str, Any]] | None = None
    """Arguments of the train env it draws tasks from (`load_env(..., **kwargs)`); None: none."""


def _gsm8k_plan(env: Env, task_id: str, options: ExpertOptions) -> ExpertPlan | None:
    from densepolicy.training.expert import gsm8k
    return gsm8k.expert_plan(env.rows[int(task_id)])


def _math_plan(env: Env, task_id: str, options: ExpertOptions) -> ExpertPlan | None:
    from densepolicy.training.expert import math_expert
    return math_expert.expert_plan(env.rows[int(task_id)])


def _alfworld_plan(env: Env, task_id: str, options: ExpertOptions) -> ExpertPlan | None:
    from densepolicy.training.expert import alfworld
    return alfworld.expert_plan(env.game_file(task_id), options.alfworld_max_steps)


def _babyai_plans(env: Env, task_ids: Sequence[str], options: ExpertOptions) -> list[ExpertPlan | None]:
    from densepolicy.training.expert import babyai
    return babyai.expert_plans(task_ids, options.babyai_search_budget, options.babyai_max_high_level_actions,
                               options.babyai_bot, options.babyai_bot_timeout_s, options.babyai_bot_max_actions)


def _printed_gold(env: Env, task_id: str, trajectory: Replay) -> bool:
    from densepolicy.training.expert.gsm8k import printed_gold
    return printed_gold(trajectory, env.task_info(task_id)["target"])


EXPERTS: dict[str, Expert | None] = {
    "gsm8k": Expert(plan=_gsm8k_plan, check=_printed_gold, batch=8),
    "math": Expert(plan=_math_plan, check=_printed_gold, batch=8),
    "alfworld": Expert(plan=_alfworld_plan, batch=2),  # ALFWorld tasks are slow
    "babyai": Expert(plans=_babyai_plans, batch=8,
                     train_env_kwargs=lambda options: {"train_seeds_per_level": options.babyai_train_seeds}),
}
"""Every registered env (`envs.ENV_SPECS`) -> its expert, or None where it has none (no warm-start data);
in build order. A new env is one entry here (tests/unit/envs/test_env_spec.py checks that every env has one)."""

EXPERT_ENVS = tuple(name for name, expert in EXPERTS.items() if expert is not None)


def expert_for(env_name: str) -> Expert:
    """The expert of `env_name`; ValueError naming it and the envs that have one otherwise."""
    expert = EXPERTS.get(env_name)
    if expert is None:
        raise ValueError(f"no expert for env {env_name!r}; expected one of {list(EXPERT_ENVS)}")
    return expert


def expert_plan(env: Env, task_id: str, options: ExpertOptions = ExpertOptions()) -> ExpertPlan | None:
    """The expert's messages for `task_id` of `env`, or None if it has none."""
    expert = expert_for(env.name)
    if expert.plan is None:
        return expert_plans(env, [task_id], options)[0]
    return expert.plan(env, task_id, options)


def expert_plans(env: Env, task_ids: Sequence[str], options: ExpertOptions = ExpertOptions(),
                 map_fn: Callable = map) -> list[ExpertPlan | None]:
    """`expert_plan` of several tasks (an expert with `plans` plans them at once; others use `map_fn`)."""
    expert = expert_for(env.name)
    if expert.plans is not None:
        return expert.plans(env, task_ids, options)
    plan = expert.plan
    return list(map_fn(lambda task_id: plan(env, task_id, options), task_ids))


def accepted(env: Env, task_id: str, trajectory: Replay) -> bool:
    """The replay ended in success (and passes the expert's `check`: for math, the program printed the gold)."""
    if not trajectory.success:
        return False
    expert = EXPERTS.get(env.name)
    return expert is None or expert.check is None or expert.check(env, task_id, trajectory)


__all__ = ["EXPERTS", "EXPERT_ENVS", "Expert", "ExpertOptions", "ExpertPlan", "Replay", "accepted", "expert_for",
           "expert_plan", "expert_plans", "replay"]
