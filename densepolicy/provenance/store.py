"""The provenance.json store: read, locked read-modify-write of one record, and which file holds a path's record.

A `provenance.json` maps output file names to records (`{"schema": 1, "records": {name: record}}`,
docs/formats.md), so one run directory can hold several outputs; a dataset's record lives beside it in
`<name>.provenance.json` (the data dir holds many datasets), a trained model's under the key "model".
Writes take a lock and replace the file atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from densepolicy.config import ConfigError
from densepolicy.paths import cache_dir
from densepolicy.results_io import json_text, write_text_atomic

FILE_NAME = "provenance.json"
SCHEMA = 1


def _lock_path(target: Path) -> Path:
    """Lock files live in the cache, not beside outputs (unlinking a used lock file is racy)."""
    name = hashlib.sha1(str(target.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "provenance" / "locks" / f"{name}.lock"


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold the lock of `target` (a provenance file, the hash cache) for a read-modify-write."""
    lock = _lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_json(path: Path, obj: Any) -> None:
    """`results_io.write_text_atomic` of `obj` as JSON (values JSON cannot hold written as text)."""
    write_text_atomic(path, json_text(obj, indent=1, sort_keys=False, default=str) + "\n")


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The content of a provenance file (a directory means its provenance.json); empty if absent.
    A damaged file (bytes that are not UTF-8, truncated or invalid JSON, not a provenance mapping) is
    a one-line `ConfigError` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        return {"schema": SCHEMA, "records": {}}
    fix = "restore it from a copy, or move it away to start a new record (the results are not affected)"
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: damaged provenance file: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          f"{fix}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: damaged provenance file: not valid JSON ({exc.msg}; truncated?); "
                          f"{fix}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the provenance file ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), dict):
        raise ConfigError(f"{path}: damaged provenance file: no 'records' mapping; {fix}")
    return data


def update_record(prov_file: Path, key: str, update: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
    """Locked read-modify-write of `records[key]` in `prov_file` (atomic replace)."""
    prov_file = Path(prov_file)
    prov_file.parent.mkdir(parents=True, exist_ok=True)
    with locked(prov_file):
        data = read_provenance(prov_file)
        record = update(data["records"].get(key))
        data["schema"] = SCHEMA
        data["records"][key] = record
        write_json(prov_file, data)
    return record


def dataset_provenance_path(dataset_json: str | os.PathLike) -> Path:
    """`TreeDPO/data/<name>.json` -> `TreeDPO/data/<name>.provenance.json` (the data dir holds many datasets)."""
    path = Path(dataset_json)
    return path.with_name(path.name[: -len(path.suffix)] + ".provenance.json" if path.suffix else path.name + ".provenance.json")


def _record_keys(name: str) -> list[str]:
    """Names a file's record may have: itself, the `.csv` of a tree dump, the merged name of a shard."""
    names = [name]
    if name.endswith(".jsonl"):
        names.append(name[: -len(".jsonl")] + ".csv")
    for candidate in list(names):
        parts = candidate.split(".")
        if candidate.endswith(".csv") and len(parts) >= 3:
            names.append(".".join(parts[:-2] + ["None", "csv"]))
    return list(dict.fromkeys(names))


def find_record(path: str | os.PathLike) -> tuple[Path, str, dict[str, Any]] | None:
    """(provenance file, key, record) describing `path`: a result/pairs/dataset file, a model or run
    directory (its only record, or "model"), or a provenance file itself; None if there is none."""
    path = Path(path)
    if path.is_dir() or path.name == FILE_NAME or path.name.endswith(".provenance.json"):
        prov_file = path / FILE_NAME if path.is_dir() else path
        records = read_provenance(prov_file)["records"]
        key = "model" if "model" in records else (next(iter(records)) if len(records) == 1 else None)
        return (prov_file, key, records[key]) if key else None
    sidecar = dataset_provenance_path(path)
    if sidecar.is_file():
        records = read_provenance(sidecar)["records"]
        if path.name in records:
            return sidecar, path.name, records[path.name]
    folders = [path.parent]
    if path.parent.name in ("trees", "distributed_result"):
        folders.append(path.parent.parent)
    if path.parent.name == "trees" and path.parent.parent.name == "distributed_result":
        folders.append(path.parent.parent.parent)
    name = re.sub(r"~\d+(?=\.)", "", path.name)  # archived copy `<K>~<n>` of shard K
    for folder in folders:
        prov_file = folder / FILE_NAME
        records = read_provenance(prov_file)["records"]
        for key in _record_keys(name):
            if key in records:
                return prov_file, key, records[key]
    return None
