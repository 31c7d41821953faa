"""What `lf_args.coerce_args` does with a value, as a comparable outcome: for checking that the cached stand-in
types of `densepolicy.training.lf_fields` behave as LLaMA-Factory's own (unit and integration tests)."""
from __future__ import annotations

from typing import Any

from densepolicy.config import ConfigError
from densepolicy.training.lf_args import coerce_args

# Values a YAML file or a key=value override can give a field: booleans, numbers, numeric and choice text, YAML 1.1's
# no/yes, empty text, null, lists, mappings and NaN.
PROBE_VALUES: list[Any] = [True, False, 0, 1, 2, 2.5, "2", "1e-6", "no", "NO", "yes", "steps", "sft", "interleave",
                           "x", "", None, [1, 2], ["a"], {"a": 1}, float("nan")]


def coerce_outcome(fields: dict[str, Any], key: str, value: Any, raw: str | None = None) -> tuple[str, Any]:
    """("ok", (type name, repr)) of the converted value, or ("error", the one-line message)."""
    try:
        got = coerce_args({key: value}, fields, "test", {key: raw} if raw is not None else None)[key]
        return "ok", (type(got).__name__, repr(got))
    except ConfigError as exc:
        return "error", str(exc)
