"""Density-scaling study (docs/original.md §0.1 scaling figure): the same number of DPO pairs spread over N tasks.

For every N in `task_counts` (one command: ``scripts/density_study.py``):

1. **pairs**: keep the N tasks of `group` with the most selected pairs and subsample each uniformly
   (seeded) so that `pair_budget` pairs remain: `densepolicy.postprocess.budget.merge_all_pairs` with the budget
   {pairs: pair_budget, tasks: N}, the function `post_process_training_data.py --merge_all_pairs` uses;
2. **dataset**: `densepolicy.postprocess.lf_dataset.prepare_dataset` (ShareGPT + dataset_info.json, length filter);
3. **train**: `densepolicy.training.train.train` with a TreeDPO config (cpu_tiny on CPU, gpu_full_zero3 on GPUs);
4. **evaluate**: a pluggable step returning accuracy @k (Max Trial k) per evaluation dataset:
   - ``kind: launcher`` runs ``./distributed_test.sh <model> <dataset> codeact_agent <P> <ID> wait=true
     output_dir=<eval dir> [launcher_args]`` and scores the result CSVs it writes;
   - ``kind: command`` runs any argv template (placeholders {model_dir} {dataset} {eval_dir}) that writes
     result CSVs (docs/formats.md shard CSV) into {eval_dir}; they are scored the same way;
   - ``kind: callable`` imports ``module:function(model_dir, dataset, eval_dir) -> {k: accuracy %}``;
   - ``kind: none`` skips evaluation.

Tree density = reference_tasks / N (default reference = the smallest N): 1.0 is the densest setting
(most pairs per task), as in the original's figure (347 tasks = 1.0 … 2,776 = 0.125).
Outputs under `output_dir`: pairs/, data/, models/, eval/, ``density_study.csv`` (one row per N, written
after each N) and ``density_study.png`` (accuracy @k against density, one panel per dataset x k).
Re-running the same command skips every stage whose output exists, so an interrupted study resumes.
"""
from __future__ import annotations

import csv
import importlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from densepolicy.config import ConfigError, help_field
from densepolicy.paths import PROJECT_ROOT, main_python, resolve
from densepolicy.results_io import write_csv_atomic

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["tasks_requested", "tasks", "pairs", "pairs_in_dataset", "density", "pairs_per_task",
                  "dataset_name", "model_dir", "train_seconds", "train_loss", "eval_seconds"]


@dataclass
class StudyTrainConfig:
    """How each budgeted dataset is trained (see TreeDPO/train.py)."""

    config: str = help_field("cpu_tiny", help="TreeDPO config name (TreeDPO/configs/) or YAML path.")
    model: str = help_field("", help="Base model (directory or name under models/); '' = the config's model.")
    overrides: list[str] = help_field([], help="LLaMA-Factory key=value overrides, e.g. ['max_steps=4'].")


@dataclass
class StudyEvalConfig:
    """The pluggable evaluation step (see the module docstring)."""

    kind: Literal["launcher", "command", "callable", "none"] = help_field(
        "launcher", help="launcher: ./distributed_test.sh ... codeact_agent; command: argv template; "
                         "callable: module:function; none: skip.")
    datasets: list[str] = help_field(["math"], help="Evaluation datasets (codeact_agent, their test split).")
    max_trials: list[int] = help_field([4, 10], help="Max Trial k values reported and plotted (accuracy @k).")
    procs_per_gpu: int = help_field(1, help="launcher: PROC_PER_GPU.")
    tmux_start_id: int = help_field(60, help="launcher: TMUX_START_ID (sessions/ports offset of the study).")
    launcher_args: list[str] = help_field([], help="launcher: extra key=value, e.g. ['sampler.max_tasks=20'].")
    command: list[str] = help_field([], help="command: argv template with {model_dir} {dataset} {eval_dir}.")
    callable: str = help_field("", help="callable: 'package.module:function'.")


