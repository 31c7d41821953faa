"""ALFWorld game files: where they are unpacked, which ones a split holds, and their task type.

Games live in `<cache>/alfworld/json_2.1.1/<split dir>/<task-dir>/<trial>/game.tw-pddl` (unpacked by
`scripts/setup.sh`; if missing, `ensure_split_unpacked` unpacks the split's tarball from the data
directory under a file lock, so a clean checkout works too). The list of a split follows ALFWorld's
own filter (skip `movable`/`Sliced` folders, keep `"solvable": true`) and is sorted.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from envs.base import EnvError
from envs.locations import cache_dir, data_dir

SPLIT_DIRS = {"train": "valid_train", "valid_seen": "valid_seen", "valid_unseen": "valid_unseen"}
"""Our split name -> ALFWorld folder (`train` is ALFWorld's `valid_train`, the train-distribution subset)."""

TASK_TYPE_PREFIXES = {
    "pick_and_place": "put",
    "pick_clean_then_place": "clean",
    "pick_heat_then_place": "heat",
    "pick_cool_then_place": "cool",
    "look_at_obj": "examine",
    "pick_two_obj": "puttwo",
}
"""Task-folder prefix -> the original's task type name (docs/original.md §4.2)."""

GAME_FILE = "game.tw-pddl"


def games_root(cache: Path | None = None) -> Path:
    """Folder holding `json_2.1.1/` (and `logic/`) of the unpacked games."""
    return (cache or cache_dir()) / "alfworld"


def ensure_split_unpacked(split_dir: str, data: Path | None = None, cache: Path | None = None) -> Path:
    """Return `<games_root>/json_2.1.1/<split_dir>`, unpacking `<data>/alfworld/<split_dir>.tar.gz` if absent."""
    target = games_root(cache) / "json_2.1.1" / split_dir
    if target.is_dir():
        return target
    tarball = data_dir(data) / "alfworld" / f"{split_dir}.tar.gz"
    if not tarball.is_file():
        raise EnvError(f"ALFWorld games for {split_dir!r} are neither unpacked in {target} nor available as "
                       f"{tarball}; run scripts/setup.sh or set DENSEPOLICY_DATA_DIR")
    target.parent.mkdir(parents=True, exist_ok=True)
    # flock here, not densepolicy.file_lock (the project's lock for shared outputs), by design: envs imports
    # nothing of densepolicy, and correctness does not rest on this lock. The split is unpacked into a private
    # temporary folder and renamed into place in one step, so no process ever sees half a split; the lock only
    # spares the processes of one host a duplicate unpack. Where the cache is shared by several hosts and flock
    # is host-local (NFS), two hosts may both unpack: the loser's rename fails and it uses the winner's split.
    with open(games_root(cache) / ".unpack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():  # another process may have finished while we waited
            tmp = Path(tempfile.mkdtemp(prefix=f".unpack-{split_dir}-", dir=target.parent.parent))
            try:
                with tarfile.open(tarball) as tar:
                    tar.extractall(tmp, filter="data")
                try:
                    os.rename(tmp / "json_2.1.1" / split_dir, target)
                except OSError:  # ENOTEMPTY / EEXIST: another host unpacked it first
                    if not target.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def split_root(split: str, data: Path | None = None, cache: Path | None = None) -> Path:
    """Root folder of `split` (one of SPLIT_DIRS), unpacked if needed."""
    if split not in SPLIT_DIRS:
        raise EnvError(f"unknown alfworld split {split!r}; expected one of {sorted(SPLIT_DIRS)}")
    return ensure_split_unpacked(SPLIT_DIRS[split], data, cache)


def is_playable(game_file: Path) -> bool:
    """ALFWorld's filter: no `movable`/`Sliced` in the path and the game says it is solvable."""
    if "movable" in str(game_file) or "Sliced" in str(game_file):
        return False
    with open(game_file) as f:
        return bool(json.load(f).get("solvable", False))


def list_task_ids(root: Path) -> list[str]:
    """Sorted `<task-dir>/<trial>` ids of the playable games under `root`."""
    return sorted(str(p.parent.relative_to(root)) for p in root.glob(f"*/*/{GAME_FILE}") if is_playable(p))


def task_type(task_id: str) -> str:
    """`put`, `clean`, `heat`, `cool`, `examine` or `puttwo`, from the task folder's prefix."""
    for prefix, name in TASK_TYPE_PREFIXES.items():
        if task_id.startswith(prefix):
            return name
    raise EnvError(f"cannot tell the task type of alfworld task {task_id!r}; expected a folder starting with "
                   f"one of {sorted(TASK_TYPE_PREFIXES)}")
