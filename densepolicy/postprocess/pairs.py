"""Pair extraction: tree dump JSONL -> pairs CSV (docs/original.md §6.1, docs/formats.md).

    summary = extract_pairs_file(tree_path, out_csv, PairRule(), task_meta=read_task_meta(results_csv))

One task's nodes are held in memory at a time (the dump is grouped by task, as written by the
sampler and by the merge); the output CSV is streamed. For each task:
- node values / runs / remaining depths come from `agents.tree_rules.compute_node_stats`;
- candidates are siblings with different values and non-identical stripped `assistant` text
  (depth-1 siblings must also share the same first-step `prompt`: histories agree except the last message);
- prompt = the first-step node's `prompt` (in-context examples already stripped) followed by
  (assistant, observation-as-user) of every ancestor; chosen/rejected = the siblings' `assistant`.
  Every assistant text is `strip()`ped, as the original did to both histories before using them.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from densepolicy.results_io import CorruptFileError, atomic_open, ensure_new, iter_csv, iter_jsonl
from envs.spec import ENV_SPECS, env_spec
from agents.tree_rules import NodeStats, PairRule, SiblingPair, candidate_pairs, compute_node_stats

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["task_id", "dataset", "split", "task_type", "prompt", "chosen", "rejected", "chosen_node",
                "rejected_node", "chosen_value", "rejected_value", "chosen_visits", "rejected_visits",
                "depth", "selected"]

def alfworld_task_type(task_id: str) -> str:
    """ALFWorld task type from a game folder id (`pick_cool_then_place_in_recep-…/trial_…` -> `cool`), by the
    environment's own table (its spec's `task_type`); "" for an id it does not know."""
    return env_spec("alfworld").task_type(task_id)


@dataclass
class TaskSummary:
    """Per-task counts of one extraction."""

    task_id: str
    nodes: int
    runs: int
    candidates: int
    selected: int
    identical_skipped: int = 0
    prompt_mismatch: int = 0


@dataclass
class ExtractionSummary:
    """What `extract_pairs_file` did."""

    output: Path
    tasks: list[TaskSummary] = field(default_factory=list)
    value_mismatch_nodes: int = 0

    @property
    def pairs(self) -> int:
        return sum(t.candidates for t in self.tasks)

    @property
    def selected(self) -> int:
        return sum(t.selected for t in self.tasks)

    def text(self) -> str:
        nodes = sum(t.nodes for t in self.tasks)
        with_pairs = sum(1 for t in self.tasks if t.selected)
        skipped = sum(t.identical_skipped for t in self.tasks)
        lines = [f"{len(self.tasks)} tasks, {nodes} nodes -> {self.pairs} candidate pairs, "
                 f"{self.selected} selected (from {with_pairs} tasks) in {self.output}"]
        if skipped:
            lines.append(f"skipped {skipped} sibling pair(s) with identical action text")
        mismatch = sum(t.prompt_mismatch for t in self.tasks)
        if mismatch:
            lines.append(f"skipped {mismatch} first-step pair(s) whose prompts differ")
        if self.value_mismatch_nodes:
            lines.append(f"note: {self.value_mismatch_nodes} node(s) carry a `value` in the dump that differs from "
                         "the recomputed one (the recomputed value is used)")
        return "\n".join(lines)


def iter_tree_tasks(path: str | os.PathLike) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield ``(task_id, node records)`` for each task of a tree dump, one task in memory at a time.

    Raises `CorruptFileError` if a task's nodes are not contiguous (merge the shards first).
    """
    done: set[str] = set()
    current: str | None = None
    nodes: list[dict[str, Any]] = []
    for line, record in iter_jsonl(path):
        task = str(record.get("task_id", ""))
        for key in ("node_id", "depth"):
            if key not in record:
                raise CorruptFileError(path, line, f"node record has no {key!r}")
        if task != current:
            if current is not None:
                yield current, nodes
                done.add(current)
            if task in done:
                raise CorruptFileError(path, line, f"nodes of task {task!r} are not contiguous "
                                       "(is this an unmerged file with a re-run task? run the merge first)")
            current, nodes = task, []
        nodes.append(record)
    if current is not None:
        yield current, nodes


