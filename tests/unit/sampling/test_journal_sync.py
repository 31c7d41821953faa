"""Resume journals are flushed per node and fsynced in batches by a background thread (issue 18 item 7):
the event loop never waits for a journal fsync, lines are on disk for a reader (and survive a kill) at
once, a failed background fsync is raised by the next append, and `JOURNAL_SYNC_INTERVAL_S = 0` is the
old per-node fsync on the caller's thread."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from densepolicy.results_io import OutputWriteError
from densepolicy.sampling import shard_writer
from densepolicy.sampling.shard_writer import TaskJournal


@pytest.fixture
def fsyncs(monkeypatch):
    """Record the thread of every os.fsync (optionally failing them)."""
    calls: list[str] = []
    state = {"fail": False}
    real = os.fsync

    def fsync(fd):
        calls.append(threading.current_thread().name)
        if state["fail"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return calls, state


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_journal_lines_are_written_at_once_and_fsynced_by_the_background_thread(tmp_path, fsyncs):
    calls, _ = fsyncs
    path = tmp_path / "state" / "t.jsonl"
    journal = TaskJournal(path)
    for n in range(5):
        journal.append({"task_id": "t", "n": n})
    assert len(path.read_text().splitlines()) == 5        # flushed: a killed process loses nothing
    assert threading.current_thread().name not in calls   # the caller never waited for an fsync
    assert _wait(lambda: "journal-fsync" in calls)
    assert len(calls) < 5                                 # batched: fewer fsyncs than lines
    journal.close()
    assert TaskJournal(path).records() == [{"task_id": "t", "n": n} for n in range(5)]


def test_close_fsyncs_what_the_syncer_has_not_synced(tmp_path, fsyncs, monkeypatch):
    calls, _ = fsyncs
    monkeypatch.setattr(shard_writer, "JOURNAL_SYNC_INTERVAL_S", 60.0)   # the syncer will not come in time
    journal = TaskJournal(tmp_path / "t.jsonl")
    journal.append({"task_id": "t"})
    journal.close()
    assert calls and calls[-1] == threading.current_thread().name


def test_a_failed_background_fsync_is_raised_by_the_next_append_naming_the_file(tmp_path, fsyncs):
    calls, state = fsyncs
    state["fail"] = True
    path = tmp_path / "t.jsonl"
    journal = TaskJournal(path)
    journal.append({"task_id": "t", "n": 1})
    assert _wait(lambda: "journal-fsync" in calls)
    assert _wait(lambda: journal._sync_error is not None)
    with pytest.raises(OutputWriteError, match=str(path)):
        journal.append({"task_id": "t", "n": 2})


def test_interval_zero_is_the_old_per_node_fsync(tmp_path, fsyncs, monkeypatch):
    calls, _ = fsyncs
    monkeypatch.setattr(shard_writer, "JOURNAL_SYNC_INTERVAL_S", 0)
    journal = TaskJournal(tmp_path / "t.jsonl")
    for n in range(3):
        journal.append({"task_id": "t", "n": n})
    assert calls == [threading.current_thread().name] * 3
    journal.close()
