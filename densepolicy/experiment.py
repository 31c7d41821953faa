"""`make experiment`: does TreeDPO improve a warm-started agent? One command, one budget knob.

    warm start (expert SFT, cached) -> tree sampling with it on train tasks (no in-context examples)
    -> preference pairs -> DPO (TreeDPO/configs/<train_config>.yaml) -> evaluate base, warm-started
    and warm-started + TreeDPO on the SAME seeded held-out task ids -> per-env table with Wilson 95 %
    intervals, exact McNemar tests (TreeDPO vs warm start, warm start vs base), protocol-following rate,
    a bar plot and the settings, in `output_dir` (eval_results/experiment/).

`budget` scales every task count and the DPO step cap (budget=0.1 is a smoke run). The base model is
evaluated with its usual prompt (the in-context examples of configs/tasks/<dataset>.yaml: GSM8K 8,
MATH 1, embodied 0); the warm-started and TreeDPO models without examples (what they were trained on).
The stages are those of the demo (densepolicy/loop_stages.py); settings in configs/experiment.yaml.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from densepolicy.config import (ConfigError, describe, from_dict, help_field, load_config, parse_overrides, read_yaml,
                                to_dict)
from densepolicy.loop_stages import LoopStages, StageError, merged_csv, move_aside, stop_on_signals
from densepolicy.paths import PROJECT_ROOT, resolve, shown
from densepolicy.postprocess import comparison
from densepolicy.serving.models import ModelError
from densepolicy.serving.server import ServerError
from densepolicy.training.train import TrainingError

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "experiment.yaml"
BASE, WARM, TREEDPO = "base", "warm-start", "warm+TreeDPO"
EVAL_DIRS = {BASE: "eval_base", WARM: "eval_warm", TREEDPO: "eval_treedpo"}  # <output_dir>/<dir>/<dataset>/


@dataclasses.dataclass
class ExperimentDataset:
    """One environment of the experiment; task counts are multiplied by `budget`."""

    name: str = help_field(help="Dataset name (configs/tasks/<name>.yaml).")
    sample_tasks: int = help_field(20, help="Train tasks for tree sampling (x budget), a seeded sample of the train split.")
    sample: list[str] = help_field([], help="sample_tree.py key=value settings for tree sampling.")
    eval_split: Optional[str] = help_field(None, help="Held-out split (null = the codeact_agent split of the task config).")
    eval_tasks: int = help_field(50, help="Held-out tasks (x budget, at most the split size), a seeded sample.")
    evaluate: list[str] = help_field([], help="sample_tree.py key=value settings for the evaluation of every model.")
    evaluate_base: bool = help_field(True, help="Evaluate the base model on this env too (with evaluate_base).")


@dataclasses.dataclass
class ExperimentConfig:
    """Settings of `make experiment` (configs/experiment.yaml)."""

    budget: float = help_field(1.0, help="Scales task counts and the DPO step cap (1.0 = about 90 min on 2 cores).")
    base_model: str = help_field("SmolLM2-135M-Instruct", help="Base model (name in configs/models.yaml or a directory).")
    warm_model: str = help_field("", help="Warm-started model; empty = ensure_warm_start(warm_start) (built once, cached).")
    warm_start: list[str] = help_field([], help="key=value overrides of configs/warm_start.yaml.")
    evaluate_base: bool = help_field(True, help="Also evaluate the base model (with its usual in-context examples).")
    output_dir: str = help_field("eval_results/experiment", help="Output; an older one is moved to <dir>.prev-<time>.")
    seed: int = help_field(20261126, help="Seed of the train/held-out task selection.")
    proc_per_server: int = help_field(2, help="Workers per dataset (PROC_PER_GPU of distributed_test.sh).")
    tmux_start_id: int = help_field(150, help="First TMUX_START_ID; each launcher run uses a block of 10 ids.")
    serving: dict[str, str | int | float | bool] = help_field({}, help="Overrides of configs/serving.yaml.")
    sampler: dict[str, str | int | float | bool] = help_field({}, help="Settings forwarded to every worker.")
    train_config: str = help_field("cpu_dpo", help="TreeDPO/configs/<name>.yaml.")
    train_overrides: list[str] = help_field([], help="LLaMA-Factory key=value overrides (pref_beta, learning_rate, ...).")
    dpo_epochs: float = help_field(1.0, help="Passes over the pairs; DPO steps = ceil(epochs * pairs / batch) ...")
    dpo_max_steps: int = help_field(60, help="... capped at this (x budget).")
    dataset_name: str = help_field("tree_dpo_experiment", help="DPO dataset name in TreeDPO/data/dataset_info.json.")
    datasets: list[ExperimentDataset] = help_field([], help="The environments and their budgets.")

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ConfigError(f"key 'budget' must be > 0, got {self.budget}")
        if self.dpo_epochs <= 0 or self.dpo_max_steps < 1:
            raise ConfigError("keys 'dpo_epochs' and 'dpo_max_steps' must be positive")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"key 'datasets' names a dataset twice: {names}")

    def scaled(self, n: int) -> int:
        """A task count or step cap times the budget (at least 1)."""
        return max(1, round(n * self.budget))


def task_config(dataset: str) -> dict:
    path = PROJECT_ROOT / "configs" / "tasks" / f"{dataset}.yaml"
    if not path.exists():
        raise ConfigError(f"key 'datasets': no task config {path}")
    return read_yaml(path)


def select_task_ids(dataset: str, split: str, n: int, seed: int) -> list[str]:
    """A seeded sample of `n` task ids of a split (all of them when the split is smaller), in split order."""
    from envs import load_env
    tcfg = task_config(dataset)
    env = load_env(tcfg.get("env", dataset), split=split)
    ids = [str(t) for t in env.task_ids()]
    if tcfg.get("task_type"):
        ids = [t for t in ids if env.task_info(t).get("task_type") == tcfg["task_type"]]
    if n >= len(ids):
        return ids
    chosen = set(random.Random(f"{seed}:{dataset}:{split}").sample(ids, n))
    return [t for t in ids if t in chosen]


def task_ids_setting(ids: list[str]) -> str:
    return "task_ids=" + json.dumps(ids)


def dpo_steps(cfg: ExperimentConfig, n_pairs: int) -> int:
    """ceil(dpo_epochs * pairs / effective batch), capped at dpo_max_steps x budget."""
    train_yaml = read_yaml(PROJECT_ROOT / "TreeDPO" / "configs" / f"{cfg.train_config}.yaml")
    train_yaml.update(parse_overrides(cfg.train_overrides, "train_overrides"))
    batch = int(train_yaml.get("per_device_train_batch_size", 1)) * int(train_yaml.get("gradient_accumulation_steps", 1))
    return max(1, min(cfg.scaled(cfg.dpo_max_steps), math.ceil(cfg.dpo_epochs * n_pairs / batch)))


def default_warm_start(overrides: list[str], log: Callable[[str], None]) -> Path:
    from densepolicy.training.warm_start import ensure_warm_start
    return ensure_warm_start(overrides, log=log)


class Experiment:
    """The stages in order; `warm_start` is injectable for tests."""

    def __init__(self, cfg: ExperimentConfig, warm_start: Callable[[list[str], Callable], Path] = default_warm_start):
        if not cfg.datasets:
            raise ConfigError("key 'datasets' is empty")
        self.cfg = cfg
        self.root = resolve(cfg.output_dir)
        n_stages = 9 + (2 if cfg.evaluate_base else 0)
        self.stages = LoopStages(self.root, tag="experiment", n_stages=n_stages,
                                 proc_per_server=cfg.proc_per_server, tmux_start_id=cfg.tmux_start_id,
                                 serving=cfg.serving, sampler=cfg.sampler)
        self.warm_start = warm_start
        self.info: dict[str, object] = {}  # facts of this run for the report, also kept in <output_dir>/run.json

    def remember(self, **facts: object) -> None:
        """Add `facts` to the run's record (`run.json`), so `--report-only` can rebuild the report."""
        self.info.update(facts)
        (self.root / "run.json").write_text(json.dumps({"config": to_dict(self.cfg), **self.info}, indent=1,
                                                       default=str) + "\n")

    def eval_settings(self, tasks: dict[str, list[str]], with_examples: bool) -> dict[str, list[str]]:
        out = {}
        for d in self.cfg.datasets:
            sets = [*d.evaluate, task_ids_setting(tasks[d.name])]
            out[d.name] = sets if with_examples else [*sets, "in_context_number=0"]
        return out

    def main(self) -> int:
        cfg, st = self.cfg, self.stages
        move_aside(self.root, "experiment")
        st.release_tmux_ids(len(cfg.datasets), (0, 5))
        with st.stage("warm start (expert SFT; cached)"):
            warm = cfg.warm_model or str(self.warm_start(cfg.warm_start, st.say))
            st.say(f"warm-started model: {shown(warm)}")
        self.remember(warm_model=warm)
        train_tasks, eval_tasks = {}, {}
        for d in cfg.datasets:
            tcfg = task_config(d.name)
            train_split = tcfg.get("codeact_agent_tree", {}).get("split", "train")
            eval_split = d.eval_split or tcfg.get("codeact_agent", {}).get("split", "test")
            train_tasks[d.name] = select_task_ids(d.name, train_split, cfg.scaled(d.sample_tasks), cfg.seed)
            eval_tasks[d.name] = select_task_ids(d.name, eval_split, cfg.scaled(d.eval_tasks), cfg.seed)
            st.say(f"{d.name}: {len(train_tasks[d.name])} train tasks ({train_split}), "
                   f"{len(eval_tasks[d.name])} held-out tasks ({eval_split})")
        (self.root / "tasks.json").write_text(json.dumps({"train": train_tasks, "evaluation": eval_tasks}, indent=1))
        sample_settings = {d.name: [*d.sample, task_ids_setting(train_tasks[d.name]), "in_context_number=0"]
                           for d in cfg.datasets}
        results: dict[str, dict[str, Path]] = {}
        with st.serve(warm, "warm") as url:
            with st.stage("tree sampling with the warm-started model on train tasks (no in-context examples)"):
                sample_dirs = st.run_envs(warm, "codeact_agent_tree", "sample", url, sample_settings, 0)
            with st.stage("evaluate the warm-started model on the held-out tasks"):
                results[WARM] = st.run_envs(warm, "codeact_agent", EVAL_DIRS[WARM], url,
                                            self.eval_settings(eval_tasks, False), 5)
        merged_pairs = self.root / "merged_all_pairs.csv"
        with st.stage("preference pairs from sibling steps"):
            pairs = st.pairs(sample_dirs, merged_pairs)
            st.say("pairs per env: " + ", ".join(f"{k} {v}" for k, v in pairs.items()))
        self.remember(pairs=pairs)
        trained = self.root / "treedpo_model"
        n_pairs = sum(pairs.values())
        if n_pairs == 0:
            print("[experiment] no preference pairs were found: DPO training and the TreeDPO evaluation are skipped")
            st.stage_no += 3
        else:
            steps = dpo_steps(cfg, n_pairs)
            self.remember(dpo_steps=steps)
            with st.stage(f"LLaMA-Factory dataset ({n_pairs} pairs) + DPO ({cfg.train_config}, {steps} steps)"):
                st.prepare_dataset(merged_pairs, cfg.dataset_name, warm)
                st.train(cfg.train_config, cfg.dataset_name, warm, trained, [*cfg.train_overrides, f"max_steps={steps}"])
            with st.serve(str(trained), "treedpo") as url:
                with st.stage("evaluate the warm-started + TreeDPO model on the same tasks"):
                    results[TREEDPO] = st.run_envs(str(trained), "codeact_agent", EVAL_DIRS[TREEDPO], url,
                                                   self.eval_settings(eval_tasks, False), 5)
        if cfg.evaluate_base:
            with st.serve(cfg.base_model, "base") as url:
                with st.stage("evaluate the base model (usual prompt, in-context examples) on the same tasks"):
                    base_settings = {name: sets for name, sets in self.eval_settings(eval_tasks, True).items()
                                     if next(d for d in cfg.datasets if d.name == name).evaluate_base}
                    results[BASE] = st.run_envs(cfg.base_model, "codeact_agent", EVAL_DIRS[BASE], url,
                                                base_settings, 5)
        with st.stage("table, paired tests, plot"):
            report = self.report(results, eval_tasks, train_tasks, warm)
            print(report.read_text().split("## Settings")[0])
        print(f"[experiment] finished in {st.elapsed():.0f} s; report: {shown(report)}")
        return 0

    def report_only(self) -> int:
        """Rebuild the report from what an earlier, possibly interrupted, run left in `output_dir`: every
        evaluation that finished (its merged CSV exists) is compared; one that did not is named in the report."""
        tasks_file = self.root / "tasks.json"
        if not tasks_file.exists():
            raise StageError(f"--report-only: {shown(tasks_file)} not found (the experiment did not get that far)")
        tasks = json.loads(tasks_file.read_text())
        run_file = self.root / "run.json"
        run = json.loads(run_file.read_text()) if run_file.exists() else {}
        if "config" in run:  # describe the run with the settings it had, not today's configs/experiment.yaml
            self.cfg = from_dict(ExperimentConfig, {**run.pop("config"), "output_dir": self.cfg.output_dir},
                                 source=shown(run_file))
        self.info.update(run)
        warm = str(run.get("warm_model") or self.cfg.warm_model or "unknown")
        if self.stages.timings_file.exists():
            self.stages.timings = [(t["stage"] if t["status"] == "done" else f"{t['stage']} ({t['status']})",
                                    t["seconds"]) for t in json.loads(self.stages.timings_file.read_text())]
        results: dict[str, dict[str, Path]] = {}
        unfinished = []
        for model, kind in EVAL_DIRS.items():
            for d in self.cfg.datasets:
                out = self.root / kind / d.name
                if list(out.glob("*.None.csv")):
                    results.setdefault(model, {})[d.name] = out
                elif out.exists():
                    unfinished.append(f"{model} on {d.name}")
        if unfinished:
            self.info["unfinished evaluations (left out)"] = unfinished
            print("[experiment] unfinished evaluations, left out of the report: " + ", ".join(unfinished))
        report = self.report(results, tasks["evaluation"], tasks["train"], warm)
        print(report.read_text().split("## Settings")[0])
        print(f"[experiment] report rebuilt from {shown(self.root)}: {shown(report)}")
        return 0

    def report(self, results: dict[str, dict[str, Path]], eval_tasks: dict[str, list[str]],
               train_tasks: dict[str, list[str]], warm: str) -> Path:
        cfg = self.cfg
        comparisons = []
        for d in cfg.datasets:
            order = [m for m in (BASE, WARM, TREEDPO) if d.name in results.get(m, {})]
            if not order:
                continue
            tests = [t for t in ((TREEDPO, WARM), (WARM, BASE)) if t[0] in order and t[1] in order]
            outcomes = {m: comparison.load_outcomes(merged_csv(results[m][d.name])) for m in order}
            for m, got in outcomes.items():
                if set(got) != set(eval_tasks[d.name]):
                    raise StageError(f"{d.name}: {m} results cover {len(got)} of the "
                                     f"{len(eval_tasks[d.name])} held-out tasks ({merged_csv(results[m][d.name])})")
            comparisons.append(comparison.compare(d.name, outcomes, tests))
        settings = {"config": to_dict(cfg), "models": {BASE: cfg.base_model, WARM: warm,
                                                       TREEDPO: str(self.root / "treedpo_model")},
                    "tasks": {"train": train_tasks, "evaluation": eval_tasks}, **self.info,
                    "timings_s": {t: round(s, 1) for t, s in self.stages.timings},
                    "git_commit": git_commit()}
        return write_report(self.root, comparisons, settings)


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def write_report(root: Path, comparisons: list[comparison.EnvComparison], settings: dict) -> Path:
    """report.md, results.csv, paired_tests.csv, per_task.csv, success.png and settings.json in `root`."""
    root.mkdir(parents=True, exist_ok=True)
    comparison.write_csv(root / "results.csv", comparison.results_rows(comparisons))
    comparison.write_csv(root / "paired_tests.csv", comparison.paired_rows(comparisons))
    comparison.write_csv(root / "per_task.csv", comparison.task_rows(comparisons))
    comparison.plot(comparisons, root / "success.png")
    (root / "settings.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")
    cfg = settings.get("config", {})
    pairs = settings.get("pairs", {})
    lines = ["# TreeDPO experiment", "",
             f"Budget {cfg.get('budget')}; models: " + ", ".join(f"{k} = `{shown(v)}`" for k, v in settings["models"].items()),
             "",
             "Prompts: base = its usual prompt (in-context examples as configured in configs/tasks/<dataset>.yaml: "
             "GSM8K 8, MATH 1, embodied 0); warm-start and warm+TreeDPO = no in-context examples. "
             "Math: accuracy@1 (first answer correct); embodied: success. Protocol = share of the model's own "
             "steps that parse as a valid `Action:` or `Answer:`. Paired tests: exact McNemar on the tasks "
             "solved by exactly one of the two models.", ""]
    if pairs:
        lines += ["Preference pairs from tree sampling: " + ", ".join(f"{k} {v}" for k, v in pairs.items())
                  + (f"; DPO steps: {settings['dpo_steps']}" if "dpo_steps" in settings else
                     " (no pairs: DPO skipped)"), ""]
    lines += [comparison.markdown_tables(comparisons), "![success](success.png)", "", "## Settings", "",
              "Full settings, task ids and stage timings: `settings.json`; per-task outcomes: `per_task.csv`.", ""]
    if settings.get("timings_s"):
        lines += ["| stage | seconds |", "|---|---:|"]
        lines += [f"| {t} | {s:.0f} |" for t, s in settings["timings_s"].items()] + [""]
    lines += ["<details><summary>held-out task ids</summary>", ""]
    for c in comparisons:
        lines.append(f"- {c.dataset}: " + ", ".join(c.task_ids))
    lines += ["", "</details>", ""]
    report = root / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (configs/experiment.yaml, override as key=value):\n" + describe(ExperimentConfig))
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment config YAML")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild report.md, the CSVs and the plot from the evaluations an earlier (possibly "
                             "interrupted) run finished in output_dir; runs nothing else")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    stop_on_signals()
    try:
        cfg = load_config(ExperimentConfig, args.config, args.overrides)
        experiment = Experiment(cfg)
        return experiment.report_only() if args.report_only else experiment.main()
    except KeyboardInterrupt as exc:
        print(f"experiment: interrupted ({exc or 'SIGINT'}); workers stopped. What finished stays in output_dir; "
              f"`make experiment ARGS=--report-only` writes its report.", file=sys.stderr)
        return 130
    except (ConfigError, StageError, ModelError, ServerError, TrainingError) as exc:
        print(f"experiment: error: {exc}", file=sys.stderr)
        return 1
