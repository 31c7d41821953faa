"""The one way benchmarks report: an aligned table on stdout and the same rows in a CSV under results/."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def print_and_write(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Print `rows` (dicts with the same keys, in the order of the first) as a left-aligned table under
    `title`, write them to the CSV `path` (parents created, overwritten: a benchmark's CSV is its latest
    run), and say where. Returns the path."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")
    return path
