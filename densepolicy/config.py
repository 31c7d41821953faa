"""Typed configs: YAML files loaded into dataclasses, with `key=value` command-line overrides.

Every config is a dataclass whose fields carry a help text in ``field(metadata={"help": ...})``
(TRL style). Loading is strict: an unknown key, a value of the wrong type or a missing file is a
`ConfigError` whose message names the key and the file it came from.

    cfg = load_config(SamplerConfig, "configs/sampler.yaml", ["tree.base=4", "max_steps=8"])

Nested dataclasses are written as nested YAML mappings and overridden with dotted keys.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid. The message names the key and its source."""


def help_field(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with a help text; mutable defaults (list/dict) are copied per instance."""
    metadata = {"help": help}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


Range = tuple[float, float | None, bool]
"""(lowest, highest or None, lowest excluded) of a numeric setting (a list setting: of each item)."""


def check_ranges(obj: Any, ranges: dict[str, Range]) -> None:
    """Refuse (`ConfigError`, naming the key) a numeric field of `obj` outside its range; None is always allowed."""
    for key, (low, high, low_open) in ranges.items():
        value = getattr(obj, key)
        for item in (value if isinstance(value, list) else [value]):
            if item is None:
                continue
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"key {key!r} must be a finite number, got {item!r}")
            if (item <= low if low_open else item < low) or (high is not None and item > high):
                bounds = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
                raise ConfigError(f"key {key!r} must be {bounds}, got {item!r}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing files and syntax errors become `ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML in {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def split_override(item: str, source: str = "command line") -> tuple[str, Any, str]:
    """One ``key=value`` override -> (key, value parsed as a YAML scalar/list, the value's text as typed).

    The one home of the override syntax (configs here, LLaMA-Factory keys in `training.lf_args`): `--key`
    and `key-name` mean `key_name`; an empty value is ""; text YAML cannot parse stays text.
    """
    if "=" not in item:
        raise ConfigError(f"{source}: override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value, raw.strip()


def parse_overrides(overrides: list[str], source: str = "command line") -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, value, _ = split_override(item, source)
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key!r} sets a sub-key of a non-mapping value")
        node[parts[-1]] = value
    return nested


def flat_keys(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": 2}`` -> ``{"a.b": 1, "c": 2}``: the dotted key of every leaf (the reverse of
    `parse_overrides`' nesting)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def merge_dicts(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp` (with the few safe coercions YAML needs)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{source}: key {key!r} expects {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{source}: key {key!r} must be one of {list(get_args(tp))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key {key!r} expects a mapping, got {value!r}")
        return _build(tp, value, source, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key {key!r} expects a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key {key!r} expects a mapping, got {value!r}")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, k_tp, key, source): _coerce(v, v_tp, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: key {key!r} expects true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: key {key!r} expects a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: key {key!r} expects an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: key {key!r} expects a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{source}: key {key!r} expects {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    removed = getattr(cls, "REMOVED_KEYS", {})
    for key in sorted(set(data) & set(removed)):
        raise ConfigError(f"{source}: key {prefix + key!r} was removed ({removed[key]}); delete it")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix + unknown[0]!r} for {cls.__name__} "
            f"(known: {', '.join(sorted(fields))})"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name, source) for name, value in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing required key {prefix + missing[0]!r} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        if isinstance(exc, ConfigError):
            raise ConfigError(f"{source}: {exc}") from None
        raise ConfigError(f"{source}: {exc}") from None


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
    """Build `cls` from a (nested) dict with strict key and type checks."""
    return _build(cls, data, source)


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    section: str | None = None,
) -> T:
    """Load `cls` from YAML `path` (optionally one top-level `section` of it), then apply overrides.

    Errors name the file for keys from YAML and "command line" for keys from `overrides`.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
        if section is not None:
            if section not in data:
                raise ConfigError(f"{path}: no section {section!r} (sections: {', '.join(data)})")
            data = data[section] or {}
    cfg = _build(cls, data, source)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def apply_overrides(cfg: T, overrides: list[str], source: str = "command line") -> T:
    """Return a copy of `cfg` with ``key=value`` overrides applied (strictly checked)."""
    update = parse_overrides(overrides, source)
    merged = merge_dicts(to_dict(cfg), update)
    _build(type(cfg), update_only_keys(type(cfg), update, source), source)  # names bad keys as CLI's
    return _build(type(cfg), merged, source)


def update_only_keys(cls: type, update: dict[str, Any], source: str) -> dict[str, Any]:
    """Validate override keys exist (recursively) without requiring the other fields."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in update.items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key {key!r} for {cls.__name__} (known: {', '.join(sorted(names))})")
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[key]):
            update_only_keys(hints[key], value, source)
    return {}


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass → plain dict (nested)."""
    return dataclasses.asdict(cfg)


def describe(cls: type, prefix: str = "") -> str:
    """Human-readable list of every key, its type, default and help (for `--help` epilogs)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(describe(tp, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "REQUIRED")
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)
