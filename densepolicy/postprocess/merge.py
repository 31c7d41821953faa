"""Merge per-worker shard files into one `.None` result (docs/original.md §5, fixed as in docs/deviations.md).

    report = merge_distributed(data_dir, "math.train.{}.csv")

For the template `<prefix>{}<suffix>.csv` the shards are `<data_dir>/<prefix><K><suffix>.csv`
(K = 0, 1, …) with tree dumps `<data_dir>/trees/<prefix><K><suffix>.jsonl`. The merge

1. reads every new shard and every shard already archived in `distributed_result/` (so a re-run
   after more workers finished merges everything again: idempotent), failing with
   `CorruptFileError` (file + line) before anything is moved when a file is truncated or corrupt,
   when a row's `nodes` differs from the nodes its tree dump holds for the task (a lost tree line,
   a 0-byte dump), or when the run's `provenance.json` is damaged (`ConfigError` naming it);
2. keeps one row per task (the most complete one, later shards win ties) and writes, to temp files
   that are fsynced (a full disk or missing permission stops it here, `OutputWriteError`),
   `<prefix>None<suffix>.csv` plus `trees/<prefix>None<suffix>.jsonl` with exactly the nodes of
   the kept rows (from the same shard as the kept row);
3. only then moves the new shards and their tree dumps to `distributed_result/` (and
   `distributed_result/trees/`), renaming to `<prefix><K>~<n><suffix>` when the name is taken
   (nothing is ever deleted), and renames the merged files into place;
4. reports missing shard ids, unfinished tasks (resume journals left in `state/`) and duplicates.

It holds the lock of the merged file and of every new shard while it runs (densepolicy.file_lock):
a shard still being written by a worker, or a second merge, is refused with `LockHeldError` naming
the holder's pid and host. A 0-byte shard is refused like a corrupt one. Each shard's settings record
(`<shard>.settings.json`, written by the worker) moves with it, and shards made with different
settings are refused (`MergeError` naming the key), so no sequence of runs can mix them.

Both passes stream the files; memory holds one small record per task.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from densepolicy.file_lock import OutputLock, lock_path, terminate_on_signals
from densepolicy.results_io import (CorruptFileError, atomic_open, iter_csv, iter_jsonl, read_csv_header,
                                    writing)
from densepolicy.sampling.shard_identity import read_settings, settings_diffs, settings_path
from densepolicy.postprocess.output_records import merged_columns
from densepolicy.provenance import FILE_NAME as PROVENANCE_FILE
from densepolicy.provenance import read_provenance

logger = logging.getLogger(__name__)

ARCHIVE_DIR = "distributed_result"
TREES_DIR = "trees"


class MergeError(ValueError):
    """The merge cannot run (bad template, no shards); the message says why."""


@dataclass
class Shard:
    """One shard CSV and its (optional) tree dump."""

    csv: Path
    tree: Path | None
    shard_id: int
    copy: int  # 0 for the first archived copy of shard K, n for `<K>~<n>`
    settings: Path | None = None  # the worker's `<shard>.settings.json`, if any

    @property
    def order(self) -> tuple[int, int]:
        return (self.shard_id, self.copy)


@dataclass
class MergeReport:
    """What the merge did; `summary()` is the text printed to the user."""

    output_csv: Path
    output_tree: Path | None
    shards: list[Shard] = field(default_factory=list)
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    rows_read: int = 0
    rows_kept: int = 0
    duplicates_dropped: int = 0
    duplicate_tasks: list[str] = field(default_factory=list)
    nodes_written: int = 0
    missing_shards: list[int] = field(default_factory=list)
    missing_tasks: list[str] = field(default_factory=list)
    unfinished_shards: list[int] = field(default_factory=list)
    tasks_without_tree: list[str] = field(default_factory=list)
    mean_score: float | None = None
    score_kind: str = "accuracy"

    def summary(self) -> str:
        lines = [f"merged {len(self.shards)} shard file(s), {self.rows_read} rows -> {self.rows_kept} tasks "
                 f"in {self.output_csv}"]
        if self.moved:
            lines.append(f"moved {len(self.moved)} file(s) to {self.output_csv.parent / ARCHIVE_DIR}/")
        if self.duplicates_dropped:
            shown = ", ".join(self.duplicate_tasks[:5]) + (" …" if len(self.duplicate_tasks) > 5 else "")
            lines.append(f"dropped {self.duplicates_dropped} duplicate row(s) of {len(self.duplicate_tasks)} "
                         f"task(s), kept the most complete: {shown}")
        if self.output_tree is not None:
            lines.append(f"tree nodes: {self.nodes_written} in {self.output_tree}")
        if self.tasks_without_tree:
            lines.append(f"WARNING: {len(self.tasks_without_tree)} tree task(s) have no nodes in their "
                         f"shard's tree dump: {', '.join(self.tasks_without_tree[:5])}")
        if self.missing_shards:
            lines.append(f"WARNING: missing shard id(s): {', '.join(map(str, self.missing_shards))}")
        if self.missing_tasks:
            shown = ", ".join(self.missing_tasks[:10]) + (" …" if len(self.missing_tasks) > 10 else "")
            lines.append(f"WARNING: {len(self.missing_tasks)} expected task(s) have no row: {shown}")
        if self.unfinished_shards:
            lines.append("WARNING: shard(s) with tasks still in progress (resume journal in state/): "
                         + ", ".join(map(str, self.unfinished_shards)))
        if self.mean_score is not None:
            lines.append(f"mean score ({self.score_kind}): {100 * self.mean_score:.2f}")
        return "\n".join(lines)


def _split_template(template: str) -> tuple[str, str]:
    if template.count("{}") != 1:
        raise MergeError(f"dataset file name template {template!r} must contain exactly one '{{}}'")
    if not template.endswith(".csv"):
        raise MergeError(f"dataset file name template {template!r} must end with .csv")
    prefix, suffix = template.split("{}")
    if "/" in prefix or "/" in suffix:
        raise MergeError(f"template {template!r} must be a file name; put the directory in --data_dir")
    return prefix, suffix


def tree_name(csv_name: str) -> str:
    """`math.train.3.csv` -> `math.train.3.jsonl` (the tree dump next to a shard)."""
    return csv_name[: -len(".csv")] + ".jsonl"


def merged_paths(data_dir: Path, template: str) -> tuple[Path, Path]:
    """The merged CSV and tree dump of a template (`{}` = `None`)."""
    name = template.format("None")
    return data_dir / name, data_dir / TREES_DIR / tree_name(name)


def find_shards(data_dir: Path, template: str) -> tuple[list[Shard], list[Shard]]:
    """(new shards in `data_dir`, archived shards in `data_dir/distributed_result`), each sorted."""
    prefix, suffix = _split_template(template)
    pattern = re.compile(re.escape(prefix) + r"(\d+)(?:~(\d+))?" + re.escape(suffix[:-4]) + r"\.csv")

    def scan(directory: Path, allow_copy: bool) -> list[Shard]:
        shards = []
        if not directory.is_dir():
            return shards
        for entry in os.scandir(directory):
            match = pattern.fullmatch(entry.name)
            if not match or not entry.is_file() or (match.group(2) and not allow_copy):
                continue
            tree = directory / TREES_DIR / tree_name(entry.name)
            settings = settings_path(Path(entry.path))
            shards.append(Shard(Path(entry.path), tree if tree.is_file() else None,
                                int(match.group(1)), int(match.group(2) or 0),
                                settings if settings.is_file() else None))
        return sorted(shards, key=lambda s: s.order)

    return scan(data_dir, allow_copy=False), scan(data_dir / ARCHIVE_DIR, allow_copy=True)


def _completeness(row: dict[str, str]) -> tuple:
    """Sort key: which of several rows of one task to keep (larger = more complete)."""
    def num(key: str) -> float:
        try:
            return float(row.get(key) or 0)
        except ValueError:
            return 0.0
    status = row.get("status", "")
    return (status not in ("error", ""), row.get("score", "") != "", num("runs"), num("nodes"),
            num("steps"), len(row.get("history", "")))


def _archive_target(archive: Path, template: str, shard: Shard) -> tuple[Path, Path | None, int]:
    """First free `<K>` / `<K>~<n>` name in the archive for the CSV and its tree dump."""
    for copy in range(0, 10_000):
        name = template.format(shard.shard_id if copy == 0 else f"{shard.shard_id}~{copy}")
        csv_target = archive / name
        tree_target = archive / TREES_DIR / tree_name(name)
        if not csv_target.exists() and not tree_target.exists() and not settings_path(csv_target).exists():
            return csv_target, (tree_target if shard.tree else None), copy
    raise MergeError(f"too many archived copies of {shard.csv.name} in {archive}")


def _recover_interrupted_moves(data_dir: Path, template: str, archived: list[Shard]) -> None:
    """A merge killed between moving a shard CSV and its tree dump left the dump behind: move it now."""
    latest: dict[int, Shard] = {}
    for shard in archived:
        if shard.shard_id not in latest or shard.copy > latest[shard.shard_id].copy:
            latest[shard.shard_id] = shard
    for shard in latest.values():
        name = template.format(shard.shard_id)
        left_behind = data_dir / TREES_DIR / tree_name(name)
        if shard.tree is None and left_behind.is_file() and not (data_dir / name).exists():
            target = shard.csv.parent / TREES_DIR / tree_name(shard.csv.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(left_behind), target)
            shard.tree = target
            logger.warning("moved %s left behind by an interrupted merge to %s", left_behind, target)
        settings_left = settings_path(data_dir / name)
        if shard.settings is None and settings_left.is_file() and not (data_dir / name).exists():
            shard.settings = settings_path(shard.csv)
            shutil.move(str(settings_left), shard.settings)
            logger.warning("moved %s left behind by an interrupted merge to %s", settings_left, shard.settings)


def _check_same_settings(shards: Iterable[Shard]) -> None:
    """Refuse shards whose workers' settings records differ (a `MergeError` naming the keys and files)."""
    first: tuple[Path, dict] | None = None
    for shard in shards:
        if shard.settings is None:
            continue
        settings = read_settings(shard.settings)
        if first is None:
            first = (shard.csv, settings)
            continue
        diffs = settings_diffs(first[1], settings)
        if diffs:
            raise MergeError(f"{first[0]} and {shard.csv} were made with different settings ({'; '.join(diffs)}); "
                             f"nothing was moved: merge them in separate directories")


