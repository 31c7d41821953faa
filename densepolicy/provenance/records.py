"""Fields of a provenance record: the time stamps and reading a nested field."""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any


def timestamp() -> str:
    """The local time now, ISO 8601 with the UTC offset, to the second (`created` / `updated` fields)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def get_dotted(record: Mapping[str, Any], dotted: str) -> Any:
    """`record["a"]["b"]` for `dotted` "a.b" (None where a part is missing)."""
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value
