"""Task environments: GSM8K, MATH, ALFWorld (TextWorld) and BabyAI (Minigrid).

`load_env(name, split=..., data_dir=...)` is the only entry point other code needs.
"""
from __future__ import annotations

import importlib
from typing import Any

from envs.base import PROMPT_STYLES, Env, EnvError, Episode, StepResult, Tool

# name -> "module:factory"; imported lazily so `import envs` stays cheap.
ENV_REGISTRY: dict[str, str] = {
    "gsm8k": "envs.math_env:GSM8KEnv",
    "math": "envs.math_env:MATHEnv",
    "alfworld": "envs.alfworld_env:ALFWorldEnv",
    "babyai": "envs.babyai_env:BabyAIEnv",
}


def load_env(name: str, split: str = "test", prompt_style: str = "original", **kwargs: Any) -> Env:
    """Build the env `name` on `split`, rendering observations in `prompt_style` (PROMPT_STYLES; only
    BabyAI's differ). Unknown names or styles raise `EnvError` listing the known ones."""
    if name not in ENV_REGISTRY:
        raise EnvError(f"unknown env {name!r}; expected one of {sorted(ENV_REGISTRY)}")
    module_name, factory = ENV_REGISTRY[name].split(":")
    module = importlib.import_module(module_name)
    return set_prompt_style(getattr(module, factory)(split=split, **kwargs), prompt_style)


def set_prompt_style(env: Env, prompt_style: str) -> Env:
    """Make `env` render the observations of episodes it starts from now on in `prompt_style`; returns it."""
    if prompt_style not in PROMPT_STYLES:
        raise EnvError(f"unknown prompt style {prompt_style!r}; expected one of {list(PROMPT_STYLES)}")
    env.prompt_style = prompt_style
    return env


__all__ = ["Env", "EnvError", "Episode", "PROMPT_STYLES", "StepResult", "Tool", "load_env", "set_prompt_style",
           "ENV_REGISTRY"]
