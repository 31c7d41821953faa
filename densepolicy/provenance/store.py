"""The provenance.json store: read, locked read-modify-write of one record, and which file holds a path's record.

A `provenance.json` maps output file names to records (`{"schema": 1, "records": {name: record}}`,
docs/formats.md), so one run directory can hold several outputs; a dataset's record lives beside it in
`<name>.provenance.json` (the data dir holds many datasets), a trained model's under the key "model".
Every file carries the format's schema version (`records.SCHEMA`); a file of a newer or unknown schema is
refused with a one-line `ConfigError` naming it, never read half-understood or overwritten.

Writes are a read-modify-write under the NFS-safe lock of `locking.locked` (`provenance.json.lock` beside the
file; a process that finds it held waits) and replace the file atomically.

    update_record(run_dir / FILE_NAME, "gsm8k.test.None.csv", lambda old: new_or_joined(old))  # typed records
    read_records(run_dir)          # {key: Record}
    find_record(result_csv)        # Found(file, key, record) of a result, pairs, dataset file or model dir
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from densepolicy.config import ConfigError
from densepolicy.provenance.locking import locked, write_json
from densepolicy.provenance.records import SCHEMA, Record, RecordError, parse_record

FILE_NAME = "provenance.json"
_FIX = "restore it from a copy, or move it away to start a new record (the results are not affected)"


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The content of a provenance file (a directory means its provenance.json); empty if absent.
    A damaged file (bytes that are not UTF-8, truncated or invalid JSON, not a provenance mapping) is
    a one-line `ConfigError` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        return {"schema": SCHEMA, "records": {}}
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: damaged provenance file: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          f"{_FIX}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: damaged provenance file: not valid JSON ({exc.msg}; truncated?); "
                          f"{_FIX}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the provenance file ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), dict):
        raise ConfigError(f"{path}: damaged provenance file: no 'records' mapping; {_FIX}")
    schema = data.get("schema", SCHEMA)  # (every file this code wrote names it)
    if schema != SCHEMA:
        if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA:
            raise ConfigError(f"{path}: provenance schema {schema} is newer than this checkout reads (schema "
                              f"{SCHEMA}); update the checkout to read or extend it, or move the file away to start "
                              f"a new record")
        raise ConfigError(f"{path}: unknown provenance schema {schema!r} (this checkout reads schema {SCHEMA}); {_FIX}")
    return data


def _parse(path: Path, key: str, data: Any) -> Record:
    try:
        return parse_record(data)
    except RecordError as exc:
        raise ConfigError(f"{path}: damaged provenance record {key!r}: {exc}; {_FIX}") from None


def read_records(path: str | os.PathLike) -> dict[str, Record]:
    """The typed records of a provenance file (a directory means its provenance.json), by key; {} if absent."""
    path = Path(path)
    path = path / FILE_NAME if path.is_dir() else path
    return {key: _parse(path, key, data) for key, data in read_provenance(path)["records"].items()}


def update_record(prov_file: str | os.PathLike, key: str, update: Callable[[Record | None], Record]) -> Record:
    """Locked read-modify-write of `records[key]` in `prov_file`: `update(old record or None)` returns the new
    one (atomic replace; the file's other records are kept as they are)."""
    prov_file = Path(prov_file)
    prov_file.parent.mkdir(parents=True, exist_ok=True)
    with locked(prov_file):
        data = read_provenance(prov_file)
        old = data["records"].get(key)
        record = update(None if old is None else _parse(prov_file, key, old))
        if not isinstance(record, Record):
            raise TypeError(f"update_record: the update of {key!r} returned {type(record).__name__}, not a Record")
        data["schema"] = SCHEMA
        data["records"][key] = record.to_dict()
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


class Found(NamedTuple):
    """A record and where it is stored."""

    file: Path
    key: str
    record: Record

    @property
    def ref(self) -> str:
        """`<provenance file>#<key>`, as later records name it (`upstream[].provenance`)."""
        return f"{self.file}#{self.key}"


def find_record(path: str | os.PathLike) -> Found | None:
    """The record describing `path`: a result/pairs/dataset file, a model or run directory (its only
    record, or "model"), or a provenance file itself; None if there is none."""
    path = Path(path)
    if path.is_dir() or path.name == FILE_NAME or path.name.endswith(".provenance.json"):
        prov_file = path / FILE_NAME if path.is_dir() else path
        records = read_provenance(prov_file)["records"]
        key = "model" if "model" in records else (next(iter(records)) if len(records) == 1 else None)
        return Found(prov_file, key, _parse(prov_file, key, records[key])) if key else None
    sidecar = dataset_provenance_path(path)
    if sidecar.is_file():
        records = read_provenance(sidecar)["records"]
        if path.name in records:
            return Found(sidecar, path.name, _parse(sidecar, path.name, records[path.name]))
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
                return Found(prov_file, key, _parse(prov_file, key, records[key]))
    return None