def _validate(shards: Iterable[Shard]) -> None:
    """Read every file once so that a corrupt one stops the merge before anything moves."""
    for shard in shards:
        for _ in iter_csv(shard.csv):
            pass
        if shard.tree is not None:
            for _ in iter_jsonl(shard.tree):
                pass


def manifest_num_shards(data_dir: Path) -> int | None:
    """Number of shards recorded by the launcher in `run_manifest.json`, if any."""
    path = data_dir / "run_manifest.json"
    try:
        value = json.loads(path.read_text()).get("num_shards") if path.is_file() else None
    except (OSError, ValueError, AttributeError):  # unreadable: only the missing-shards report needs it
        return None
    return value if isinstance(value, int) and value > 0 else None


def _check_tree_counts(shards: Iterable[Shard]) -> None:
    """Refuse (`CorruptFileError`, `csv:line`) a row whose `nodes` cell differs from the number of
    nodes its shard's tree dump holds for the task (a lost or cut tree line, a 0-byte or missing
    dump): the worker, rerun with the same command, runs such a task again."""
    for shard in shards:
        counts: dict[str, set[str]] = {}
        if shard.tree is not None:
            for _, record in iter_jsonl(shard.tree):
                counts.setdefault(str(record.get("task_id")), set()).add(str(record.get("node_id")))
        for line, row in iter_csv(shard.csv):
            try:
                expected = int(float(row.get("nodes") or 0))
            except ValueError:
                raise CorruptFileError(shard.csv, line, f"'nodes' cell {row.get('nodes')!r} is not a number") from None
            found = len(counts.get(str(row.get("task_id")), ()))
            if expected != found and (shard.tree is not None or expected > 0):
                where = shard.tree if shard.tree is not None else f"its tree dump (missing: {TREES_DIR}/"\
                    f"{tree_name(shard.csv.name)})"
                raise CorruptFileError(shard.csv, line, f"task {row.get('task_id')!r} records {expected} tree "
                                       f"node(s) but {where} holds {found}; rerun that shard's worker with the "
                                       f"same command (it runs the task again), then merge")


