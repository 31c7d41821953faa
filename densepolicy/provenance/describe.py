"""A short human-readable summary of provenance records (`--provenance PATH`, `python -m densepolicy.provenance`)."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from densepolicy.provenance.hashing import abbreviated
from densepolicy.provenance.records import (Environment, GitState, ModelFingerprint, OutputRecord, Record,
                                            SamplingRecord, TrainingRecord)
from densepolicy.provenance.store import FILE_NAME, find_record, read_records
from densepolicy.provenance.versions import NOT_INSTALLED


def describe(path: str | os.PathLike) -> str:
    """A short human-readable summary of the record(s) at `path` (`--provenance`)."""
    path = Path(path)
    if path.is_dir() or path.name == FILE_NAME or path.name.endswith(".provenance.json"):
        prov_file = path / FILE_NAME if path.is_dir() else path
        if not prov_file.is_file():
            raise FileNotFoundError(f"no provenance file at {prov_file}")
        items = list(read_records(prov_file).items())
    else:
        found = find_record(path)
        if found is None:
            raise FileNotFoundError(f"no provenance record for {path}")
        prov_file, items = found.file, [(found.key, found.record)]
    parts = []
    for key, record in items:
        parts.append(f"{prov_file} [{key}]\n" + _describe_record(record))
    return "\n\n".join(parts)


def _fingerprint_line(label: str, model: ModelFingerprint) -> str:
    return f"  {label}: {model.name}  fingerprint {abbreviated(model.fingerprint)}"


def _describe_record(record: Record) -> str:
    env = record.environment or Environment()
    git = env.git or GitState()
    installed = ", ".join(f"{k} {v}" for k, v in env.packages.items() if v != NOT_INSTALLED)
    missing = ", ".join(k for k, v in env.packages.items() if v == NOT_INSTALLED)
    updated = record.updated if isinstance(record, SamplingRecord) else None
    lines = [f"  stage     : {record.stage}  (created {record.created}, updated {updated or '–'})",
             f"  code      : git {abbreviated(git.commit)}{' (dirty)' if git.dirty else ''}, python {env.python}",
             f"  packages  : {installed or '–'}" + (f"; not installed: {missing}" if missing else "")]
    model = record.model if isinstance(record, (SamplingRecord, TrainingRecord)) else None
    if model is not None:
        lines.append(_fingerprint_line("model     ", model)
                     + f"  ({len(model.files)} files{', ' + model.path if model.path else ''})")
    if isinstance(record, TrainingRecord) and record.base_model is not None:
        lines.append(_fingerprint_line("base model", record.base_model))
    if isinstance(record, SamplingRecord):
        lines += _sampling_lines(record)
    data_files = record.data_files if isinstance(record, (SamplingRecord, OutputRecord)) else None
    if data_files is not None:
        files = data_files.files
        shown = ", ".join(f"{f.name} {abbreviated(f.sha256, 8)}" for f in files[:3])
        lines.append(f"  data files: {len(files)} (sha256 {abbreviated(data_files.sha256)})"
                     + (f": {shown}" + (" …" if len(files) > 3 else "") if files else ""))
    if isinstance(record, TrainingRecord):
        for dataset in record.datasets:
            lines.append(f"  dataset   : {dataset.name} sha256 {abbreviated(dataset.sha256)}"
                         f"  provenance {dataset.provenance or '–'}")
    if isinstance(record, OutputRecord):
        for up in record.upstream:
            lines.append(f"  input     : {Path(str(up.file)).name}  "
                         + (f"eval set {abbreviated(up.eval_set_sha256)}, model {abbreviated(up.model_fingerprint)}"
                            if up.provenance else "no provenance"))
    lines.append(f"  settings  : {len(record.settings)} keys, sha256 {abbreviated(record.settings_sha256)}")
    if isinstance(record, SamplingRecord) and record.shards:
        shards = record.shards
        mixed = [k for k, v in shards.items() if v.environment is not None]
        lines.append(f"  shards    : {len(shards)} of {record.settings.get('num_shards', '?')} "
                     f"({', '.join(sorted(shards, key=int))})"
                     + (f"; shard(s) {', '.join(mixed)} ran with other code/packages" if mixed else ""))
    return "\n".join(lines)


def _sampling_lines(record: SamplingRecord) -> list[str]:
    lines = []
    if record.eval_set is not None:
        ids = record.eval_set.task_ids
        lines.append(f"  eval set  : {record.eval_set.count} tasks, sha256 {abbreviated(record.eval_set.sha256)}"
                     + (f" ({ids[0]} … {ids[-1]})" if ids else ""))
    if record.merged is not None:
        merged = record.merged
        lines.append(f"  merged    : {merged.rows} rows, eval set {abbreviated(merged.eval_set_sha256)}"
                     f"{'' if merged.complete else ' (INCOMPLETE: differs from the planned set)'}")
    if record.env is not None:
        pk = ", ".join(f"{k} {v}" for k, v in record.env.packages.items())
        lines.append(f"  env       : {record.env.name}/{record.env.split}  code {abbreviated(record.env.code_sha256)}"
                     + (f"  ({pk})" if pk else ""))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m densepolicy.provenance PATH`: print a record (same as `--provenance PATH`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    for arg in args:
        print(describe(arg))
    return 0
