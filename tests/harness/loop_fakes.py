"""Synthetic result files in the real formats (docs/formats.md), for demo/experiment tests without a server."""
from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

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


FAILING_TREE = {"0": {"0": "F", "1": "F"}, "1": "F", "2": "F"}
TREE_WITH_PAIRS = {"0:Action: a End Action": {"0:Action: b End Action": "S", "1:Action: c End Action": "F"},
                   "1:Action: d End Action": "F"}


def write_failing_tree_run(run_dir: Path, dataset: str, task_ids: Sequence[str], spec: Mapping = FAILING_TREE) -> Path:
    """A merged tree-sampling run with the tree `spec` per task (default: every leaf fails, so no pair)."""
    nodes, rows = [], []
    for t in task_ids:
        nodes += tree_from_spec(t, spec)
        row = {c: "" for c in CSV_COLUMNS}
        row.update(task_id=t, dataset=dataset, split="train", method="codeact_agent_tree", model="m",
                   status="done", score=0.0, steps=2, runs=4, nodes=5, pairs=0, history="[]", extra="{}")
        rows.append(row)
    write_jsonl(run_dir / "trees" / f"{dataset}.train.None.jsonl", nodes)
    return write_rows(run_dir / f"{dataset}.train.None.csv", rows)


class OfflineStages:
    """Mix-in for `LoopStages`: no server, no launcher; `run_envs` writes what launcher + merge would write.

    Trees use `tree_spec`; evaluation outcomes come from `solved(model, task_id, seed)` (seed = the run's
    `seed=` setting, None for greedy runs); a two-argument `solved(model, task_id)` is used for every run.
    Calls are recorded.
    """

    tree_spec: Mapping = FAILING_TREE

    def __init__(self, *args, solved=lambda model, task, seed=None: False, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple] = []
        import inspect
        self.solved = solved if len(inspect.signature(solved).parameters) >= 3 else (
            lambda model, task, seed: solved(model, task))

    def serve(self, model, name):
        import contextlib
        self.calls.append(("serve", model))
        return contextlib.nullcontext("http://127.0.0.1:9")

    def release_tmux_ids(self, n_datasets, offsets):
        pass

    def task_ids(self, name, settings, method="codeact_agent"):
        """The run's task ids; like the worker, refuses ids that are not tasks of the run's split and keeps the
        first `max_tasks` (the last such setting wins, as on the command line)."""
        split = next((s.split("=", 1)[1] for s in settings if s.startswith("split=")), None)
        caps = [int(s.split("=", 1)[1]) for s in settings if s.startswith("max_tasks=")]
        ids = TASKS[name]
        for s in settings:
            if s.startswith("task_ids="):
                ids = json.loads(s.split("=", 1)[1])
                if name in SPLIT_CHECKED:
                    from envs import load_env
                    from densepolicy.loop_stages import method_split
                    split = split or method_split(name, method)
                    known = {str(t) for t in load_env(name, split=split).task_ids()}
                    missing = [t for t in ids if t not in known]
                    assert not missing, f"{missing[0]!r} is not a task of {name}/{split}"
        return ids[:caps[-1]] if caps else ids

    def run_jobs(self, model, method, server_url, jobs, id_offset, proc_per_job=None):
        out = {}
        for kind, settings in jobs.items():
            self.calls.append((kind, model, {k: list(v) for k, v in settings.items()}))
            out[kind] = {}
            for name, sets in settings.items():
                out[kind][name] = self.root / kind / name
                ids = self.task_ids(name, sets, method)
                if method == "codeact_agent_tree":
                    write_failing_tree_run(out[kind][name], name, ids, self.tree_spec)
                else:
                    seed = next((int(s.split("=", 1)[1]) for s in sets if s.startswith("seed=")), None)
                    write_eval_run(out[kind][name], name, {t: self.solved(model, t, seed) for t in ids})
        return out


SPLIT_CHECKED = ("babyai",)  # cheap to list (no data files); other envs' fake ids are not real tasks
TASKS = {"gsm8k": ["0", "1", "2"], "babyai": ["BabyAI-GoToRedBall-v0:0", "BabyAI-GoToRedBall-v0:1"]}
