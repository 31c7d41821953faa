"""Task environments: GSM8K, MATH, ALFWorld (TextWorld) and BabyAI (Minigrid).

`load_env(name, split=..., data_dir=...)` builds an env; `env_spec(name)` says what the other stages need to
know about it (envs/spec.py: family and packages, score layout, task types, splits).
"""
from __future__ import annotations

import importlib
from typing import Any

from envs.base import PROMPT_STYLES, Env, EnvError, Episode, StepResult, Tool
from envs.spec import ENV_SPECS, EnvSpec, env_spec, spec_for_dataset



def load_env(name: str, split: str = "test", prompt_style: str = "original", **kwargs: Any) -> Env:
    """Build the env `name` (a key of ENV_SPECS) on `split`, rendering observations in `prompt_style`
    (PROMPT_STYLES; only BabyAI's differ). Unknown names or styles raise `EnvError` listing the known ones.
    The env's module is imported only here, so `import envs` stays cheap."""
    module_name, factory = env_spec(name).factory.split(":")
    module = importlib.import_module(module_name)
    return set_prompt_style(getattr(module, factory)(split=split, **kwargs), prompt_style)


def set_prompt_style(env: Env, prompt_style: str) -> Env:
    """Make `env` render the observations of episodes it starts from now on in `prompt_style`; returns it."""
    if prompt_style not in PROMPT_STYLES:
        raise EnvError(f"unknown prompt style {prompt_style!r}; expected one of {list(PROMPT_STYLES)}")
    env.prompt_style = prompt_style
    return env


__all__ = ["Env", "EnvError", "Episode", "PROMPT_STYLES", "StepResult", "Tool", "load_env", "set_prompt_style",
           "ENV_SPECS", "EnvSpec", "env_spec", "spec_for_dataset"]
