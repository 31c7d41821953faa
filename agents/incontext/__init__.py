"""In-context example pools (written for this project): 8 for GSM8K, 1 for MATH, none elsewhere."""
from __future__ import annotations

import importlib

from agents.prompts import InContextExample

EXAMPLE_POOLS: dict[str, str | None] = {
    "gsm8k": "agents.incontext.gsm8k",
    "math": "agents.incontext.math",
    "alfworld": None,
    "babyai": None,
}
"""Every registered env (`envs.ENV_SPECS`) -> the module whose `EXAMPLES` are its pool, or None where it has
none. A new env is one entry here (tests/unit/envs/test_env_spec.py checks that every env has one)."""


def example_pool(dataset: str) -> list[InContextExample]:
    """The examples available for `dataset` (`gsm8k`, `math`; others, custom envs included, have none)."""
    module = EXAMPLE_POOLS.get(dataset)
    return list(importlib.import_module(module).EXAMPLES) if module else []
