"""In-context example pools (written for this project): 8 for GSM8K, 1 for MATH, none elsewhere."""
from __future__ import annotations

from agents.prompts import InContextExample


def example_pool(dataset: str) -> list[InContextExample]:
    """The examples available for `dataset` (`gsm8k`, `math`; others have none)."""
    if dataset == "gsm8k":
        from agents.incontext.gsm8k import EXAMPLES
        return list(EXAMPLES)
    if dataset == "math":
        from agents.incontext.math import EXAMPLES
        return list(EXAMPLES)
    return []