def _check_writable(directories: Iterable[Path]) -> None:
    """Create the directories the merge writes to and check they are writable (`OutputWriteError`)."""
    for directory in directories:
        with writing(directory, rerun="rerun the merge (nothing was moved)"):
            directory.mkdir(parents=True, exist_ok=True)
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "Permission denied", str(directory))


def merge_distributed(data_dir: str | os.PathLike, template: str, num_shards: int | None = None,
                      expected_tasks: Iterable[str] | None = None, show_progress: bool = True) -> MergeReport:
    """Merge the shards of `template` in `data_dir`; see the module docstring.

    `num_shards` (default: the launcher's run_manifest.json) and `expected_tasks` only feed the
    report of missing shards / tasks. The shards are listed with the merged file's lock held (so a
    concurrent merge cannot move them away in between); SIGTERM releases every lock.
    """
    data_dir = Path(data_dir)
    _split_template(template)
    num_shards = num_shards or manifest_num_shards(data_dir)
    if not data_dir.is_dir():
        raise MergeError(f"--data_dir {data_dir} is not a directory")
    out_csv, out_tree = merged_paths(data_dir, template)
    locks: list[OutputLock] = []
    with terminate_on_signals():
        try:
            locks.append(OutputLock(lock_path(out_csv), "merge").acquire())  # before listing: one merge at a time
            new, archived = find_shards(data_dir, template)
            if not new and not archived:
                raise MergeError(f"no shard files match {template!r} in {data_dir} or {data_dir / ARCHIVE_DIR}")
            for shard in new:  # a worker still writing a shard refuses the merge
                locks.append(OutputLock(lock_path(shard.csv), "merge").acquire())
            return _merge_shards(data_dir, template, num_shards, expected_tasks, show_progress, new, archived,
                                 out_csv, out_tree)
        finally:
            for lock in locks:
                lock.release()


