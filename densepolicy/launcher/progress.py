"""Progress of one shard read from its files: tasks done (rows of the shard CSV), pairs, tqdm total."""
from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from densepolicy.launcher.files import tail_lines

_TQDM = re.compile(r"(\d+)/(\d+) \[")
csv.field_size_limit(sys.maxsize)


@dataclass
class ShardProgress:
    """What a shard has produced so far."""

    done: int                 # distinct finished tasks in the shard CSV
    total: int | None      # tasks in the shard (from the worker's progress bar), None if not known yet
    pairs: int                # sum of the `pairs` column (tree sampling), 0 otherwise
    csv_path: Path | None


def shard_csv(output_dir: str | Path, dataset: str, shard: int) -> Path | None:
    """`<dataset>.<split>.<shard>.csv` in the output dir, or in `distributed_result/` once merged."""
    for folder in (Path(output_dir), Path(output_dir) / "distributed_result"):
        matches = sorted(folder.glob(f"{glob_escape(dataset)}.*.{shard}.csv"))
        if matches:
            return matches[0]
    return None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a shard CSV; a torn last line (worker killed mid-write) is ignored."""
    with open(path, newline="", encoding="utf-8") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(text.splitlines(keepends=True)))


def shard_progress(output_dir: str | Path, dataset: str, shard: int, log: str | None = None) -> ShardProgress:
    """Progress of shard `shard`: rows written so far and, if the log shows one, the tqdm total."""
    path = shard_csv(output_dir, dataset, shard)
    done = pairs = 0
    if path is not None:
        rows = read_rows(path)
        done = len({r.get("task_id") for r in rows})
        for row in rows:
            try:
                pairs += int(float(row.get("pairs") or 0))
            except ValueError:
                pass
    total = None
    for line in reversed(tail_lines(log, 200) if log else []):
        match = _TQDM.search(line)
        if match:
            total = int(match.group(2))
            break
    return ShardProgress(done=done, total=total, pairs=pairs, csv_path=path)
