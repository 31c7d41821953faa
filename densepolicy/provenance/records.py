"""Typed provenance records: one frozen dataclass per record kind and per part, and the schema version.

    record = SamplingRecord(stage="evaluation", file="gsm8k.test.None.csv", eval_set=EvalSet.of(ids), ...)
    record.to_dict()               # the JSON of docs/formats.md, as provenance.json holds it
    parse_record(data)             # back: the kind is chosen by `stage` (sampling, evaluation, pairs, dataset,
                                   # training; another stage -> a plain `Record`)

The kinds (`SamplingRecord`, `PairsRecord`, `DatasetRecord`, `TrainingRecord`) are the format; each stage
builds its own (densepolicy/sampling/run_record.py, postprocess/output_records.py, training/model_record.py).
Keys this code does not know are kept in `extra` and written back unchanged, so a record read and written
again loses nothing. `SCHEMA` is the version of the file format: the store refuses a file of another one.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self

from densepolicy.provenance.hashing import data_files_record, eval_set_record, model_fingerprint
from densepolicy.provenance.versions import environment

SCHEMA = 1
"""Version of the provenance.json format (`{"schema": 1, "records": {...}}`) this code reads and writes."""


def timestamp() -> str:
    """The local time now, ISO 8601 with the UTC offset, to the second (`created` / `updated` fields)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class RecordError(ValueError):
    """A record without the shape of its kind; the message names the field (`datasets[0].upstream`)."""


def _plain(value: Any) -> Any:
    if isinstance(value, Part):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class Part:
    """A record or a part of one: its known keys as typed fields, the others in `extra`.

    `NESTED` names the fields that hold parts: `(kind, type)` with kind "one" (a part or null), "list"
    (a JSON list, held as a tuple) or "map" (a JSON object of parts). `OMIT_NONE`: fields written only when set.
    """

    NESTED: ClassVar[Mapping[str, tuple[str, type[Part]]]] = {}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (known keys in field order, then `extra`)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in self.OMIT_NONE):
                continue
            out[f.name] = _plain(value)
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> Self:
        """The part of JSON `data`; missing keys take their defaults, unknown ones go to `extra`.
        `RecordError` (naming the field by its path `where`) where a part is not a JSON object / list."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{where or cls.__name__}: expected an object, found {type(data).__name__}")
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        for name, f in known.items():
            if name not in data:
                continue
            value = data[name]
            path = f"{where}.{name}" if where else name
            if value is None:  # null: kept, except that a null list or map of parts reads as empty
                kwargs[name] = _default(f) if cls.NESTED.get(name, ("one",))[0] != "one" else None
            elif name in cls.NESTED:
                kwargs[name] = _nested(cls.NESTED[name], value, path)
            else:
                kwargs[name] = value
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})


def _default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _nested(spec: tuple[str, type[Part]], value: Any, path: str) -> Any:
    kind, part = spec
    if kind == "one":
        return part.from_dict(value, path)
    if kind == "list":
        if not isinstance(value, list):
            raise RecordError(f"{path}: expected a list, found {type(value).__name__}")
        return tuple(part.from_dict(v, f"{path}[{i}]") for i, v in enumerate(value))
    if not isinstance(value, Mapping):
        raise RecordError(f"{path}: expected an object, found {type(value).__name__}")
    return {str(k): part.from_dict(v, f"{path}.{k}") for k, v in value.items()}


# ------------------------------------------------------------------------------------------------ parts


@dataclass(frozen=True, kw_only=True)
class GitState(Part):
    commit: str | None = None
    dirty: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Environment(Part):
    """Code and package state of a process (`versions.environment()`)."""

    NESTED = {"git": ("one", GitState)}

    git: GitState | None = None
    python: str | None = None
    platform: str | None = None
    packages: Mapping[str, str] = field(default_factory=dict)
    serve_venv: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls) -> Self:
        """This process's."""
        return cls.from_dict(environment())


@dataclass(frozen=True, kw_only=True)
class DataFile(Part):
    name: str = ""
    path: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, kw_only=True)
class DataFiles(Part):
    """Every data file read: `sha256` is the digest over (name, sha256)."""

    NESTED = {"files": ("list", DataFile)}

    sha256: str | None = None
    files: tuple[DataFile, ...] = ()

    @classmethod
    def of(cls, files: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike]) -> Self:
        """Hash `files` (a name -> path mapping, or paths; see `hashing.data_files_record`)."""
        return cls.from_dict(data_files_record(files))

    def hashes(self) -> dict[str, str | None]:
        """File name -> sha256."""
        return {f.name: f.sha256 for f in self.files}


@dataclass(frozen=True, kw_only=True)
class EvalSet(Part):
    """The selected tasks in order (before sharding); `sha256` = the eval-set hash of the sorted ids."""

    count: int = 0
    sha256: str | None = None
    order_sha256: str | None = None
    task_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_ids", tuple(str(t) for t in self.task_ids))

    @classmethod
    def of(cls, task_ids: Sequence[str]) -> Self:
        return cls.from_dict(eval_set_record(task_ids))


@dataclass(frozen=True, kw_only=True)
class EnvIdentity(Part):
    """An env/grader: name, split, sha256 of its source files, its packages' versions (`versions.env_record`)."""

    name: str | None = None
    split: str | None = None
    code_sha256: str | None = None
    code_files: Mapping[str, str] = field(default_factory=dict)
    packages: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ModelFingerprint(Part):
    """A model directory's files and their digest (`fingerprint`: null without a local directory)."""

    name: str | None = None
    path: str | None = None
    fingerprint: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, model_dir: str | os.PathLike | None, name: str | None = None, weights: bool = True) -> Self:
        """Fingerprint `model_dir` (see `hashing.model_fingerprint`)."""
        return cls.from_dict(model_fingerprint(model_dir, name, weights))


