"""LLaMA-Factory arguments as LLaMA-Factory's dataclasses type them, and the learning-rate warm-up.

LLaMA-Factory builds its argument dataclasses from the YAML with no type conversion, so a value of the
wrong type fails deep inside it (`False is not a valid IntervalStrategy` for ``eval_strategy=no``, which
YAML 1.1 reads as a boolean). `coerce_args` converts every value to the type of its field, or refuses it
with a one-line `ConfigError` naming the key:

    fields = llamafactory_fields()   # densepolicy.training.lf_fields: the types of its dataclasses (cached)
    values, raw = parse_lf_overrides(["eval_strategy=no", "learning_rate=1e-6", "bf16=false"])
    coerce_args(values, fields, "command line", raw)  # {'eval_strategy': 'no', 'learning_rate': 1e-06, 'bf16': False}

`translate_warmup` keeps the meaning the paper's recipe was written for: ``warmup_ratio`` is a fraction of
the run. transformers 5 copies the deprecated ``warmup_ratio`` into ``warmup_steps``, which counts steps
when it is >= 1, so ``warmup_ratio: 1.0`` became a single warm-up step.
"""
from __future__ import annotations

import enum
import math
import types
from typing import Any, Literal, Union, get_args, get_origin

from densepolicy.config import ConfigError, split_override

# warmup_steps below 1 is a ratio: transformers warms up for ceil(total_steps * ratio) steps. This ratio
# gives every step of any run shorter than a billion steps, i.e. "warm up over the whole run".
WHOLE_RUN_WARMUP = 1.0 - 1e-9

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class _Mismatch(Exception):
    """A value does not fit a type; the message says what the type expects."""


def parse_lf_overrides(overrides: list[str], source: str = "command line") -> tuple[dict[str, Any], dict[str, str]]:
    """``["k=v", ...]`` -> ({key: value parsed as a YAML scalar}, {key: the text as typed}).

    The typed text is kept because YAML 1.1 turns `no`/`off`/`yes` into booleans, which string and
    enum keys must get back as text.
    """
    values: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for item in overrides:
        key, value, text = split_override(item, source)
        values[key], raw[key] = value, text
    return values, raw