@dataclass
class DensityStudyConfig:
    """Fixed pair budget over a varying number of tasks (configs/density_demo.yaml, density_paper.yaml)."""

    pairs_file: str = help_field("", help="Pairs CSV (docs/formats.md), e.g. a merged_all_pairs*.csv. Required.")
    group: str = help_field("math", help="Budget group: '<dataset>' or '<dataset>_<task_type>' (other pairs dropped).")
    pair_budget: int = help_field(22331, help="Pairs per trained dataset (the same for every N).")
    task_counts: list[int] = help_field([347, 694, 1388, 2776], help="The N values (tasks the budget is spread over).")
    reference_tasks: int | None = help_field(None, help="N of density 1.0; null = min(task_counts).")
    seed: int = help_field(42, help="Seed of the per-task subsampling.")
    cutoff_len: int = help_field(4096, help="prepare_dataset length filter (tokens).")
    tokenizer: str = help_field("", help="Tokenizer for the length filter; '' = the training model's.")
    output_dir: str = help_field("eval_results/density_study", help="Study directory (never overwritten).")
    train: StudyTrainConfig = help_field(default_factory=StudyTrainConfig, help="Training settings.")
    evaluation: StudyEvalConfig = help_field(default_factory=StudyEvalConfig, help="Evaluation settings.")

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = StudyTrainConfig(**self.train)
        if isinstance(self.evaluation, dict):
            self.evaluation = StudyEvalConfig(**self.evaluation)
        if self.pair_budget < 1:
            raise ValueError(f"key 'pair_budget' must be >= 1, got {self.pair_budget}")
        if not self.task_counts or min(self.task_counts) < 1 or len(set(self.task_counts)) != len(self.task_counts):
            raise ValueError(f"key 'task_counts' must be distinct integers >= 1, got {self.task_counts}")
        if self.evaluation.kind == "command" and not self.evaluation.command:
            raise ValueError("key 'evaluation.command' is required when evaluation.kind is 'command'")
        if self.evaluation.kind == "callable" and ":" not in self.evaluation.callable:
            raise ValueError("key 'evaluation.callable' must be 'module:function' when evaluation.kind is 'callable'")

    @property
    def reference(self) -> int:
        return self.reference_tasks or min(self.task_counts)


def accuracy_columns(cfg: DensityStudyConfig) -> list[str]:
    """`acc_<dataset>@<k>` columns of the results CSV (percent)."""
    return [f"acc_{d}@{k}" for d in cfg.evaluation.datasets for k in cfg.evaluation.max_trials]


# ------------------------------------------------------------------------------------ stages


def budget_pairs(cfg: DensityStudyConfig, n_tasks: int, out_csv: Path):
    """Stage 1: the budgeted pairs CSV for N tasks (post-processing's own budget function)."""
    from densepolicy.postprocess.budget import merge_all_pairs
    from densepolicy.postprocess.config import Budget, MergePairsConfig

    merge_cfg = MergePairsConfig(budgets={cfg.group: Budget(pairs=cfg.pair_budget, tasks=n_tasks)},
                                 unbudgeted="drop", seed=cfg.seed)
    report = merge_all_pairs([resolve(cfg.pairs_file)], out_csv, merge_cfg, show_progress=False)
    return report.groups.get(cfg.group)


def build_dataset(cfg: DensityStudyConfig, pairs_csv: Path, data_dir: Path, name: str, tokenizer: str) -> int:
    """Stage 2: LLaMA-Factory dataset `name` in `data_dir`; returns the number of pairs written."""
    from densepolicy.postprocess.lf_dataset import prepare_dataset
    from densepolicy.postprocess.config import DatasetConfig

    report = prepare_dataset(pairs_csv, DatasetConfig(model=tokenizer, cutoff_len=cfg.cutoff_len,
                                                      output_dir=str(data_dir), seed=cfg.seed),
                             name=name, show_progress=False)
    return report.written_pairs


Evaluator = Callable[[Path, str, Path], dict[int, float]]


def score_results(eval_dir: Path, dataset: str, max_trials: list[int]) -> dict[int, float]:
    """Accuracy @k (percent) from the result CSVs in `eval_dir` (the merged `.None.csv` if present,
    else every shard `<dataset>.<split>.<K>.csv`), via post-processing's `score_file`."""
    from densepolicy.postprocess.config import ScoresConfig
    from densepolicy.postprocess.scores import score_file

    files = sorted(eval_dir.glob(f"{dataset}.*.None.csv")) or sorted(
        p for p in eval_dir.glob(f"{dataset}.*.csv") if p.name.count(".") == 3)
    if not files:
        raise RuntimeError(f"evaluation wrote no {dataset}.*.csv result files into {eval_dir}")
    scores_cfg = ScoresConfig(max_trial=max(max_trials))
    n, solved = 0, [0] * max(max_trials)
    for path in files:
        score = score_file(path, scores_cfg)
        n += score.n
        solved = [a + b for a, b in zip(solved, score.solved_within)]
    if n == 0:
        raise RuntimeError(f"no evaluated tasks in {', '.join(map(str, files))}")
    return {k: 100.0 * solved[k - 1] / n for k in max_trials}