@dataclass(frozen=True, kw_only=True)
class ServedModel(ModelFingerprint):
    """The model a sampling run asked for: its fingerprint and the name it was served under."""

    served_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class ShardEntry(Part):
    """One worker's shard of a sampling run; `environment` only where it differs from the record's."""

    NESTED = {"environment": ("one", Environment)}
    OMIT_NONE = frozenset({"environment"})

    task_count: int = 0
    task_ids_sha256: str | None = None
    first_task: str | None = None
    last_task: str | None = None
    host: str | None = None
    pid: int | None = None
    started: str | None = None
    environment: Environment | None = None


@dataclass(frozen=True, kw_only=True)
class MergedStamp(Part):
    """What the merge wrote: its rows and their eval-set hash, and whether that is the planned set."""

    file: str | None = None
    rows: int = 0
    eval_set_sha256: str | None = None
    complete: bool = False
    merged_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class OutputFile(Part):
    path: str | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True, kw_only=True)
class Upstream(Part):
    """What an input file's own record says (`provenance` = `file#key`), or that it has none."""

    file: str | None = None
    provenance: str | None = None
    stage: str | None = None
    eval_set_sha256: str | None = None
    eval_set_count: int | None = None
    model_fingerprint: str | None = None
    settings_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.provenance is None:  # no record: only the file is known
            out = {k: v for k, v in out.items() if k in ("file", "provenance") or k in self.extra}
        return out


@dataclass(frozen=True, kw_only=True)
class TrainedDataset(Part):
    """A dataset a model was trained on: its file, hash, record (`file#key`) and that record's `upstream`."""

    NESTED = {"upstream": ("list", Upstream)}
    OMIT_NONE = frozenset({"upstream"})  # no record found for the file

    name: str = ""
    file: str | None = None
    sha256: str | None = None
    provenance: str | None = None
    upstream: tuple[Upstream, ...] | None = None


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class Record(Part):
    """What every record has; a record of a stage this code does not know is read as this (the rest in `extra`)."""

    STAGES: ClassVar[tuple[str, ...]] = ()
    NESTED = {"environment": ("one", Environment)}

    stage: str = ""
    file: str = ""
    created: str | None = None
    environment: Environment | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    settings_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.STAGES and self.stage not in self.STAGES:
            raise RecordError(f"a {type(self).__name__} has stage {' or '.join(self.STAGES)}, not {self.stage!r}")


@dataclass(frozen=True, kw_only=True)
class SamplingRecord(Record):
    """The record of a sampling or evaluation run's output, shared by its workers (one entry each in `shards`)."""

    STAGES = ("sampling", "evaluation")
    NESTED = {**Record.NESTED, "env": ("one", EnvIdentity), "data_files": ("one", DataFiles),
              "eval_set": ("one", EvalSet), "model": ("one", ServedModel), "shards": ("map", ShardEntry),
              "merged": ("one", MergedStamp)}
    OMIT_NONE = frozenset({"updated", "merged"})

    stage: str = "sampling"
    env: EnvIdentity | None = None
    data_files: DataFiles | None = None
    eval_set: EvalSet | None = None
    model: ServedModel | None = None
    shards: Mapping[str, ShardEntry] = field(default_factory=dict)
    updated: str | None = None
    merged: MergedStamp | None = None


@dataclass(frozen=True, kw_only=True)
class OutputRecord(Record):
    """A file made from input files: its hash and each input's hash and own record."""

    NESTED = {**Record.NESTED, "data_files": ("one", DataFiles), "output": ("one", OutputFile),
              "upstream": ("list", Upstream)}

    data_files: DataFiles | None = None
    output: OutputFile | None = None
    upstream: tuple[Upstream, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PairsRecord(OutputRecord):
    """A pairs CSV (`--process_result`, `--merge_all_pairs`)."""

    STAGES = ("pairs",)

    stage: str = "pairs"


@dataclass(frozen=True, kw_only=True)
class DatasetRecord(OutputRecord):
    """A LLaMA-Factory dataset file; `tokenizer`: the tokenizer files of the length filter (or null)."""

    STAGES = ("dataset",)
    NESTED = {**OutputRecord.NESTED, "tokenizer": ("one", ModelFingerprint)}

    stage: str = "dataset"
    tokenizer: ModelFingerprint | None = None


@dataclass(frozen=True, kw_only=True)
class TrainingRecord(Record):
    """A trained model directory (record key "model")."""

    STAGES = ("training",)
    NESTED = {**Record.NESTED, "datasets": ("list", TrainedDataset), "base_model": ("one", ModelFingerprint),
              "model": ("one", ModelFingerprint)}

    stage: str = "training"
    file: str = "model"
    config: str | None = None
    datasets: tuple[TrainedDataset, ...] = ()
    dataset_sha256: str | None = None
    base_model: ModelFingerprint | None = None
    model: ModelFingerprint | None = None


RECORD_KINDS: dict[str, type[Record]] = {stage: kind for kind in (SamplingRecord, PairsRecord, DatasetRecord,
                                                                  TrainingRecord) for stage in kind.STAGES}
"""stage -> record kind."""


def parse_record(data: Any, where: str = "") -> Record:
    """The typed record of JSON `data`, its kind chosen by `stage` (`RecordError` for a malformed one)."""
    stage = data.get("stage") if isinstance(data, Mapping) else None
    kind = RECORD_KINDS.get(stage) if isinstance(stage, str) else None
    return (kind or Record).from_dict(data, where)
