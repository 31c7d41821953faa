"""What identifies a result, and whether results may be compared.

    result_identity(csv, label, dataset)   # a result CSV's task ids and its run record
    comparability_problems(idents)         # --see_score: results of one dataset on other task sets,
                                           # data files or env/grader versions
    identity_rows(idents)                  # the provenance footer of a score table
    upstream_summary(path)                 # what an input file's own record says (later stages' `upstream`)
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from densepolicy.config import ConfigError
from densepolicy.provenance.hashing import abbreviated, task_set_sha256
from densepolicy.provenance.records import get_dotted
from densepolicy.provenance.store import find_record
from densepolicy.results_io import iter_csv


class ProvenanceMismatch(ConfigError):
    """Results or inputs that must agree do not; the message is one line naming what differs."""


def upstream_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What an input file's own provenance says (stage, eval set, model, settings), or that it has none."""
    found = find_record(path)
    summary: dict[str, Any] = {"file": str(Path(path).resolve()), "provenance": None}
    if found is not None:
        prov_file, key, record = found
        summary.update(provenance=f"{prov_file}#{key}", stage=record.get("stage"),
                       eval_set_sha256=get_dotted(record, "eval_set.sha256"),
                       eval_set_count=get_dotted(record, "eval_set.count"),
                       model_fingerprint=get_dotted(record, "model.fingerprint"),
                       settings_sha256=record.get("settings_sha256"))
    return summary


@dataclass
class ResultIdentity:
    """What identifies one result file in a score table: its task set and (if any) its run record."""

    label: str
    dataset: str
    path: Path
    task_ids: set[str] = field(default_factory=set)
    model_column: str = ""
    record: dict[str, Any] | None = None
    provenance: str | None = None

    @property
    def eval_set(self) -> str:
        return task_set_sha256(self.task_ids)

    @property
    def model_fingerprint(self) -> str:
        return (get_dotted(self.record, "model.fingerprint") if self.record else None) or self.model_column


def result_identity(path: str | os.PathLike, label: str, dataset: str) -> ResultIdentity:
    """Read a result CSV's task ids (and its merged `model_fingerprint` column) and find its record."""
    ident = ResultIdentity(label=label, dataset=dataset, path=Path(path))
    for _, row in iter_csv(path):
        ident.task_ids.add(str(row.get("task_id", "")))
        ident.model_column = ident.model_column or row.get("model_fingerprint", "") or ""
    found = find_record(path)
    if found is not None:
        ident.provenance, ident.record = f"{found[0]}#{found[1]}", found[2]
    return ident


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            return f"{name} ({abbreviated(a.get(name), 16) if a.get(name) else 'absent'} vs " \
                   f"{abbreviated(b.get(name), 16) if b.get(name) else 'absent'})"
    return None


def comparability_problems(idents: Sequence[ResultIdentity]) -> list[tuple[str, str]]:
    """(dataset, one line) per problem: results of one dataset (one table column) evaluated on different
    task sets, data files, env/grader code or env/grader package versions (each compared with the first)."""
    problems: list[tuple[str, str]] = []
    by_dataset: dict[str, list[ResultIdentity]] = {}
    for ident in idents:
        by_dataset.setdefault(ident.dataset, []).append(ident)
    for dataset, group in by_dataset.items():
        ref = group[0]
        for other in group[1:]:
            pair = f"{dataset}: {ref.label!r} vs {other.label!r}"
            if ref.task_ids != other.task_ids:
                shared = len(ref.task_ids & other.task_ids)
                problems.append((dataset, f"{pair}: different task sets ({len(ref.task_ids)} vs "
                                          f"{len(other.task_ids)} tasks, {shared} shared; eval set "
                                          f"{abbreviated(ref.eval_set)} vs {abbreviated(other.eval_set)})"))
            if ref.record is None or other.record is None:
                continue
            files_a = {f["name"]: f["sha256"] for f in get_dotted(ref.record, "data_files.files") or []}
            files_b = {f["name"]: f["sha256"] for f in get_dotted(other.record, "data_files.files") or []}
            diff = _first_difference(files_a, files_b)
            if diff:
                problems.append((dataset, f"{pair}: different data files: {diff}"))
            diff = _first_difference(get_dotted(ref.record, "env.packages") or {},
                                     get_dotted(other.record, "env.packages") or {})
            if diff:
                problems.append((dataset, f"{pair}: different env/grader package versions: {diff}"))
            diff = _first_difference(get_dotted(ref.record, "env.code_files") or {},
                                     get_dotted(other.record, "env.code_files") or {})
            if diff:
                problems.append((dataset, f"{pair}: different env/grader code: {diff}"))
    return problems


IDENTITY_HEADER = ["model", "dataset", "eval set (n)", "model fingerprint", "data files", "env/grader", "commit"]


def identity_rows(idents: Sequence[ResultIdentity]) -> list[list[str]]:
    """One row per result file for the provenance footer of a score table."""
    rows = []
    for ident in idents:
        record = ident.record or {}
        git = get_dotted(record, "environment.git") or {}
        commit = abbreviated(git.get("commit"), 10) + ("+dirty" if git.get("dirty") else "") if git else "–"
        env = "–"
        if record:
            packages = ", ".join(f"{k} {v}" for k, v in (get_dotted(record, "env.packages") or {}).items())
            env = abbreviated(get_dotted(record, "env.code_sha256"), 8) + (f" ({packages})" if packages else "")
        rows.append([ident.label, ident.dataset, f"{abbreviated(ident.eval_set)} ({len(ident.task_ids)})",
                     abbreviated(ident.model_fingerprint),
                     abbreviated(get_dotted(record, "data_files.sha256")) if record else "–", env, commit])
    return rows
