"""What the rest of the pipeline knows about each registered environment: one `EnvSpec` per env.

    spec = env_spec("alfworld")             # EnvSpec(name="alfworld", family="alfworld", ...); EnvError if unknown
    spec = spec_for_dataset("alfworld_put") # the env a result's `dataset` column comes from, or None
    spec.task_type("pick_cool_then_place_in_recep-Mug-None-Desk-308/trial_1")   # 'cool'

The specs are plain data (no env module is imported until `load_env` or `task_type` needs it), so
post-processing and provenance can read them cheaply. Facts that belong to the layers above `envs`
(in-context examples: `agents/incontext/`; the warm start's expert: `densepolicy/training/expert/`) have
their own registry there, keyed by the same names; docs/architecture.md, "Adding an environment".
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from envs.base import EnvError

ScoreLayout = Literal["attempts", "task_types", "success"]


@dataclass(frozen=True)
class EnvSpec:
    """One registered environment."""

    name: str
    """`load_env` name; also the `dataset` of its results (with `<name>_<type>` for per-type datasets)."""
    factory: str
    """`module:Class` building the env (`Class(split=..., **kwargs)`), imported only when loaded."""
    family: str
    """Prefix of the env's own modules in envs/ (`math` -> `math_*.py`); other envs/*.py are shared."""
    packages: tuple[str, ...]
    """Packages of the family (game engine or grader) whose versions make results comparable."""
    title: str
    """Its name in score tables (`GSM8K@1`, `BabyAI`)."""
    score: ScoreLayout
    """Score layout: `attempts` = acc@t over answer attempts (math table); `task_types` = success per task
    type and their macro mean (embodied table); `success` = one success rate (a column of the embodied table)."""
    task_types: tuple[str, ...] = ()
    """Task types in table order (`task_types` layout)."""
    task_type_of: str = ""
    """`module:function` giving a task id's type (raises EnvError for an id it does not know); '' = none."""
    train_split: str = "train"
    """The split tree sampling and the warm start's expert draw tasks from."""
    evaluation_splits: tuple[str, ...] = ()
    """Splits that hold evaluation tasks (never used for training data)."""
    content_field: str = ""
    """Field of `env.rows[int(task_id)]` holding a task's content (its question); '' = the task id is its content."""
    evaluation_row_filters: tuple[tuple[str, str], ...] = ()
    """(split, field) pairs: of that evaluation split only the rows whose `field` is set are evaluation tasks
    (MATH's `test5000` holds the MATH-500 rows, marked by `math500_unique_id`, and others)."""

    def task_type(self, task_id: str) -> str:
        """The task type of `task_id` by the env's own table; "" if the env has none or does not know the id."""
        if not self.task_type_of:
            return ""
        module_name, function = self.task_type_of.split(":")
        classify: Callable[[str], str] = getattr(importlib.import_module(module_name), function)
        try:
            return classify(task_id)
        except EnvError:
            return ""

    def has_dataset(self, dataset: str) -> bool:
        """`dataset` is this env's: its name, or `<name>_<suffix>` for an env with task types (`alfworld_put`)."""
        return dataset == self.name or bool(self.task_types) and dataset.startswith(self.name + "_")


ENV_SPECS: dict[str, EnvSpec] = {spec.name: spec for spec in (
    EnvSpec(name="gsm8k", factory="envs.math_env:GSM8KEnv", family="math", packages=("math-verify", "sympy"),
            title="GSM8K", score="attempts", evaluation_splits=("test",), content_field="question"),
    EnvSpec(name="math", factory="envs.math_env:MATHEnv", family="math", packages=("math-verify", "sympy"),
            title="MATH", score="attempts", evaluation_splits=("test", "test5000"), content_field="problem",
            evaluation_row_filters=(("test5000", "math500_unique_id"),)),
    EnvSpec(name="alfworld", factory="envs.alfworld_env:ALFWorldEnv", family="alfworld",
            packages=("alfworld", "textworld"), title="ALFWorld", score="task_types",
            task_types=("put", "examine", "clean", "cool", "heat", "puttwo"),
            task_type_of="envs.alfworld_games:task_type", evaluation_splits=("valid_seen", "valid_unseen")),
    EnvSpec(name="babyai", factory="envs.babyai_env:BabyAIEnv", family="babyai", packages=("minigrid", "gymnasium"),
            title="BabyAI", score="success", evaluation_splits=("test", "valid")),
)}
"""The registry, in table order: name -> spec. A new env is one entry here (plus its modules)."""


def env_spec(name: str) -> EnvSpec:
    """The spec of the registered env `name`; EnvError naming it and listing the known ones otherwise."""
    if name not in ENV_SPECS:
        raise EnvError(f"unknown env {name!r}; expected one of {sorted(ENV_SPECS)} (or 'module:Factory' "
                       "for a custom env)")
    return ENV_SPECS[name]


def spec_for_dataset(dataset: str) -> EnvSpec | None:
    """The spec of the env whose results carry `dataset` (see `EnvSpec.has_dataset`); None for others."""
    return next((spec for spec in ENV_SPECS.values() if spec.has_dataset(dataset)), None)


__all__ = ["ENV_SPECS", "EnvSpec", "ScoreLayout", "env_spec", "spec_for_dataset"]