def launcher_command(cfg: StudyEvalConfig, model_dir: Path, dataset: str, eval_dir: Path) -> list[str]:
    """The evaluation command of kind=launcher (blocks until the workers are done, then stops servers)."""
    return [str(PROJECT_ROOT / "distributed_test.sh"), str(model_dir), dataset, "codeact_agent",
            str(cfg.procs_per_gpu), str(cfg.tmux_start_id), "wait=true", f"output_dir={eval_dir}",
            *cfg.launcher_args]


def make_evaluator(cfg: StudyEvalConfig, log_path: Path) -> Evaluator | None:
    """The evaluation step of `cfg.kind` (None for kind=none)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "callable":
        module_name, _, attr = cfg.callable.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"key 'evaluation.callable': cannot import {cfg.callable!r}: {exc}") from None

    def run_and_score(model_dir: Path, dataset: str, eval_dir: Path) -> dict[int, float]:
        if cfg.kind == "launcher":
            argv = launcher_command(cfg, model_dir, dataset, eval_dir)
        else:
            fields = {"model_dir": str(model_dir), "dataset": dataset, "eval_dir": str(eval_dir)}
            argv = [part.format(**fields) for part in cfg.command]
        eval_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log_file:
            log_file.write(f"$ {' '.join(argv)}\n")
            log_file.flush()
            env = {**os.environ, "DENSEPOLICY_MAIN_PYTHON": str(main_python())}
            proc = subprocess.run(argv, cwd=PROJECT_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"evaluation command failed (exit {proc.returncode}): {' '.join(argv)}; "
                               f"log: {log_path}")
        return score_results(eval_dir, dataset, cfg.max_trials)

    return run_and_score


# ------------------------------------------------------------------------------------ results


def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_results(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Whole-file atomic rewrite (the file is small: one row per N)."""
    write_csv_atomic(path, columns, rows)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_density(rows: list[dict[str, Any]], columns: list[str], out_png: Path, title: str = "") -> Path:
    """Accuracy @k against tree density (log2 x axis, as the original's figure): one panel per column,
    measured points joined by a line, and a dashed least-squares fit in log2(density)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = max(1, len(columns))
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns or ["(no evaluation)"]):
        points = sorted((_float(r["density"]), _float(r.get(column))) for r in rows)
        points = [(d, a) for d, a in points if not (math.isnan(d) or math.isnan(a))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-", color="tab:blue", label="measured")
            if len(points) >= 2:
                slope, intercept = np.polyfit(np.log2(xs), ys, 1)
                grid = np.geomspace(min(xs), max(xs), 50)
                ax.plot(grid, slope * np.log2(grid) + intercept, "--", color="tab:gray", label="fit")
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{x:g}" for x in xs])
        dataset, _, k = column.removeprefix("acc_").partition("@")
        ax.set_title(f"{dataset} Max Trial {k}" if k else column)
        ax.set_xlabel("tree density")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


# ------------------------------------------------------------------------------------ driver


@dataclass
class StudyPaths:
    root: Path

    @property
    def results(self) -> Path:
        return self.root / "density_study.csv"

    @property
    def figure(self) -> Path:
        return self.root / "density_study.png"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def pairs(self, n: int) -> Path:
        return self.root / "pairs" / f"pairs_N{n}.csv"

    def model(self, n: int) -> Path:
        return self.root / "models" / f"density_N{n}"

    def eval_dir(self, n: int, dataset: str) -> Path:
        return self.root / "eval" / f"N{n}" / dataset


def dataset_name(cfg: DensityStudyConfig, n: int) -> str:
    """`density_math_22331_N694` (the original's Tree_DPO_temperature_math-22331-694)."""
    return f"density_{cfg.group}_{cfg.pair_budget}_N{n}"


def run_study(cfg: DensityStudyConfig, evaluator: Evaluator | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) the study; returns the result rows (also in density_study.csv / .png)."""
    from tqdm import tqdm

    from densepolicy.training.train import model_directory, train

    pairs_file = resolve(cfg.pairs_file) if cfg.pairs_file else None
    if pairs_file is None or not pairs_file.is_file():
        raise ConfigError(f"key 'pairs_file': pairs CSV {cfg.pairs_file!r} not found "
                          f"(post_process_training_data.py --merge_all_pairs writes one)")
    paths = StudyPaths(resolve(cfg.output_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    for sub in ("pairs", "models", "eval"):
        (paths.root / sub).mkdir(exist_ok=True)
    tokenizer = cfg.tokenizer or cfg.train.model or ""
    if tokenizer:
        tokenizer = str(model_directory(tokenizer))
    if evaluator is None:
        evaluator = make_evaluator(cfg.evaluation, paths.root / "evaluation.log")
    columns = RESULT_COLUMNS + accuracy_columns(cfg)
    done = {int(r["tasks_requested"]): r for r in read_results(paths.results)}
    rows: list[dict[str, Any]] = []
    for n in tqdm(sorted(cfg.task_counts, reverse=True), desc="density study", unit="N", disable=not progress):
        if n in done and all(done[n].get(c, "") != "" for c in accuracy_columns(cfg)):
            rows.append(done[n])
            continue
        row: dict[str, Any] = {"tasks_requested": n, "density": cfg.reference / n}
        group = None
        if not paths.pairs(n).exists():
            group = budget_pairs(cfg, n, paths.pairs(n))
        name = dataset_name(cfg, n)
        if not (paths.data / f"{name}.json").exists():
            row["pairs_in_dataset"] = build_dataset(cfg, paths.pairs(n), paths.data, name, tokenizer)
        tasks, pairs = _count_pairs(paths.pairs(n))
        if pairs == 0:
            raise ConfigError(f"key 'group': no selected pairs of group {cfg.group!r} in {pairs_file}")
        row.update(tasks=tasks, pairs=pairs, dataset_name=name,
                   pairs_per_task=round(pairs / tasks, 2) if tasks else 0)
        row.setdefault("pairs_in_dataset", _dataset_size(paths.data / f"{name}.json"))
        if group is not None and group.tasks_kept < n:
            log.warning("N=%d: only %d tasks of group %r have pairs", n, group.tasks_kept, cfg.group)
        model_dir = paths.model(n)
        meta = model_dir / "densepolicy_train.json"
        if not meta.is_file():
            result = train(cfg.train.config, dataset=name, dataset_dir=paths.data, model=cfg.train.model or None,
                           output_dir=model_dir, overrides=cfg.train.overrides, progress=progress)
            row.update(train_seconds=round(result.train_seconds, 1), train_loss=result.metrics.get("train_loss", ""))
        else:
            info = json.loads(meta.read_text())
            row.update(train_seconds=info.get("train_seconds", ""), train_loss=info.get("metrics", {}).get("train_loss", ""))
        row["model_dir"] = str(model_dir)
        if evaluator is not None:
            start = time.monotonic()
            for dataset in cfg.evaluation.datasets:
                accuracy = evaluator(model_dir, dataset, paths.eval_dir(n, dataset))
                for k in cfg.evaluation.max_trials:
                    row[f"acc_{dataset}@{k}"] = round(accuracy[k], 2)
            row["eval_seconds"] = round(time.monotonic() - start, 1)
        rows.append(row)
        write_results(paths.results, _merge_rows(done, rows), columns)
    rows.sort(key=lambda r: _float(r["density"]))
    write_results(paths.results, rows, columns)
    plot_density(rows, accuracy_columns(cfg) if evaluator is not None else [], paths.figure,
                 title=f"{cfg.group}: {cfg.pair_budget} pairs over N tasks (density = {cfg.reference}/N)")
    return rows


def _merge_rows(done: dict[int, dict], rows: list[dict]) -> list[dict]:
    merged = {int(r["tasks_requested"]): r for r in done.values()}
    merged.update({int(r["tasks_requested"]): r for r in rows})
    return [merged[k] for k in sorted(merged)]


def _count_pairs(pairs_csv: Path) -> tuple[int, int]:
    """(tasks, pairs) in a budgeted pairs CSV."""
    tasks, pairs = set(), 0
    with open(pairs_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            tasks.add(row["task_id"])
            pairs += 1
    return len(tasks), pairs


def _dataset_size(path: Path) -> int:
    return len(json.loads(path.read_text())) if path.is_file() else 0