def read_task_meta(results_csv: str | os.PathLike | None) -> dict[str, tuple[str, str, str]]:
    """task_id -> (dataset, task_type, split) from a result CSV (empty if there is none)."""
    meta: dict[str, tuple[str, str, str]] = {}
    if results_csv and Path(results_csv).is_file():
        for _, row in iter_csv(results_csv):
            meta[row.get("task_id", "")] = (row.get("dataset", ""), row.get("task_type", ""), row.get("split", ""))
    return meta


def node_prompt(records: Mapping[str, Mapping[str, Any]], node_id: str) -> list[dict[str, str]]:
    """Chat messages before the step of `node_id`: first-step prompt + ancestors' (assistant, observation)."""
    chain = []
    parent = str(records[node_id].get("parent_id") or "")
    while parent:
        chain.append(records[parent])
        parent = str(records[parent].get("parent_id") or "")
    chain.reverse()
    first = chain[0] if chain else records[node_id]
    prompt = first.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"first-step node {first.get('node_id')!r} has no `prompt` list")
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    for ancestor in chain:
        messages.append({"role": "assistant", "content": str(ancestor.get("assistant", "")).strip()})
        messages.append({"role": "user", "content": ancestor.get("observation", "")})
    return messages


def task_pairs(nodes: list[dict[str, Any]], rule: PairRule) -> tuple[dict[str, NodeStats], list[SiblingPair], TaskSummary]:
    """Statistics and candidate pairs of one task's nodes (identical texts and prompt mismatches dropped)."""
    task_id = str(nodes[0].get("task_id", "")) if nodes else ""
    stats = compute_node_stats(nodes, rule.arithmetic)
    records = {str(n["node_id"]): n for n in nodes}
    texts = {node_id: str(rec.get("assistant", "")) for node_id, rec in records.items()}
    all_pairs = candidate_pairs(stats, rule)
    pairs: list[SiblingPair] = []
    summary = TaskSummary(task_id, len(nodes), sum(s.runs for s in stats.values() if s.depth == 1), 0, 0)
    for pair in all_pairs:
        if texts[pair.chosen.node_id].strip() == texts[pair.rejected.node_id].strip():
            summary.identical_skipped += 1
            continue
        if pair.chosen.depth == 1 and records[pair.chosen.node_id].get("prompt") != records[pair.rejected.node_id].get("prompt"):
            summary.prompt_mismatch += 1
            continue
        pairs.append(pair)
    summary.candidates = len(pairs)
    summary.selected = sum(p.selected for p in pairs)
    return stats, pairs, summary


def _value_mismatches(nodes: list[dict[str, Any]], stats: Mapping[str, NodeStats]) -> int:
    count = 0
    for rec in nodes:
        dumped, mine = rec.get("value"), stats[str(rec["node_id"])].value
        if dumped is not None and mine is not None and abs(float(dumped) - mine) > 1e-6:
            count += 1
    return count


def extract_pairs_file(tree_path: str | os.PathLike, out_csv: str | os.PathLike, rule: PairRule = PairRule(),
                       task_meta: Mapping[str, tuple[str, ...]] | None = None, default_dataset: str = "",
                       overwrite: bool = False, show_progress: bool = True) -> ExtractionSummary:
    """Write the pairs CSV of every task in the tree dump `tree_path`; see the module docstring.

    `task_meta`: task_id -> (dataset, task_type[, split]) (`read_task_meta`); the split of tasks without
    one is taken from the dump's name `<dataset>.<split>.<K>.jsonl`.
    """
    out_csv = ensure_new(out_csv, overwrite)
    task_meta = task_meta or {}
    name_parts = Path(tree_path).name.split(".")
    default_split = name_parts[1] if len(name_parts) >= 4 else ""
    summary = ExtractionSummary(output=Path(out_csv))
    with atomic_open(out_csv, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PAIR_COLUMNS)
        writer.writeheader()
        tasks = tqdm(iter_tree_tasks(tree_path), desc="extracting pairs", unit="task", disable=not show_progress)
        for task_id, nodes in tasks:
            stats, pairs, task_summary = task_pairs(nodes, rule)
            summary.tasks.append(task_summary)
            summary.value_mismatch_nodes += _value_mismatches(nodes, stats)
            dataset, task_type, *rest = task_meta.get(task_id, (default_dataset, ""))
            split = (rest[0] if rest else "") or default_split
            if not task_type and (spec := ENV_SPECS.get(dataset)) is not None:
                task_type = spec.task_type(task_id)  # "" for envs without task types
            records = {str(n["node_id"]): n for n in nodes}
            for pair in pairs:
                prompt = node_prompt(records, pair.chosen.node_id)
                writer.writerow({
                    "task_id": task_id, "dataset": dataset, "split": split, "task_type": task_type,
                    "prompt": json.dumps(prompt, ensure_ascii=False),
                    "chosen": str(records[pair.chosen.node_id].get("assistant", "")).strip(),
                    "rejected": str(records[pair.rejected.node_id].get("assistant", "")).strip(),
                    "chosen_node": pair.chosen.node_id, "rejected_node": pair.rejected.node_id,
                    "chosen_value": round(pair.chosen.value, 6), "rejected_value": round(pair.rejected.value, 6),
                    "chosen_visits": pair.chosen.visits(rule.visit_counting),
                    "rejected_visits": pair.rejected.visits(rule.visit_counting),
                    "depth": pair.chosen.depth, "selected": pair.selected,
                })
    return summary


