"""Task environments: GSM8K, MATH, ALFWorld (TextWorld) and BabyAI (Minigrid).

`load_env(name, split=..., data_dir=...)` is the only entry point other code needs.
"""
from __future__ import annotations

import importlib
from typing import Any

from envs.base import Env, EnvError, Episode, StepResult, Tool

# name -> "module:factory"; imported lazily so `import envs` stays cheap.
ENV_REGISTRY: dict[str, str] = {
    "gsm8k": "envs.math_env:GSM8KEnv",
    "math": "envs.math_env:MATHEnv",
    "alfworld": "envs.alfworld_env:ALFWorldEnv",
    "babyai": "envs.babyai_env:BabyAIEnv",
}


def load_env(name: str, split: str = "test", **kwargs: Any) -> Env:
    """Build the env `name` on `split`. Unknown names raise `EnvError` listing the known ones."""
    if name not in ENV_REGISTRY:
        raise EnvError(f"unknown env {name!r}; expected one of {sorted(ENV_REGISTRY)}")
    module_name, factory = ENV_REGISTRY[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, factory)(split=split, **kwargs)


__all__ = ["Env", "EnvError", "Episode", "StepResult", "Tool", "load_env", "ENV_REGISTRY"]
