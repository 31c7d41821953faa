"""The lock and the atomic JSON write of provenance's files (provenance.json, the hash cache).

The lock is the project's NFS-safe lock file (`densepolicy.file_lock.OutputLock`: `<file>.lock` beside the
file), not `flock`: Slurm runs write one run directory from several nodes, usually over NFS, where `flock` is
local to one client or depends on an unreliable lock daemon. A process that finds it held waits (an update
takes milliseconds); a holder that died is taken over (on this host at once, on another once its heartbeat is
stale).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from densepolicy.file_lock import OutputLock, lock_path
from densepolicy.results_io import json_text, write_text_atomic

log = logging.getLogger(__name__)

LOCK_POLL_S = 0.05
"""How often a process waiting for another's update retries (updates take milliseconds)."""


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold `target`'s NFS-safe lock (`<target>.lock` beside it, `file_lock.OutputLock`) for a read-modify-write
    of it (a provenance file, the hash cache), waiting while another process holds it. A holder that died is
    taken over (on this host at once, on another after its heartbeat is stale)."""
    lock = OutputLock(lock_path(target), "provenance update")
    lock.acquire_waiting(poll_s=LOCK_POLL_S, on_wait=lambda holder: log.info("waiting for %s", holder))
    try:
        yield
    finally:
        lock.release()


def write_json(path: Path, obj: Any) -> None:
    """`results_io.write_text_atomic` of `obj` as JSON (values JSON cannot hold written as text)."""
    write_text_atomic(path, json_text(obj, indent=1, sort_keys=False, default=str) + "\n")
