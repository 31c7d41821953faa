"""Per-group pair budgets and density control for `--merge_all_pairs` (docs/original.md §6.2, §12.5).

For each group with a budget (pairs P, tasks N): keep the N tasks with the most selected pairs,
then subsample every kept task by the same ratio P / (pairs of the kept tasks) so that exactly
min(P, available) pairs remain (largest-remainder rounding, seeded tie-breaks). "Density" = the
same P spread over fewer tasks. Groups without a budget keep (or drop) all their selected pairs.
A task is one problem: (split, task_id) within its group, since task ids of different splits (MATH
train and test are both indexed from 0) name different problems.

Two streaming passes over the input CSVs: count pairs per task, then write the chosen rows.
"""
from __future__ import annotations

import csv
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from densepolicy.postprocess.pairs import PAIR_COLUMNS
from densepolicy.postprocess.config import Budget, MergePairsConfig
from densepolicy.results_io import atomic_open, ensure_new, iter_csv

MERGED_PREFIX = "merged_all_pairs"


def pair_group(dataset: str, task_type: str, budgets: Mapping[str, Budget]) -> str:
    """Budget group of a pair: `<dataset>_<task_type>` if budgeted, else `<dataset>`."""
    typed = f"{dataset}_{task_type}"
    return typed if task_type and typed in budgets else dataset


def pair_task(row: Mapping[str, str], path: str | os.PathLike) -> tuple[str, str]:
    """(split, task_id) of a pair row. The split is the row's `split` column or, for files written before
    it existed, the `<split>` of the file name `<dataset>.<split>.pairs.csv` (else the file path)."""
    split = row.get("split") or ""
    if not split:
        source = Path(row.get("source_file") or path)
        parts = source.name.split(".")
        split = parts[1] if source.name.endswith(".pairs.csv") and len(parts) == 4 else str(source)
    return split, row.get("task_id", "")


def allocate(counts: Mapping, budget: Budget, seed: int) -> dict:
    """Pairs to keep per task: the `budget.tasks` tasks with most pairs, scaled to `budget.pairs` in total.

    Ties in the task ranking go to the smaller task id; rounding remainders go to the largest
    fractional parts, ties broken by a seeded shuffle. The result sums to min(budget.pairs, available).
    """
    ranked = sorted((t for t in counts if counts[t] > 0), key=lambda t: (-counts[t], t))[: budget.tasks]
    available = sum(counts[t] for t in ranked)
    if available <= budget.pairs:
        return {t: counts[t] for t in ranked}
    ratio = budget.pairs / available
    quotas = {t: math.floor(counts[t] * ratio) for t in ranked}
    leftover = budget.pairs - sum(quotas.values())
    order = list(ranked)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda t: -(counts[t] * ratio - quotas[t]))  # stable: shuffle breaks ties
    for t in order[:leftover]:
        quotas[t] += 1
    return {t: q for t, q in quotas.items() if q > 0}


@dataclass
class GroupReport:
    group: str
    tasks_available: int
    pairs_available: int
    tasks_kept: int = 0
    pairs_kept: int = 0
    budget: Budget | None = None


@dataclass
class BudgetReport:
    output: Path
    inputs: list[Path]
    groups: dict[str, GroupReport] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"{len(self.inputs)} input file(s) -> {self.output}",
                 f"{'group':<16} {'budget pairs/tasks':>18} {'available':>16} {'kept':>16}"]
        for g in self.groups.values():
            budget = f"{g.budget.pairs}/{g.budget.tasks}" if g.budget else "none"
            lines.append(f"{g.group:<16} {budget:>18} {f'{g.pairs_available}/{g.tasks_available}':>16} "
                         f"{f'{g.pairs_kept}/{g.tasks_kept}':>16}")
        return "\n".join(lines)


def find_pair_files(root: str | os.PathLike) -> list[Path]:
    """Every `*.pairs.csv` below `root` (merged outputs excluded), sorted."""
    files = [p for p in Path(root).rglob("*.pairs.csv") if not p.name.startswith(MERGED_PREFIX)]
    return sorted(files)


def merged_name(groups: Iterable[GroupReport]) -> str:
    """`merged_all_pairs.math-22331-2334.babyai-908-19.csv` (budgeted groups; `all` for the others)."""
    parts = [f"{g.group}-{g.budget.pairs}-{g.budget.tasks}" if g.budget else f"{g.group}-all" for g in groups]
    return ".".join([MERGED_PREFIX, *parts]) + ".csv"


def _selected(row: Mapping[str, str]) -> bool:
    return str(row.get("selected", "")).strip().lower() in ("true", "1")


def merge_all_pairs(inputs: list[Path], output: str | os.PathLike | None, cfg: MergePairsConfig,
                    output_dir: str | os.PathLike | None = None, overwrite: bool = False,
                    show_progress: bool = True) -> BudgetReport:
    """Combine the selected pairs of `inputs` under the budgets of `cfg`; see the module docstring.

    `output` = explicit path; otherwise `<output_dir>/<merged_name(...)>`.
    """
    if not inputs:
        raise ValueError("no pairs CSV files to merge")
    counts: dict[str, Counter] = defaultdict(Counter)
    for path in tqdm(inputs, desc="counting pairs", unit="file", disable=not show_progress):
        for _, row in iter_csv(path, json_columns=("prompt",)):
            if _selected(row):
                group = pair_group(row.get("dataset", ""), row.get("task_type", ""), cfg.budgets)
                counts[group][pair_task(row, path)] += 1

    report = BudgetReport(output=Path(), inputs=list(inputs))
    quotas: dict[str, dict[str, int]] = {}
    for group in sorted(counts):
        task_counts = counts[group]
        info = GroupReport(group, len(task_counts), sum(task_counts.values()), budget=cfg.budgets.get(group))
        if info.budget is not None:
            quotas[group] = allocate(task_counts, info.budget, cfg.seed)
        elif cfg.unbudgeted == "keep":
            quotas[group] = dict(task_counts)
        else:
            quotas[group] = {}
        info.tasks_kept = len(quotas[group])
        info.pairs_kept = sum(quotas[group].values())
        report.groups[group] = info

    # which of each task's pairs (by ordinal among its selected pairs) survive: seeded uniform sample
    keep: dict[tuple[str, str], set[int]] = {}
    rng = random.Random(cfg.seed)
    for group in sorted(quotas):
        for task in sorted(quotas[group]):
            n, q = counts[group][task], quotas[group][task]
            keep[(group, task)] = set(range(n)) if q >= n else set(rng.sample(range(n), q))

    if output is None:
        base = Path(output_dir) if output_dir is not None else inputs[0].parent
        output = base / merged_name(g for g in report.groups.values() if g.pairs_kept)
    report.output = ensure_new(output, overwrite)
    seen: Counter = Counter()
    with atomic_open(report.output, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*PAIR_COLUMNS, "source_file"], extrasaction="ignore")
        writer.writeheader()
        for path in inputs:
            for _, row in iter_csv(path, json_columns=("prompt",)):
                if not _selected(row):
                    continue
                key = (pair_group(row.get("dataset", ""), row.get("task_type", ""), cfg.budgets),
                       pair_task(row, path))
                ordinal = seen[key]
                seen[key] += 1
                if ordinal in keep.get(key, ()):
                    writer.writerow({**row, "source_file": str(path)})
    return report

