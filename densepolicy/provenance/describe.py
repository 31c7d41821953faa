"""A short human-readable summary of provenance records (`--provenance PATH`, `python -m densepolicy.provenance`)."""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from densepolicy.provenance.hashing import abbreviated
from densepolicy.provenance.records import get_dotted
from densepolicy.provenance.store import FILE_NAME, find_record, read_provenance
from densepolicy.provenance.versions import NOT_INSTALLED


def describe(path: str | os.PathLike) -> str:
    """A short human-readable summary of the record(s) at `path` (`--provenance`)."""
    path = Path(path)
    if path.is_dir() or path.name == FILE_NAME or path.name.endswith(".provenance.json"):
        prov_file = path / FILE_NAME if path.is_dir() else path
        if not prov_file.is_file():
            raise FileNotFoundError(f"no provenance file at {prov_file}")
        items = list(read_provenance(prov_file)["records"].items())
    else:
        found = find_record(path)
        if found is None:
            raise FileNotFoundError(f"no provenance record for {path}")
        prov_file, items = found[0], [(found[1], found[2])]
    parts = []
    for key, record in items:
        parts.append(f"{prov_file} [{key}]\n" + _describe_record(record))
    return "\n\n".join(parts)


def _describe_record(record: Mapping[str, Any]) -> str:
    env = record.get("environment") or {}
    git = env.get("git") or {}
    packages = env.get("packages") or {}
    installed = ", ".join(f"{k} {v}" for k, v in packages.items() if v != NOT_INSTALLED)
    missing = ", ".join(k for k, v in packages.items() if v == NOT_INSTALLED)
    lines = [f"  stage     : {record.get('stage')}  (created {record.get('created')}, updated {record.get('updated', '–')})",
             f"  code      : git {abbreviated(git.get('commit'))}{' (dirty)' if git.get('dirty') else ''}, "
             f"python {env.get('python')}",
             f"  packages  : {installed or '–'}" + (f"; not installed: {missing}" if missing else "")]
    model = record.get("model")
    if isinstance(model, Mapping):
        lines.append(f"  model     : {model.get('name')}  fingerprint {abbreviated(model.get('fingerprint'))}  "
                     f"({len(model.get('files') or {})} files{', ' + model['path'] if model.get('path') else ''})")
    base = record.get("base_model")
    if isinstance(base, Mapping):
        lines.append(f"  base model: {base.get('name')}  fingerprint {abbreviated(base.get('fingerprint'))}")
    eval_set = record.get("eval_set")
    if isinstance(eval_set, Mapping):
        ids = eval_set.get("task_ids") or []
        lines.append(f"  eval set  : {eval_set.get('count')} tasks, sha256 {abbreviated(eval_set.get('sha256'))}"
                     + (f" ({ids[0]} … {ids[-1]})" if ids else ""))
    if "merged" in record:
        merged = record["merged"]
        lines.append(f"  merged    : {merged.get('rows')} rows, eval set {abbreviated(merged.get('eval_set_sha256'))}"
                     f"{'' if merged.get('complete') else ' (INCOMPLETE: differs from the planned set)'}")
    env_rec = record.get("env")
    if isinstance(env_rec, Mapping):
        pk = ", ".join(f"{k} {v}" for k, v in (env_rec.get("packages") or {}).items())
        code = abbreviated(env_rec.get("code_sha256"))
        lines.append(f"  env       : {env_rec.get('name')}/{env_rec.get('split')}  code {code}"
                     + (f"  ({pk})" if pk else ""))
    files = get_dotted(record, "data_files.files") or []
    if files or "data_files" in record:
        shown = ", ".join(f"{f['name']} {abbreviated(f['sha256'], 8)}" for f in files[:3])
        lines.append(f"  data files: {len(files)} (sha256 {abbreviated(get_dotted(record, 'data_files.sha256'))})"
                     + (f": {shown}" + (" …" if len(files) > 3 else "") if files else ""))
    for dataset in record.get("datasets") or []:
        lines.append(f"  dataset   : {dataset.get('name')} sha256 {abbreviated(dataset.get('sha256'))}"
                     f"  provenance {dataset.get('provenance') or '–'}")
    for up in record.get("upstream") or []:
        if isinstance(up, Mapping):
            lines.append(f"  input     : {Path(str(up.get('file'))).name}  "
                         + (f"eval set {abbreviated(up.get('eval_set_sha256'))}, "
                            f"model {abbreviated(up.get('model_fingerprint'))}"
                            if up.get("provenance") else "no provenance"))
    settings = record.get("settings") or {}
    lines.append(f"  settings  : {len(settings)} keys, sha256 {abbreviated(record.get('settings_sha256'))}")
    shards = record.get("shards") or {}
    if shards:
        mixed = [k for k, v in shards.items() if "environment" in v]
        lines.append(f"  shards    : {len(shards)} of {settings.get('num_shards', '?')} ({', '.join(sorted(shards, key=int))})"
                     + (f"; shard(s) {', '.join(mixed)} ran with other code/packages" if mixed else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m densepolicy.provenance PATH`: print a record (same as `--provenance PATH`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    for arg in args:
        print(describe(arg))
    return 0
