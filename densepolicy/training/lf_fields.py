"""LLaMA-Factory's argument fields and their types, read from its dataclasses once per installed version.

`TreeDPO/train.py` checks every key and converts every value to its field's type (`lf_args.coerce_args`)
before it starts LLaMA-Factory, so a typo fails in one line. Reading the types means importing
`llamafactory.hparams`, which imports transformers and torch: ~8 CPU-seconds on an idle 2-core machine (~16
beside other work), paid again by the `llamafactory-cli` process that does the training. So the fields are cached
as JSON under `.cache/llamafactory_fields/` (`DENSEPOLICY_CACHE_DIR`), keyed by the interpreter, the versions of
LLaMA-Factory, transformers, accelerate and torch, and the size and mtime of LLaMA-Factory's `hparams/` sources
and transformers' `training_args.py`: any change reads the dataclasses again. A cache file that cannot be read
or decoded is read again from the dataclasses and rewritten (it is a cache, not a result).

    fields = llamafactory_fields()   # {"learning_rate": float, "eval_strategy": IntervalStrategy | str, ...}

The cached types are stand-ins with the same behaviour in `coerce_args`: bool/int/float/str/Any/None, unions,
`Literal[...]`, an `Enum` with the same name and values, `list`/`tuple`/`dict` (only the container matters), and
for any other class (torch.dtype, GenerationConfig, ...) an empty class of the same name, whose values
LLaMA-Factory parses itself. A field whose type has none of these shapes (a Literal of non-JSON values, an enum
whose values are not JSON) makes the whole schema uncacheable: it is then read from the dataclasses every time.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.metadata
import importlib.util
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from densepolicy.paths import cache_dir
from densepolicy.provenance.hashing import digest
from densepolicy.results_io import write_json_atomic

SCHEMA_VERSION = 1
_DISTRIBUTIONS = ("llamafactory", "transformers", "accelerate", "torch")
_SCALARS: dict[str, Any] = {"bool": bool, "int": int, "float": float, "str": str, "Any": Any, "None": type(None)}
_CONTAINERS: dict[str, type] = {"list": list, "tuple": tuple, "dict": dict}


class Uncacheable(ValueError):
    """A field type that the JSON schema cannot stand in for."""


@functools.lru_cache(maxsize=1)
def llamafactory_fields() -> dict[str, Any]:
    """{key: type annotation} of every field of LLaMA-Factory's train/export argument dataclasses, from the
    cache when it matches the installed packages (see the module docstring), else from the dataclasses.

    Raises ImportError when LLaMA-Factory is not importable (callers turn it into a clear message).
    """
    path = cache_file()
    if path is not None:
        cached = read_cache(path)
        if cached is not None:
            return cached
    fields = fields_from_dataclasses()
    if path is not None:
        try:
            write_json_atomic(path, {"schema": SCHEMA_VERSION, "fields": encode_fields(fields)})
        except (Uncacheable, OSError):  # a type without a stand-in, a read-only or full cache folder: the check
            pass                        # still works, only slower next time
    return fields


def fields_from_dataclasses() -> dict[str, Any]:
    """The fields as LLaMA-Factory's dataclasses declare them (imports `llamafactory.hparams`: seconds)."""
    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    fields: dict[str, Any] = {}
    for cls in (ModelArguments, DataArguments, FinetuningArguments, TrainingArguments, GeneratingArguments):
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - an unresolvable annotation somewhere: fall back to the raw ones
            hints = {}
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, hints.get(f.name, f.type))
    return fields


def cache_file() -> Path | None:
    """The cache file for the installed packages, or None when LLaMA-Factory is not installed (no key)."""
    spec = importlib.util.find_spec("llamafactory")  # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    sources = sorted(Path(next(iter(spec.submodule_search_locations)), "hparams").glob("*.py"))
    transformers = importlib.util.find_spec("transformers")
    if transformers is not None and transformers.submodule_search_locations:
        sources.append(Path(next(iter(transformers.submodule_search_locations)), "training_args.py"))
    key: list[Any] = [SCHEMA_VERSION, sys.version, sys.prefix]
    for name in _DISTRIBUTIONS:
        try:
            key.append([name, importlib.metadata.version(name)])
        except importlib.metadata.PackageNotFoundError:
            key.append([name, None])
    for source in sources:
        try:
            stat = source.stat()
            key.append([str(source), stat.st_size, stat.st_mtime_ns])
        except OSError:
            key.append([str(source), None])
    return cache_dir() / "llamafactory_fields" / f"{digest(key)[:16]}.json"


def read_cache(path: Path) -> dict[str, Any] | None:
    """The fields stored in `path`, or None when it is absent, damaged or of another schema version."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict) or stored.get("schema") != SCHEMA_VERSION:
            return None
        return {key: decode_type(spec) for key, spec in stored["fields"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """{key: JSON description of its type}; raises `Uncacheable` if a type has no stand-in."""
    return {key: encode_type(tp) for key, tp in fields.items()}


def encode_type(tp: Any) -> Any:
    """A JSON description of one field type (see the module docstring for the shapes)."""
    for name, scalar in _SCALARS.items():
        if tp is scalar:
            return name
    if tp is None:
        return "None"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return {"union": [encode_type(arg) for arg in get_args(tp)]}
    if origin is Literal:
        return {"literal": [_json_value(v, tp) for v in get_args(tp)]}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": tp.__name__, "values": [_json_value(m.value, tp) for m in tp]}
    base = origin or tp
    for name, container in _CONTAINERS.items():
        if base is container:
            return name
    if isinstance(tp, type):
        return {"class": tp.__name__}
    raise Uncacheable(f"no stand-in for the field type {tp!r}")


def decode_type(spec: Any) -> Any:
    """The stand-in type for a JSON description written by `encode_type`."""
    if isinstance(spec, str):
        if spec in _SCALARS:
            return _SCALARS[spec]
        return _CONTAINERS[spec]
    if "union" in spec:
        return Union[tuple(decode_type(arg) for arg in spec["union"])]  # noqa: UP007 - built from a list
    if "literal" in spec:
        return Literal[tuple(spec["literal"])]
    if "enum" in spec:
        return enum.Enum(spec["enum"], [(f"value_{i}", v) for i, v in enumerate(spec["values"])])
    return type(spec["class"], (), {"__doc__": "A stand-in for a class LLaMA-Factory parses itself."})


def _json_value(value: Any, tp: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise Uncacheable(f"{tp!r} has a value that JSON cannot keep: {value!r}")