def _merge_shards(data_dir: Path, template: str, num_shards: int | None, expected_tasks: Iterable[str] | None,
                  show_progress: bool, new: list[Shard], archived: list[Shard], out_csv: Path,
                  out_tree: Path) -> MergeReport:
    """The merge proper, with the locks of the merged file and of the new shards held.

    Everything is checked and the merged files are written (to temp files) from where the shards
    are now; only then are the new shards moved to the archive and the merged files renamed into
    place. A merge that fails (a damaged file, a full disk, no permission) has moved nothing."""
    report = MergeReport(output_csv=out_csv, output_tree=None)

    _recover_interrupted_moves(data_dir, template, archived)
    read_provenance(data_dir / PROVENANCE_FILE)  # a damaged side file stops us before anything moves
    _validate(tqdm(new + archived, desc="checking shards", unit="file", disable=not show_progress))
    _check_same_settings(new + archived)
    _check_tree_counts(new + archived)

    archive = data_dir / ARCHIVE_DIR
    with_trees = any(s.tree is not None for s in new + archived)
    _check_writable([data_dir, archive] + ([out_tree.parent] if with_trees else [])
                    + ([archive / TREES_DIR] if any(s.tree is not None for s in new) else []))
    moves: list[tuple[Shard, Shard]] = []  # (where it is now, where it goes)
    for shard in new:
        csv_target, tree_target, copy = _archive_target(archive, template, shard)
        moves.append((shard, Shard(csv_target, tree_target, shard.shard_id, copy,
                                   settings_path(csv_target) if shard.settings is not None else None)))
    staged = archived + [Shard(s.csv, s.tree, t.shard_id, t.copy, s.settings) for s, t in moves]
    shards = sorted(staged, key=lambda s: s.order)
    report.shards = sorted(archived + [t for _, t in moves], key=lambda s: s.order)

    # pass 1: pick the row to keep for every task
    best: dict[str, tuple[tuple, int, int]] = {}  # task_id -> (completeness, shard index, line)
    seen_count: dict[str, int] = {}
    header: list[str] = []
    for index, shard in enumerate(tqdm(shards, desc="merging shards", unit="file", disable=not show_progress)):
        for column in read_csv_header(shard.csv) if shard.csv.stat().st_size else []:
            if column not in header:
                header.append(column)
        for line, row in iter_csv(shard.csv):
            report.rows_read += 1
            task = row.get("task_id")
            if task is None:
                raise CorruptFileError(shard.csv, 1, "no task_id column")
            seen_count[task] = seen_count.get(task, 0) + 1
            key = (_completeness(row), index, line)
            if task not in best or key >= best[task]:
                best[task] = key
    report.duplicate_tasks = sorted(t for t, n in seen_count.items() if n > 1)
    report.duplicates_dropped = sum(seen_count[t] - 1 for t in report.duplicate_tasks)
    keep = {(index, line) for _, index, line in best.values()}
    source_of_task = {task: index for task, (_, index, _) in best.items()}

    # pass 2: write the kept rows (original order) and the matching tree nodes, to temp files
    scores: list[float] = []
    tree_tasks: set[str] = set()

    def kept_rows():
        for index, shard in enumerate(shards):
            for line, row in iter_csv(shard.csv):
                if (index, line) in keep:
                    report.rows_kept += 1
                    try:
                        scores.append(float(row.get("score") or 0))
                    except ValueError:
                        pass
                    if row.get("status") == "done":
                        tree_tasks.add(row["task_id"])
                    yield row

    with contextlib.ExitStack() as commit:  # on a clean exit the temp files are renamed onto the outputs
        stamp = merged_columns(data_dir, out_csv.name, best)  # eval-set hash + model fingerprint on every row
        fh = commit.enter_context(atomic_open(out_csv, "w", encoding="utf-8", newline=""))
        writer = csv.DictWriter(fh, fieldnames=header + [c for c in stamp if c not in header])
        writer.writeheader()
        for row in kept_rows():
            writer.writerow({**row, **stamp})
        with writing(out_csv, rerun="rerun the merge (nothing was moved)"):
            fh.flush()
            os.fsync(fh.fileno())  # a full disk shows here, before anything is moved

        if any(shard.tree is not None for shard in shards):
            report.output_tree = out_tree
            tasks_with_nodes: set[str] = set()
            th = commit.enter_context(atomic_open(out_tree, "w", encoding="utf-8"))
            for index, shard in enumerate(shards):
                if shard.tree is None:
                    continue
                written: set[tuple[str, str]] = set()
                with shard.tree.open("r", encoding="utf-8") as src:
                    for raw in src:
                        if not raw.strip():
                            continue
                        record = _task_and_node(raw, shard.tree)
                        if source_of_task.get(record[0]) != index or record in written:
                            continue
                        written.add(record)
                        tasks_with_nodes.add(record[0])
                        th.write(raw if raw.endswith("\n") else raw + "\n")
                        report.nodes_written += 1
            with writing(out_tree, rerun="rerun the merge (nothing was moved)"):
                th.flush()
                os.fsync(th.fileno())  # a full disk shows here, before anything is moved
            report.tasks_without_tree = sorted(tree_tasks - tasks_with_nodes)

        # everything is written: now move the new shards (CSV first: a crash leaves the tree dump behind,
        # which the next merge moves after it, never an orphan CSV row)
        for shard, target in moves:
            shutil.move(str(shard.csv), target.csv)
            report.moved.append((shard.csv, target.csv))
            if shard.tree is not None and target.tree is not None:
                shutil.move(str(shard.tree), target.tree)
                report.moved.append((shard.tree, target.tree))
            if shard.settings is not None and target.settings is not None:
                shutil.move(str(shard.settings), target.settings)
                report.moved.append((shard.settings, target.settings))

    ids = sorted({s.shard_id for s in shards})
    expected = range(num_shards) if num_shards else range(max(ids) + 1)
    report.missing_shards = [k for k in expected if k not in ids]
    if expected_tasks is not None:
        report.missing_tasks = [t for t in expected_tasks if t not in best]
    state_dir = data_dir / "state"
    if state_dir.is_dir():
        prefix, suffix = _split_template(template)
        for k in ids:
            journal = state_dir / f"{prefix}{k}{suffix[:-4]}"
            if journal.is_dir() and any(journal.iterdir()):
                report.unfinished_shards.append(k)
    if scores:
        report.mean_score = sum(scores) / len(scores)
        report.score_kind = "tree coverage" if tree_tasks else "accuracy"
    return report


def _task_and_node(raw: str, path: Path) -> tuple[str, str]:
    obj = json.loads(raw)  # already validated in _validate
    return str(obj.get("task_id")), str(obj.get("node_id"))
