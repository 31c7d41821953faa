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
from densepolicy.provenance.records import SamplingRecord, TrainingRecord, Upstream
from densepolicy.provenance.store import find_record
from densepolicy.results_io import iter_csv


class ProvenanceMismatch(ConfigError):
    """Results or inputs that must agree do not; the message is one line naming what differs."""


def upstream_summary(path: str | os.PathLike) -> Upstream:
    """What an input file's own provenance says (stage, eval set, model, settings), or that it has none."""
    file = str(Path(path).resolve())
    found = find_record(path)
    if found is None:
        return Upstream(file=file)
    record = found.record
    eval_set = record.eval_set if isinstance(record, SamplingRecord) else None
    model = record.model if isinstance(record, (SamplingRecord, TrainingRecord)) else None
    return Upstream(file=file, provenance=found.ref, stage=record.stage,
                    eval_set_sha256=eval_set.sha256 if eval_set else None,
                    eval_set_count=eval_set.count if eval_set else None,
                    model_fingerprint=model.fingerprint if model else None, settings_sha256=record.settings_sha256)


@dataclass
class ResultIdentity:
    """What identifies one result file in a score table: its task set and (if any) its run record."""

    label: str
    dataset: str
    path: Path
    task_ids: set[str] = field(default_factory=set)
    model_column: str = ""
    record: SamplingRecord | None = None
    provenance: str | None = None

    @property
    def eval_set(self) -> str:
        return task_set_sha256(self.task_ids)

    @property
    def model_fingerprint(self) -> str:
        model = self.record.model if self.record else None
        return (model.fingerprint if model else None) or self.model_column


def result_identity(path: str | os.PathLike, label: str, dataset: str) -> ResultIdentity:
    """Read a result CSV's task ids (and its merged `model_fingerprint` column) and find its record."""
    ident = ResultIdentity(label=label, dataset=dataset, path=Path(path))
    for _, row in iter_csv(path):
        ident.task_ids.add(str(row.get("task_id", "")))
        ident.model_column = ident.model_column or row.get("model_fingerprint", "") or ""
    found = find_record(path)
    if found is not None and isinstance(found.record, SamplingRecord):
        ident.provenance, ident.record = found.ref, found.record
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
            a, b = ref.record, other.record
            diff = _first_difference(a.data_files.hashes() if a.data_files else {},
                                     b.data_files.hashes() if b.data_files else {})
            if diff:
                problems.append((dataset, f"{pair}: different data files: {diff}"))
            diff = _first_difference(a.env.packages if a.env else {}, b.env.packages if b.env else {})
            if diff:
                problems.append((dataset, f"{pair}: different env/grader package versions: {diff}"))
            diff = _first_difference(a.env.code_files if a.env else {}, b.env.code_files if b.env else {})
            if diff:
                problems.append((dataset, f"{pair}: different env/grader code: {diff}"))
    return problems


IDENTITY_HEADER = ["model", "dataset", "eval set (n)", "model fingerprint", "data files", "env/grader", "commit"]


def identity_rows(idents: Sequence[ResultIdentity]) -> list[list[str]]:
    """One row per result file for the provenance footer of a score table."""
    rows = []
    for ident in idents:
        record = ident.record
        git = record.environment.git if record and record.environment else None
        commit = abbreviated(git.commit, 10) + ("+dirty" if git.dirty else "") if git else "–"
        env = "–"
        if record:
            packages = ", ".join(f"{k} {v}" for k, v in (record.env.packages if record.env else {}).items())
            env = abbreviated(record.env.code_sha256 if record.env else None, 8) + (f" ({packages})" if packages else "")
        data_files = record.data_files.sha256 if record and record.data_files else None
        rows.append([ident.label, ident.dataset, f"{abbreviated(ident.eval_set)} ({len(ident.task_ids)})",
                     abbreviated(ident.model_fingerprint), abbreviated(data_files) if record else "–", env, commit])
    return rows
