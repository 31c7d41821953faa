"""The lock and the atomic JSON write of provenance's files (provenance.json, the hash cache)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from densepolicy.paths import cache_dir
from densepolicy.results_io import json_text, write_text_atomic


def _lock_path(target: Path) -> Path:
    """Lock files live in the cache, not beside outputs (unlinking a used lock file is racy)."""
    name = hashlib.sha1(str(target.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "provenance" / "locks" / f"{name}.lock"


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold the lock of `target` (a provenance file, the hash cache) for a read-modify-write."""
    lock = _lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_json(path: Path, obj: Any) -> None:
    """`results_io.write_text_atomic` of `obj` as JSON (values JSON cannot hold written as text)."""
    write_text_atomic(path, json_text(obj, indent=1, sort_keys=False, default=str) + "\n")
