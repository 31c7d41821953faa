"""Synthetic result files in the real formats (docs/formats.md), for demo/experiment tests without a server."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

from densepolicy.sampling.shard_writer import CSV_COLUMNS
from densepolicy.testing.synthetic_trees import tree_from_spec, write_jsonl

OPENING = [{"role": "user", "content": "instructions"}, {"role": "assistant", "content": "Action: example() End Action"},
           {"role": "user", "content": "example observation"}, {"role": "user", "content": "Task: do it"}]
VALID = "Action:\nlook()\nEnd Action"
INVALID = "I am not sure what to do."


def eval_row(task_id: str, dataset: str, solved: bool, steps: Sequence[str], turns: int = 1) -> dict:
    """One `codeact_agent` result row whose history holds an in-context example and then `steps`."""
    history = list(OPENING)
    for text in steps:
        history += [{"role": "assistant", "content": text}, {"role": "user", "content": "obs"}]
    row = {c: "" for c in CSV_COLUMNS}
    row.update(task_id=task_id, dataset=dataset, split="test", method="codeact_agent", model="m",
               status="success" if solved else "fail", score=1.0 if solved else 0.0, turns=turns,
               steps=len(steps), history=json.dumps(history), extra="{}")
    return row


def write_rows(path: Path, rows: Sequence[Mapping]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_eval_run(run_dir: Path, dataset: str, outcomes: Mapping[str, bool]) -> Path:
    """A merged evaluation run: `<dataset>.test.None.csv` with one row per task (one valid step each)."""
    rows = [eval_row(t, dataset, ok, [VALID if ok else INVALID]) for t, ok in outcomes.items()]
    return write_rows(run_dir / f"{dataset}.test.None.csv", rows)


def write_failing_tree_run(run_dir: Path, dataset: str, task_ids: Sequence[str]) -> Path:
    """A merged tree-sampling run where every leaf fails (so no sibling pair can exist)."""
    nodes, rows = [], []
    for t in task_ids:
        nodes += tree_from_spec(t, {"0": {"0": "F", "1": "F"}, "1": "F", "2": "F"})
        row = {c: "" for c in CSV_COLUMNS}
        row.update(task_id=t, dataset=dataset, split="train", method="codeact_agent_tree", model="m",
                   status="done", score=0.0, steps=2, runs=4, nodes=5, pairs=0, history="[]", extra="{}")
        rows.append(row)
    write_jsonl(run_dir / "trees" / f"{dataset}.train.None.jsonl", nodes)
    return write_rows(run_dir / f"{dataset}.train.None.csv", rows)
