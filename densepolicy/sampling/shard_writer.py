"""Append-only outputs of one shard: the task CSV, the tree dump and the per-task resume journal.

    writer = ShardWriter(out_dir, "gsm8k.train.0", tree=True)
    done = writer.open()                     # finished task ids; repairs what a kill left behind
    journal = writer.journal(task_id)        # .records() (journaled nodes), .append(record)
    writer.finish_task(row, tree_records)    # tree lines, then the CSV row (the commit), then drop journal

Every write appends whole lines and flushes them to the kernel at once, so a process killed at any moment
loses at most the line being written. The task CSV and the tree dump are fsynced on every commit; the resume
journals are fsynced in batches, off the event loop: a background thread syncs every journal with new lines
each `JOURNAL_SYNC_INTERVAL_S` (0.2 s), and a journal is synced before it is closed. So only an OS crash or
power loss can lose journal lines, at most those of the last interval, and a lost node is generated again
on resume (the journal is a cache). A failed background fsync (disk full, ...) is raised by the journal's
next `append` or `close`, as `OutputWriteError` naming the file. Finishing a task costs time proportional
to that task's data only.
On `open()`: a torn last line is cut off, a finished task whose tree dump does not hold the node count of
its CSV row runs again (its row and tree lines are dropped, with a WARNING), tree-dump lines of unfinished
tasks are dropped (they are rewritten when the task finishes) and journals of finished tasks are removed.
JSONL lines are written with `results_io.json_line` (U+2028/U+2029 and lone surrogates escaped, so any line
splitter reads them and a reply UTF-8 cannot encode is kept exactly); a full disk, a read-only file system
or missing permissions raise `OutputWriteError` naming the file. A shard or tree dump
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
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from densepolicy.results_io import (CorruptFileError, atomic_open, iter_jsonl, json_line, json_text, undecodable,
                                    without_surrogates, writing)

log = logging.getLogger(__name__)

CSV_COLUMNS = ["task_id", "dataset", "split", "method", "model", "status", "score", "turns", "steps", "runs",
               "nodes", "pairs", "prompt_tokens", "completion_tokens", "wall_time_s", "task_type", "target",
               "history", "extra"]
JSON_CELLS = ("history", "extra")


def _fsync_append(handle: io.TextIOBase, text: str, path: str | os.PathLike | None = None) -> None:
    """Append `text`, flush and fsync; a full disk / read-only / permission error names `path`."""
    with writing(path or getattr(handle, "name", "?")):
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
            value = json_text(value if value != "" else ([] if col == "history" else {}))
        elif value is None:
            value = ""
        elif isinstance(value, float):
            value = repr(value)
        else:
            value = without_surrogates(re.sub(r"[\r\n]+", " ", str(value)))
        cells.append(value)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


JOURNAL_SYNC_INTERVAL_S = 0.2
"""Seconds between the background fsyncs of the resume journals; 0 = fsync every node on the caller's
thread (the behaviour before batching, kept for `benchmarks/bench_tree_sampler.py --journal_fsync per_node`)."""


class _JournalSyncer:
    """One daemon thread per process that fsyncs the journals holding unsynced lines, every interval."""

    def __init__(self) -> None:
        self._dirty: weakref.WeakSet[TaskJournal] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def mark(self, journal: TaskJournal) -> None:
        with self._lock:
            self._dirty.add(journal)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="journal-fsync", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(max(JOURNAL_SYNC_INTERVAL_S, 0.01))
            with self._lock:
                batch = list(self._dirty)
                self._dirty.clear()
            for journal in batch:
                journal.sync()


_SYNCER = _JournalSyncer()


class TaskJournal:
    """Append-only JSONL of a task's finished nodes (flushed per node, fsynced in batches: see the module
    docstring and `JOURNAL_SYNC_INTERVAL_S`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: list[dict[str, Any]] = []
        if path.exists():
            _cut_torn_tail(path)
            self._load()
        self._handle = None
        self._lock = threading.Lock()   # handle and state shared with the syncer thread
        self._dirty = False             # lines written since the last fsync
        self._syncing = 0               # background fsyncs in progress
        self._sync_error: OSError | None = None

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
        """Write one node's line (flushed at once; fsynced now if `JOURNAL_SYNC_INTERVAL_S` is 0, else by
        the background syncer within that interval)."""
        line = json_line(record)
        with self._lock, writing(self.path):
            self._raise_sync_error()
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = self.path.open("a", encoding="utf-8")
            self._handle.write(line)
            self._handle.flush()
            if JOURNAL_SYNC_INTERVAL_S <= 0:
                os.fsync(self._handle.fileno())
                return
            self._dirty = True
        _SYNCER.mark(self)

    def sync(self) -> None:
        """fsync the lines written so far (called by the syncer thread; the caller's thread never waits for
        it: the fsync runs on a duplicate of the descriptor, outside the lock). An error is kept and raised
        by the next `append` or `close`."""
        with self._lock:
            if not self._dirty or self._handle is None:
                return
            self._dirty = False
            self._syncing += 1
            fd = os.dup(self._handle.fileno())
        try:
            os.fsync(fd)
        except OSError as exc:
            with self._lock:
                self._sync_error = self._sync_error or exc
        finally:
            os.close(fd)
            with self._lock:
                self._syncing -= 1

    def _raise_sync_error(self) -> None:
        if self._sync_error is not None:
            exc, self._sync_error = self._sync_error, None
            raise exc

    def close(self) -> None:
        """fsync what the syncer has not synced yet, then close (a failed fsync raises `OutputWriteError`)."""
        with self._lock, writing(self.path):
            handle, self._handle = self._handle, None
            if handle is None:
                return
            try:
                self._raise_sync_error()
                if self._dirty or self._syncing:  # durable on return, also if a background fsync is running
                    os.fsync(handle.fileno())
                    self._dirty = False
            finally:
                handle.close()

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
        self._csv_nodes: dict[str, int] = {}
        self._csv = None
        self._tree = None

    def open(self) -> set[str]:
        """Prepare the files for appending and return the ids of tasks already finished.

        A finished task whose tree dump does not hold the number of nodes its CSV row records (a
        tree line lost or cut while the CSV row survived) is not finished: its row and its tree
        lines are dropped, with a WARNING, and it runs again."""
        with writing(self.csv_path):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _cut_torn_tail(self.csv_path)
        if self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            self.done = self._finished_tasks()
        if self.tree_path is not None:
            with writing(self.tree_path):
                self.tree_path.parent.mkdir(parents=True, exist_ok=True)
                _cut_torn_tail(self.tree_path)
            self._redo_mismatched_tasks()
        with writing(self.csv_path):
            self._csv = self.csv_path.open("a", encoding="utf-8", newline="")
        if self._csv.tell() == 0:
            _fsync_append(self._csv, ",".join(CSV_COLUMNS) + "\n", self.csv_path)
        if self.tree_path is not None:
            self._drop_unfinished_tree_lines()
            with writing(self.tree_path):
                self._tree = self.tree_path.open("a", encoding="utf-8")
        if self.state_dir.exists():
            for path in self.state_dir.glob("*.jsonl"):
                task_id = self._journal_task_id(path)
                if task_id in self.done:
                    path.unlink()
        return set(self.done)

    def _finished_tasks(self) -> set[str]:
        """Task ids of the shard's rows (their node counts go to `self._csv_nodes`); a shard that
        cannot be read is a `CorruptFileError` (file:line)."""
        reader = None
        nodes_col = CSV_COLUMNS.index("nodes")
        self._csv_nodes: dict[str, int] = {}
        try:
            with self.csv_path.open("r", encoding="utf-8", newline="") as fh:
                reader = csv.reader(fh, strict=True)
                header = next(reader)
                if header != CSV_COLUMNS:
                    raise CorruptFileError(self.csv_path, 1, f"unexpected header {header[:5]}...; not a shard "
                                                             f"file of this version (choose another --output_dir)")
                for cells in reader:
                    if not cells:
                        continue
                    try:
                        self._csv_nodes[cells[0]] = int(float(cells[nodes_col] or 0))
                    except (IndexError, ValueError):
                        raise CorruptFileError(self.csv_path, reader.line_num,
                                               f"'nodes' cell is not a number ({cells[nodes_col:nodes_col + 1]})"
                                               ) from None
                return set(self._csv_nodes)
        except UnicodeDecodeError as exc:
            raise undecodable(self.csv_path, exc) from None
        except csv.Error as exc:
            raise CorruptFileError(self.csv_path, reader.line_num if reader else 1, f"malformed CSV ({exc})") from None

    def tree_node_counts(self) -> dict[str, int]:
        """Distinct nodes per task in the tree dump (validates it: a bad line is `file:line`)."""
        assert self.tree_path is not None
        nodes: dict[str, set[str]] = {}
        if self.tree_path.exists():
            for number, record in iter_jsonl(self.tree_path):
                if "task_id" not in record:
                    raise CorruptFileError(self.tree_path, number, "tree node without a task_id")
                nodes.setdefault(str(record["task_id"]), set()).add(str(record.get("node_id")))
        return {task: len(ids) for task, ids in nodes.items()}

    def _redo_mismatched_tasks(self) -> None:
        """Drop the CSV row of every finished task whose tree dump lacks (or has extra) nodes."""
        if not self.done:
            return
        counts = self.tree_node_counts()
        wrong = {t for t in self.done if counts.get(t, 0) != self._csv_nodes.get(t, 0)}
        if not wrong:
            return
        for task in sorted(wrong):
            log.warning("%s: task %s: the CSV row records %d node(s), %s holds %d; running the task again",
                        self.csv_path, task, self._csv_nodes.get(task, 0), self.tree_path, counts.get(task, 0))
        with self.csv_path.open("r", encoding="utf-8", newline="") as src, \
                atomic_open(self.csv_path, "w", encoding="utf-8", newline="") as dst:
            writer = csv.writer(dst, lineterminator="\n")
            for number, cells in enumerate(csv.reader(src, strict=True)):
                if number == 0 or (cells and cells[0] not in wrong):
                    writer.writerow(cells)
        self.done -= wrong

    def _drop_unfinished_tree_lines(self) -> None:
        assert self.tree_path is not None
        if not self.tree_path.exists():
            return
        stale = False
        for number, record in iter_jsonl(self.tree_path):  # also validates: names file:line of a bad line
            if "task_id" not in record:
                raise CorruptFileError(self.tree_path, number, "tree node without a task_id")
            stale = stale or str(record["task_id"]) not in self.done
        if not stale:
            return
        with self.tree_path.open("r", encoding="utf-8") as src, atomic_open(self.tree_path, "w", encoding="utf-8") as dst:
            for line in src:
                if line.strip() and str(json.loads(line)["task_id"]) in self.done:
                    dst.write(line)
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

    def journal(self, task_id: str) -> BoundJournal:
        """The resume journal of `task_id` (records written by killed runs are loaded)."""
        return BoundJournal(TaskJournal(self._journal_path(task_id)), task_id)

    def finish_task(self, row: dict[str, Any], tree_records: Iterable[dict[str, Any]] = ()) -> None:
        """Append the task's tree dump, then its CSV row (the commit point), then drop its journal."""
        if self.lock is not None:
            self.lock.check()  # never write next to a process that took the shard over
        if self._tree is not None:
            text = "".join(json_line(rec) for rec in tree_records)
            if text:
                _fsync_append(self._tree, text, self.tree_path)
        _fsync_append(self._csv, csv_line(row), self.csv_path)
        self.done.add(str(row["task_id"]))
        self._csv_nodes[str(row["task_id"])] = int(float(row.get("nodes") or 0))
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