def merge_overrides(args: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`args` updated with `update`; a warm-up given on the command line replaces the file's warm-up
    (``warmup_steps`` and ``warmup_ratio`` are two spellings of one setting)."""
    out = dict(args)
    if "warmup_steps" in update:
        out.pop("warmup_ratio", None)
    if "warmup_ratio" in update:
        out.pop("warmup_steps", None)
    out.update(update)
    return out


def coerce_args(args: dict[str, Any], fields: dict[str, Any], source: str,
                raw: dict[str, str] | None = None) -> dict[str, Any]:
    """`args` with each value converted to its LLaMA-Factory field's type.

    Booleans accept true/false/yes/no/on/off/1/0; integers and floats accept numbers and numeric text
    (`1e-6`, `1e3`); strategy/scheduler keys must be one of their choices (`no` stays the text "no");
    string keys get the text as typed (`raw`). Keys without a known field are left as they are. Raises
    `ConfigError` naming the first key whose value cannot be converted.
    """
    raw = raw or {}
    out = {}
    for key, value in args.items():
        if key not in fields:
            out[key] = value
            continue
        try:
            out[key] = _convert(value, fields[key], raw.get(key))
        except _Mismatch as exc:
            raise ConfigError(f"{source}: key {key!r} expects {exc}, got {raw.get(key, value)!r}") from None
    return out


def _is_optional(tp: Any) -> tuple[bool, list[Any]]:
    if get_origin(tp) in (Union, types.UnionType):
        options = list(get_args(tp))
        return type(None) in options, [o for o in options if o is not type(None)]
    return tp is None or tp is type(None), [tp]


def _choices(tp: Any) -> list[Any] | None:
    """The allowed values of an Enum or Literal type (None for other types)."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.value for m in tp]
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    return None


def _convert(value: Any, tp: Any, raw: str | None) -> Any:
    nullable, options = _is_optional(tp)
    if value is None:
        if nullable or tp is Any:
            return None
        raise _Mismatch(_describe(options))
    # Union[SomeEnum, str] (transformers' strategies, schedulers, optimizers): the str is only for
    # spelling the enum's value, so the enum's choices decide.
    choice_sets = [c for c in (_choices(o) for o in options) if c is not None]
    if choice_sets:
        choices = [c for cs in choice_sets for c in cs]
        strict = any(isinstance(o, type) and issubclass(o, enum.Enum) for o in options)
        loose = [o for o in options if _choices(o) is None and not (strict and o is str)]
        picked = _pick_choice(value, choices, raw)
        if picked is not None:
            return picked
        for option in loose:
            try:
                return _convert_simple(value, option, raw)
            except _Mismatch:
                pass
        raise _Mismatch("one of " + ", ".join(repr(c) for c in choices))
    exact = [o for o in options if _is_exactly(value, o)]
    if exact:
        return value
    for option in _by_preference(options):
        try:
            return _convert_simple(value, option, raw)
        except _Mismatch:
            pass
    if isinstance(value, bool) and str in options:
        raise _Mismatch("a string (YAML reads an unquoted yes/no/on/off as true/false: quote it)")
    raise _Mismatch(_describe(options))


def _pick_choice(value: Any, choices: list[Any], raw: str | None) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    for choice in choices:
        if type(choice) is type(value) and choice == value:
            return choice
    candidates = []
    if raw is not None:
        candidates.append(raw.strip("'\""))
    if isinstance(value, bool):  # YAML 1.1 read no/off/false (yes/on/true) as a boolean
        candidates += list(_TRUE if value else _FALSE)
    elif isinstance(value, (str, int, float)):
        candidates.append(str(value))
    for candidate in candidates:
        for choice in choices:
            if isinstance(choice, str) and candidate.lower() == choice.lower():
                return choice
    return None


def _is_exactly(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, float)
    if tp is str:
        return isinstance(value, str)
    origin = get_origin(tp) or tp
    if origin in (list, dict) and isinstance(value, origin):
        return True
    return False


def _by_preference(options: list[Any]) -> list[Any]:
    """Try the strict types before str, which accepts almost anything."""
    order = {bool: 0, int: 1, float: 2}
    return sorted(options, key=lambda o: order.get(o, 4 if o is str else 3))


def _convert_simple(value: Any, tp: Any, raw: str | None) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _Mismatch("true/false")
    if tp is int:
        number = _number(value)
        if number is None or not float(number).is_integer():
            raise _Mismatch("an integer")
        return int(number)
    if tp is float:
        number = _number(value)
        if number is None:
            raise _Mismatch("a number")
        return float(number)
    if tp is str:
        if raw is not None and not isinstance(value, str):
            return raw.strip("'\"")
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch('a string (quote it in YAML, e.g. "no")')
    origin = get_origin(tp) or tp
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise _Mismatch("a list")
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch("a mapping")
    return value  # a type LLaMA-Factory parses itself (torch dtype, configs objects): leave it


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _describe(options: list[Any]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    parts = []
    for option in options:
        origin = get_origin(option) or option
        parts.append(names.get(option) or {list: "a list", dict: "a mapping"}.get(origin)
                     or getattr(option, "__name__", str(option)))
    return " or ".join(dict.fromkeys(parts))


def translate_warmup(args: dict[str, Any], source: str) -> dict[str, Any]:
    """Replace the deprecated ``warmup_ratio`` (a fraction of the run, 0..1) by the ``warmup_steps`` value
    that means the same under transformers 5: the ratio itself below 1, `WHOLE_RUN_WARMUP` for 1; with a
    known ``max_steps``, ``floor(ratio * max_steps)`` steps (no warm-up at all for runs under 1/ratio steps,
    where transformers' rounding up would spend the only step at learning rate 0).

    ``warmup_steps`` given directly keeps transformers' meaning (>= 1: steps, < 1: ratio).
    """
    if args.get("warmup_ratio") is None:
        args = dict(args)
        args.pop("warmup_ratio", None)
        return args
    ratio = args["warmup_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(f"{source}: key 'warmup_ratio' must be a fraction of the run in [0, 1], got {ratio!r}")
    if args.get("warmup_steps"):
        raise ConfigError(f"{source}: keys 'warmup_ratio' and 'warmup_steps' both set; keep one")
    out = {k: v for k, v in args.items() if k != "warmup_ratio"}
    max_steps = args.get("max_steps")
    if 0 < ratio < 1 and isinstance(max_steps, int) and max_steps > 0:
        # transformers rounds ceil(ratio * steps) up, so a 1-step run warmed up for 1 step and trained at lr 0
        # (the learning rate of warm-up step 0 is 0): a known run length gets floor(ratio * steps) steps.
        out["warmup_steps"] = math.floor(ratio * max_steps)
    else:
        out["warmup_steps"] = WHOLE_RUN_WARMUP if ratio >= 1 else float(ratio)
    return out
