"""Append-only outputs of one shard: the task CSV, the tree dump and the per-task resume journal.

    writer = ShardWriter(out_dir, "gsm8k.train.0", tree=True)
    done = writer.open()                     # finished task ids; repairs what a kill left behind
    journal = writer.journal(task_id)        # .records() (journaled nodes), .append(record)
    writer.finish_task(row, tree_records)    # tree lines, then the CSV row (the commit), then drop journal

Every write appends whole lines, then flushes and fsyncs, so a process killed at any moment loses at
most the line being written. Finishing a task costs time proportional to that task's data only.
On `open()`: a torn last line is cut off, tree-dump lines of unfinished tasks are dropped (they are
rewritten when the task finishes) and journals of finished tasks are removed. A shard or tree dump
that cannot be read (bytes that are not UTF-8, a malformed line) is a `CorruptFileError` naming the
file and line; damaged lines of a resume journal are dropped (those nodes are generated again).
With a `lock` (densepolicy.file_lock), every commit first checks that this process still holds it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from densepolicy.postprocess.results_io import CorruptFileError, iter_jsonl, undecodable

log = logging.getLogger(__name__)

CSV_COLUMNS = ["task_id", "dataset", "split", "method", "model", "status", "score", "turns", "steps", "runs",
               "nodes", "pairs", "prompt_tokens", "completion_tokens", "wall_time_s", "task_type", "target",
               "history", "extra"]
JSON_CELLS = ("history", "extra")


def _fsync_append(handle: io.TextIOBase, text: str) -> None:
    handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())


def _cut_torn_tail(path: Path) -> None:
    """Truncate `path` after its last newline (drops a line a killed writer left half-written)."""
    if not path.exists():
        return
    with path.open("rb+") as fh:
        data_end = fh.seek(0, os.SEEK_END)
        if data_end == 0:
            return
        pos, chunk = data_end, 65536
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            block = fh.read(pos - start)
            idx = block.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                if keep != data_end:
                    log.warning("%s: dropping a torn last line (%d bytes)", path, data_end - keep)
                    fh.truncate(keep)
                return
            pos = start
        log.warning("%s: dropping a torn first line", path)
        fh.truncate(0)


def csv_line(row: dict[str, Any]) -> str:
    """One CSV record on one physical line (JSON cells never contain raw newlines; text cells are flattened)."""
    cells = []
    for col in CSV_COLUMNS:
        value = row.get(col, "")
        if col in JSON_CELLS:
            value = json.dumps(value if value != "" else ([] if col == "history" else {}), ensure_ascii=False)
        elif value is None:
            value = ""
        elif isinstance(value, float):
            value = repr(value)
        else:
            value = re.sub(r"[\r\n]+", " ", str(value))
        cells.append(value)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


class TaskJournal:
    """Append-only JSONL of a task's finished nodes (fsynced per node)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: list[dict[str, Any]] = []
        if path.exists():
            _cut_torn_tail(path)
            self._load()
        self._handle = None

    def _load(self) -> None:
        """Read the journaled records; from the first damaged line on, the journal is cut off."""
        offset = 0
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    record = json.loads(raw.decode("utf-8")) if raw.strip() else {}
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
                    log.warning("%s:%d: damaged journal line (%s); dropping it and every line after it "
                                "(those nodes are generated again)", self.path, number, exc)
                    break
                if record:
                    self._records.append(record)
                offset += len(raw)
            else:
                return
        with self.path.open("rb+") as fh:
            fh.truncate(offset)

    def records(self) -> list[dict[str, Any]]:
        """Nodes journaled by earlier (killed) runs of this task."""
        return list(self._records)

    def append(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        _fsync_append(self._handle, json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class ShardWriter:
    """The files of shard `stem` under `out_dir` (see docs/formats.md)."""

    def __init__(self, out_dir: str | os.PathLike, stem: str, tree: bool, lock: Any = None) -> None:
        self.out_dir = Path(out_dir)
        self.lock = lock
        self.stem = stem
        self.csv_path = self.out_dir / f"{stem}.csv"
        self.tree_path = self.out_dir / "trees" / f"{stem}.jsonl" if tree else None
        self.state_dir = self.out_dir / "state" / stem
        self.done: set[str] = set()
        self._csv = None
        self._tree = None

    def open(self) -> set[str]:
        """Prepare the files for appending and return the ids of tasks already finished."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(self.csv_path)
        if self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            self.done = self._finished_tasks()
        self._csv = self.csv_path.open("a", encoding="utf-8", newline="")
        if self._csv.tell() == 0:
            _fsync_append(self._csv, ",".join(CSV_COLUMNS) + "\n")
        if self.tree_path is not None:
            self.tree_path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_unfinished_tree_lines()
            self._tree = self.tree_path.open("a", encoding="utf-8")
        if self.state_dir.exists():
            for path in self.state_dir.glob("*.jsonl"):
                task_id = self._journal_task_id(path)
                if task_id in self.done:
                    path.unlink()
        return set(self.done)

    def _finished_tasks(self) -> set[str]:
        """Task ids of the shard's rows; a shard that cannot be read is a `CorruptFileError` (file:line)."""
        reader = None
        try:
            with self.csv_path.open("r", encoding="utf-8", newline="") as fh:
                reader = csv.reader(fh, strict=True)
                header = next(reader)
                if header != CSV_COLUMNS:
                    raise CorruptFileError(self.csv_path, 1, f"unexpected header {header[:5]}...; not a shard "
                                                             f"file of this version (choose another --output_dir)")
                return {cells[0] for cells in reader if cells}
        except UnicodeDecodeError as exc:
            raise undecodable(self.csv_path, exc) from None
        except csv.Error as exc:
            raise CorruptFileError(self.csv_path, reader.line_num if reader else 1, f"malformed CSV ({exc})") from None

    def _drop_unfinished_tree_lines(self) -> None:
        assert self.tree_path is not None
        _cut_torn_tail(self.tree_path)
        if not self.tree_path.exists():
            return
        stale = False
        for number, record in iter_jsonl(self.tree_path):  # also validates: names file:line of a bad line
            if "task_id" not in record:
                raise CorruptFileError(self.tree_path, number, "tree node without a task_id")
            stale = stale or record["task_id"] not in self.done
        if not stale:
            return
        tmp = self.tree_path.with_suffix(".jsonl.tmp")
        with self.tree_path.open("r", encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            for line in src:
                if line.strip() and json.loads(line)["task_id"] in self.done:
                    dst.write(line)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.tree_path)
        log.info("%s: dropped tree lines of unfinished tasks", self.tree_path)

    def _journal_path(self, task_id: str) -> Path:
        digest = hashlib.sha1(task_id.encode()).hexdigest()[:12]
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task_id)[-60:]
        return self.state_dir / f"{safe}.{digest}.jsonl"

    def _journal_task_id(self, path: Path) -> str | None:
        try:
            with path.open("r", encoding="utf-8") as fh:
                first = fh.readline()
            return json.loads(first).get("task_id") if first.strip() else None
        except (OSError, ValueError):
            return None

    def journal(self, task_id: str) -> "BoundJournal":
        """The resume journal of `task_id` (records written by killed runs are loaded)."""
        return BoundJournal(TaskJournal(self._journal_path(task_id)), task_id)

    def finish_task(self, row: dict[str, Any], tree_records: Iterable[dict[str, Any]] = ()) -> None:
        """Append the task's tree dump, then its CSV row (the commit point), then drop its journal."""
        if self.lock is not None:
            self.lock.check()  # never write next to a process that took the shard over
        if self._tree is not None:
            text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in tree_records)
            if text:
                _fsync_append(self._tree, text)
        _fsync_append(self._csv, csv_line(row))
        self.done.add(str(row["task_id"]))
        self._journal_path(str(row["task_id"])).unlink(missing_ok=True)

    def close(self) -> None:
        for handle in (self._csv, self._tree):
            if handle is not None:
                handle.close()
        self._csv = self._tree = None


class BoundJournal:
    """A `TaskJournal` whose records carry the task id (so orphaned journals can be identified)."""

    def __init__(self, journal: TaskJournal, task_id: str) -> None:
        self._journal, self.task_id = journal, task_id

    def records(self) -> list[dict[str, Any]]:
        return [r for r in self._journal.records() if r.get("task_id") == self.task_id]

    def append(self, record: dict[str, Any]) -> None:
        self._journal.append({"task_id": self.task_id, **record})

    def close(self) -> None:
        self._journal.close()