def read_pairs(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream a pairs CSV, decoding `prompt` and typing the numeric/boolean columns."""
    for line, row in iter_csv(path, json_columns=("prompt",), parse_json=True):
        row["selected"] = str(row.get("selected", "")).strip().lower() in ("true", "1")
        for key in ("chosen_value", "rejected_value"):
            if row.get(key, "") != "":
                row[key] = float(row[key])
        yield line, row


@dataclass
class ExtractionPaths:
    """Where `--process_result` reads and writes."""

    tree: Path
    results_csv: Path | None
    output: Path
    dataset: str

    @property
    def stem(self) -> Path:
        """Output path without `.pairs.csv` (prefix of the histogram and tree pictures)."""
        name = self.output.name
        return self.output.with_name(name[: -len(".pairs.csv")] if name.endswith(".pairs.csv") else self.output.stem)

    def tree_picture(self, task_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)
        return self.stem.with_name(f"{self.stem.name}.tree_{safe}.png")

    @property
    def histogram(self) -> Path:
        return self.stem.with_name(f"{self.stem.name}.pairs_per_task.png")


def _base_name(file_name: str) -> str:
    """`math.train.None.csv` / `.jsonl` -> `math.train`."""
    for ext in (".csv", ".jsonl"):
        if file_name.endswith(ext):
            file_name = file_name[: -len(ext)]
    return file_name[: -len(".None")] if file_name.endswith(".None") else file_name


def extraction_paths(data_dir: str | None = None, dataset_file_name: str | None = None,
                     template: str | None = None, data_sub_dir: str | None = None,
                     tree_file: str | None = None, output: str | None = None) -> ExtractionPaths:
    """Resolve the seed's arguments (`--data_dir --dataset_file_name[_list] --data_sub_dir`) or the
    simple `--tree_file [--output]` form into input and output paths."""
    if tree_file:
        tree = Path(tree_file)
        root = tree.parent.parent if tree.parent.name == "trees" else tree.parent
        csv_guess = root / (tree.name[: -len(".jsonl")] + ".csv")
        results_csv = csv_guess if csv_guess.is_file() else None
        name = tree.name
    else:
        if not data_dir or not (dataset_file_name or template):
            raise ValueError("--process_result needs --tree_file, or --data_dir with --dataset_file_name "
                             "or --dataset_file_name_list")
        name = dataset_file_name or (template or "").format("None")  # one of them is set (checked above)
        root = Path(data_dir)
        results_csv = root / name
        tree = root / "trees" / (name[: -len(".csv")] + ".jsonl")
        if not tree.is_file() and template and (root / template.format(0)).is_file():
            raise FileNotFoundError(f"{tree} not found but unmerged shards exist: run "
                                    "post_process_test_result.py --merge_distributed_result first")
        if not results_csv.is_file():
            results_csv = None
    if not tree.is_file():
        raise FileNotFoundError(f"tree dump {tree} not found")
    base = _base_name(name)
    out = Path(output) if output else root / (data_sub_dir or "pairs") / f"{base}.pairs.csv"
    return ExtractionPaths(tree=tree, results_csv=results_csv, output=out, dataset=base.split(".", 1)[0])
