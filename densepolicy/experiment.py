"""`make experiment`: does TreeDPO improve a warm-started agent? One command, one budget knob.

    warm start (expert SFT, cached) -> tree sampling with it on train tasks (no in-context examples)
    -> preference pairs -> DPO (TreeDPO/configs/<train_config>.yaml) -> evaluate base, warm-started
    and warm-started + TreeDPO on the SAME seeded held-out task ids, greedy once and `eval_samples` times
    at `eval_temperature` (sample k of every model with the same seed) -> per-env tables: greedy success
    with Wilson 95 % intervals and exact McNemar tests; mean per-task success over the samples with a
    task-clustered 95 % interval, the paired per-task-rate test (effect + CI, permutation and Wilcoxon
    p-values) and the minimum detectable effect at 80 % power; protocol-following rate, pairs per 1,000
    tree nodes, a bar plot and the settings, in `output_dir` (eval_results/experiment/).

Train-task screen (per env, `screen_tasks` > 0): a seeded sample of candidate train tasks is rolled out
`screen_samples` times by the warm-started model at `eval_temperature`; trees are grown only on the
candidates with mixed outcomes (some solved, some not), at most `sample_tasks` of them: a tree whose
root is always or never solved yields no pair.

`budget` scales every task count and the DPO step cap (budget=0.1 is a smoke run). The base model is
evaluated with its usual prompt (the in-context examples of configs/tasks/<dataset>.yaml: GSM8K 8,
MATH 1, embodied 0); the warm-started and TreeDPO models without examples (what they were trained on).
The stages are those of the demo (densepolicy/loop_stages.py); settings in configs/experiment.yaml.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

from densepolicy.config import (ConfigError, describe, from_dict, help_field, parse_overrides, read_yaml,
                                to_dict)
from densepolicy.loop_config import LoopConfig, WarmStart, cached_warm_start, load_loop_config
from densepolicy.loop_stages import (LoopStages, ScreenResult, StageError, merged_csv, move_aside, stop_on_signals,
                                     method_split, task_config, task_ids_setting, train_split)
from densepolicy.paths import PROJECT_ROOT, resolve, shown
from densepolicy.postprocess import comparison
from densepolicy.provenance import git_state, model_fingerprint, sha256_file
from densepolicy.results_io import OutputWriteError, iter_csv, write_text_atomic
from densepolicy.serving.models import ModelError
from densepolicy.serving.server import ServerError
from densepolicy.training.train import TrainingError

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "experiment.yaml"
BASE, WARM, TREEDPO = "base", "warm-start", "warm+TreeDPO"
EVAL_DIRS = {BASE: "eval_base", WARM: "eval_warm", TREEDPO: "eval_treedpo"}  # <output_dir>/<dir>/<dataset>/
# settings that may differ from the experiment named by reuse_from (they act after the trees and the warm start's
# evaluation); output_dir, resume, reuse_from and tmux_start_id (session names and ports: two experiments may run
# side by side) are where and how, not what
DPO_KEYS = frozenset({"train_config", "train_overrides", "dpo_epochs", "dpo_max_steps", "dpo_heldout_tasks",
                      "dataset_name"})
REUSABLE_DIFFS = DPO_KEYS | {"output_dir", "resume", "reuse_from", "tmux_start_id"}


@dataclasses.dataclass
class ExperimentDataset:
    """One environment of the experiment; task counts are multiplied by `budget`."""

    name: str = help_field(help="Dataset name (configs/tasks/<name>.yaml).")
    sample_tasks: int = help_field(20, help="Train tasks for tree sampling (x budget), a seeded sample of the train split.")
    sample: list[str] = help_field([], help="sample_tree.py key=value settings for tree sampling.")
    eval_split: str | None = help_field(None, help="Held-out split (null = the codeact_agent split of the task config).")
    valid_split: str | None = help_field(None, help="Validation split, train- and test-disjoint (used with "
                                                       "heldout=valid; null = this env has none and is left out).")
    eval_tasks: int = help_field(50, help="Held-out tasks (x budget, at most the split size), a seeded sample.")
    evaluate: list[str] = help_field([], help="sample_tree.py key=value settings for the evaluation of every model.")
    evaluate_base: bool = help_field(True, help="Evaluate the base model on this env too (with evaluate_base).")
    eval_samples: int | None = help_field(None, help="Sampled episodes per held-out task (null = the top-level "
                                                         "eval_samples).")
    screen_tasks: int = help_field(0, help="Candidate train tasks screened by rollouts (x budget); 0 = no screen, "
                                           "trees on sample_tasks seeded train tasks.")
    screen_samples: int = help_field(4, help="Rollouts per candidate (at eval_temperature); mixed outcomes = kept.")
    screen: list[str] = help_field([], help="sample_tree.py key=value settings of the screen rollouts, after "
                                            "`evaluate` (e.g. max_steps=8: the trees' depth, so a screen success is "
                                            "one a tree can reach).")
    screen_focus: float = help_field(0.0, help="Share of screen_tasks screened in a second pass, drawn from the task "
                                               "types (BabyAI levels, ALFWorld task types) whose first-pass rollouts "
                                               "were neither all solved nor all failed; 0 = one pass.")

    def __post_init__(self) -> None:
        if self.eval_samples is not None and self.eval_samples < 0:
            raise ConfigError(f"key 'datasets.{self.name}.eval_samples' must be >= 0, got {self.eval_samples}")
        if self.screen_tasks < 0 or self.screen_samples < 2:
            raise ConfigError(f"keys 'datasets.{self.name}.screen_tasks' (>= 0) and 'screen_samples' (>= 2: one "
                              f"rollout cannot be mixed) are out of range")
        if not 0 <= self.screen_focus < 1:
            raise ConfigError(f"key 'datasets.{self.name}.screen_focus' must be in [0, 1), got {self.screen_focus}")


@dataclasses.dataclass
class ExperimentConfig(LoopConfig):
    """Settings of `make experiment` (configs/experiment.yaml); the keys shared with `make demo` are `LoopConfig`'s."""

    budget: float = help_field(1.0, help="Scales task counts and the DPO step cap (1.0 = about 90 min on 2 cores).")
    resume: bool = help_field(False, help="Continue an interrupted experiment in output_dir with the same settings: "
                              "finished screen, tree and evaluation runs are reused (their workers resume), "
                              "a DPO model that finished on the same dataset too; otherwise DPO is rerun (an "
                              "older treedpo_model is moved aside).")
    reuse_from: str | None = help_field(
        None, help="Output dir of a finished experiment whose settings differ from these only in DPO keys "
                   f"({', '.join(sorted(DPO_KEYS))}): "
                   "its round-1 screen, trees and warm-start evaluations are copied and reused, so only DPO and "
                   "the TreeDPO evaluation run (a DPO sweep on the same pairs and the same warm-start episodes).")
    seed: int = help_field(20261126, help="Seed of the train/held-out task selection.")
    heldout: Literal["test", "valid"] = help_field(
        "test", help="test: evaluate on each env's test split (run once per reported configuration); valid: on its "
                     "valid_split, for choosing settings (envs without one are left out).")
    eval_samples: int = help_field(4, help="Sampled episodes per held-out task and model, besides the greedy one "
                                           "(0 = greedy only); sample k uses sampler seed eval_seed + k for every model.")
    eval_temperature: float = help_field(0.7, help="Temperature of the sampled evaluation episodes and screen rollouts.")
    eval_seed: int = help_field(1000, help="Sampler seed of sample 0 (sample k: eval_seed + k; screen: eval_seed + 100 + k).")
    dpo_epochs: float = help_field(1.0, help="Passes over the pairs; DPO steps = ceil(epochs * pairs / batch) ...")
    dpo_max_steps: int = help_field(60, help="... capped at this (x budget).")
    dpo_heldout_tasks: float = help_field(0.2, help="Share of the tasks with pairs whose pairs are held out of DPO and "
                                                    "scored after it (reward accuracy on unseen trees); 0 = none.")
    rounds: int = help_field(1, help="Sample -> DPO rounds; round r > 1 samples new train tasks with the newest "
                                     "model and trains it further (its own reference).")
    datasets: list[ExperimentDataset] = help_field([], help="The environments and their budgets.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.budget > 0:
            raise ConfigError(f"key 'budget' must be > 0, got {self.budget}")
        if self.dpo_epochs <= 0 or self.dpo_max_steps < 1:
            raise ConfigError("keys 'dpo_epochs' and 'dpo_max_steps' must be positive")
        if not 0 <= self.dpo_heldout_tasks < 1:
            raise ConfigError(f"key 'dpo_heldout_tasks' must be in [0, 1), got {self.dpo_heldout_tasks}")
        if self.rounds < 1:
            raise ConfigError(f"key 'rounds' must be >= 1, got {self.rounds}")
        if self.eval_samples < 0:
            raise ConfigError(f"key 'eval_samples' must be >= 0, got {self.eval_samples}")
        if not self.eval_temperature > 0:
            raise ConfigError(f"key 'eval_temperature' must be > 0 (sampled episodes), got {self.eval_temperature}")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"key 'datasets' names a dataset twice: {names}")

    def scaled(self, n: int) -> int:
        """A task count or step cap times the budget (at least 1)."""
        return max(1, round(n * self.budget))

    def samples_of(self, dataset: ExperimentDataset) -> int:
        """Sampled evaluation episodes per held-out task of `dataset`."""
        return self.eval_samples if dataset.eval_samples is None else dataset.eval_samples

    def sample_kinds(self, model_kind: str) -> list[str]:
        """Output sub-directories of the sampled evaluations of one model: `<kind>/sample<k>`."""
        most = max((self.samples_of(d) for d in self.datasets), default=0)
        return [f"{model_kind}/sample{k}" for k in range(most)]


def split_task_types(dataset: str, split: str) -> dict[str, str | None]:
    """The task ids of a split (only the configured `task_type` where the task config names one), in split order,
    each with its task type (BabyAI: the level; ALFWorld: the task type; None where the env has none)."""
    from envs import load_env
    tcfg = task_config(dataset)
    env = load_env(tcfg.get("env", dataset), split=split)
    types = {str(t): env.task_info(t).get("task_type") for t in env.task_ids()}
    if tcfg.get("task_type"):
        types = {t: kind for t, kind in types.items() if kind == tcfg["task_type"]}
    return types


def select_task_ids(dataset: str, split: str, n: int, seed: int) -> list[str]:
    """A seeded sample of `n` task ids of a split (all of them when the split is smaller), in split order."""
    ids = list(split_task_types(dataset, split))
    if n >= len(ids):
        return ids
    chosen = set(random.Random(f"{seed}:{dataset}:{split}").sample(ids, n))
    return [t for t in ids if t in chosen]


def focus_candidates(dataset: str, split: str, first: ScreenResult, n: int, seed: int) -> tuple[list[str], list[str]]:
    """The screen's second pass: up to `n` more candidates (a seeded sample, in split order) of the task types whose
    first-pass rollouts, pooled over the type's candidates, were neither all solved nor all failed. Returns (the
    candidates, those task types). A type always or never solved across its candidates yields few mixed tasks;
    one with both outcomes (one seed solved, another not, or a mixed seed) is where the mixed ones are."""
    types = split_task_types(dataset, split)
    solved: dict[str | None, int] = {}
    runs: dict[str | None, int] = {}
    for task, n_solved in first.solved.items():
        kind = types.get(task)
        solved[kind] = solved.get(kind, 0) + n_solved
        runs[kind] = runs.get(kind, 0) + first.rollouts
    focused = [k for k in runs if k is not None and 0 < solved[k] < runs[k]]
    pool = [t for t, kind in types.items() if kind in focused and t not in first.solved]
    if n >= len(pool):
        return pool, focused
    chosen = set(random.Random(f"{seed}:{dataset}:{split}:focus").sample(pool, n))
    return [t for t in pool if t in chosen], focused


def training_processes(train_yaml: dict[str, Any]) -> int:
    """How many processes `TreeDPO/train.py` trains with here: one per visible GPU when it launches torchrun
    (more than one GPU, or a DeepSpeed config on a GPU; densepolicy/training/launch.py), else 1."""
    from densepolicy.training.launch import visible_gpus

    gpus = visible_gpus()
    return len(gpus) if len(gpus) > 1 or (gpus and train_yaml.get("deepspeed")) else 1


def dpo_steps(cfg: ExperimentConfig, n_pairs: int, processes: int | None = None) -> int:
    """ceil(dpo_epochs * pairs / global batch), capped at dpo_max_steps x budget. The global batch is
    per_device_train_batch_size x gradient_accumulation_steps x training processes (`training_processes`;
    8 on an 8-GPU box)."""
    train_yaml = read_yaml(PROJECT_ROOT / "TreeDPO" / "configs" / f"{cfg.train_config}.yaml")
    train_yaml.update(parse_overrides(cfg.train_overrides, "train_overrides"))
    processes = training_processes(train_yaml) if processes is None else processes
    batch = (int(train_yaml.get("per_device_train_batch_size", 1)) * int(train_yaml.get("gradient_accumulation_steps", 1))
             * max(1, processes))
    return max(1, min(cfg.scaled(cfg.dpo_max_steps), math.ceil(cfg.dpo_epochs * n_pairs / batch)))


class Experiment:
    """The stages in order; `warm_start` is injectable for tests."""

    def __init__(self, cfg: ExperimentConfig, warm_start: WarmStart = cached_warm_start):
        if cfg.heldout == "valid":
            left_out = [d.name for d in cfg.datasets if not d.valid_split]
            if left_out:
                print(f"[experiment] heldout=valid: {', '.join(left_out)} without a valid_split, left out")
            cfg = dataclasses.replace(cfg, datasets=[dataclasses.replace(d, eval_split=d.valid_split)
                                                     for d in cfg.datasets if d.valid_split])
        if not cfg.datasets:
            raise ConfigError("key 'datasets' is empty" + (" (no dataset has a valid_split)" if cfg.heldout == "valid"
                                                           else ""))
        self.cfg = cfg
        self.root = resolve(cfg.output_dir)
        screened = any(d.screen_tasks for d in cfg.datasets)
        n_stages = 9 + (2 if cfg.evaluate_base else 0) + (1 if screened else 0) + (cfg.rounds - 1) * (
            5 + (1 if screened else 0))
        self.stages = LoopStages(self.root, tag="experiment", n_stages=n_stages, **cfg.stage_settings())
        self.warm_start = warm_start
        self.info: dict[str, object] = {}  # facts of this run for the report, also kept in <output_dir>/run.json

    def stored_config(self) -> dict[str, Any]:
        """This run's settings as run.json stores them (JSON types), for comparing with an earlier run's."""
        return json.loads(json.dumps(to_dict(self.cfg), default=str))

    def remember(self, **facts: object) -> None:
        """Add `facts` to the run's record (`run.json`), so `--report-only` can rebuild the report."""
        self.info.update(facts)
        write_text_atomic(self.root / "run.json", json.dumps({"config": to_dict(self.cfg), **self.info}, indent=1,
                                                             default=str) + "\n")

    def eval_settings(self, tasks: dict[str, list[str]], with_examples: bool) -> dict[str, list[str]]:
        out = {}
        for d in self.cfg.datasets:
            sets = [*d.evaluate, task_ids_setting(tasks[d.name]), f"split={self.eval_split(d)}"]
            out[d.name] = sets if with_examples else [*sets, "in_context_number=0"]
        return out

    def main(self) -> int:
        cfg, st = self.cfg, self.stages
        if cfg.resume:
            self.check_resumable()
            st.redo_pairs = True  # derived from the trees, which the resumed run may have completed
        else:
            move_aside(self.root, "experiment")
        st.release_tmux_ids(self.max_parallel_runs(), (0, 5))
        with st.stage("warm start (expert SFT; cached)"):
            warm = cfg.warm_start_model(st.say, self.warm_start)
        self.remember(warm_model=warm, warm_fingerprint=model_fingerprint(warm)["fingerprint"])
        if cfg.reuse_from:
            self.copy_reused_runs()
            st.redo_pairs = True  # recomputed from the copied trees (with this run's pair settings)
        st.check_prompt_style(warm, {d.name: d.sample for d in cfg.datasets})
        eval_tasks = {}
        for d in cfg.datasets:
            eval_split = self.eval_split(d)
            eval_tasks[d.name] = select_task_ids(d.name, eval_split, cfg.scaled(d.eval_tasks), cfg.seed)
            st.say(f"{d.name}: {len(eval_tasks[d.name])} held-out tasks ({eval_split})")
        results: dict[str, dict[str, Path]] = {}
        samples: dict[str, dict[str, list[Path]]] = {}
        train_by_round: list[dict[str, list[str]]] = []
        rounds: list[dict[str, object]] = []
        policy = warm
        for r in range(1, cfg.rounds + 1):
            prefix = "" if r == 1 else f"round{r}/"
            name = "the warm-started model" if r == 1 else f"the round-{r - 1} TreeDPO model"
            train_tasks, candidates = self.train_candidates(r)
            with st.serve(policy, "warm" if r == 1 else f"round{r}") as url:
                if candidates:
                    with st.stage(f"screen candidate train tasks by rollouts of {name}"):
                        train_tasks.update(self.screen(policy, url, candidates, prefix, r))
                train_by_round.append(train_tasks)
                self.write_tasks(train_by_round, eval_tasks)
                sample_settings = {d.name: [*d.sample, task_ids_setting(train_tasks[d.name]), "in_context_number=0"]
                                   for d in cfg.datasets if train_tasks[d.name]}
                with st.stage(f"tree sampling with {name} on train tasks (no in-context examples)"):
                    sample_dirs = st.run_envs(policy, "codeact_agent_tree", f"{prefix}sample", url, sample_settings, 0)
                nodes = tree_nodes(sample_dirs)
                if r == 1:
                    self.remember(tree_nodes=nodes)
                    with st.stage(f"evaluate the warm-started model on the held-out tasks ({self.episodes_note()})"):
                        results[WARM], samples[WARM] = self.evaluate(warm, url, WARM, eval_tasks, with_examples=False)
            merged_pairs = self.root / f"{prefix}merged_all_pairs.csv"
            with st.stage("preference pairs from sibling steps"):
                pairs = st.pairs(sample_dirs, merged_pairs)
                st.say("pairs per env: " + ", ".join(
                    f"{k} {v} ({per_thousand(v, nodes.get(k, 0))} per 1,000 nodes)" for k, v in pairs.items()))
            record: dict[str, object] = {"round": r, "policy": policy, "pairs": pairs, "tree_nodes": nodes}
            rounds.append(record)
            if r == 1:
                self.remember(pairs=pairs)
            if sum(pairs.values()) == 0:
                print(f"[experiment] round {r}: no preference pairs were found: no DPO in this round")
                self.remember(rounds=rounds)
                break
            # one round: <output_dir>/treedpo_model; several: <output_dir>/round<r>/treedpo_model (round 1 included)
            trained = (self.root / f"round{r}" if cfg.rounds > 1 else self.root) / "treedpo_model"
            record.update(self.train_round(policy, merged_pairs, trained, r))
            self.remember(rounds=rounds, treedpo_model=str(trained))
            if r == 1:
                self.remember(dpo_steps=record["dpo_steps"])
            policy = str(trained)
        if policy == warm:
            print("[experiment] no TreeDPO model was trained: its evaluation is skipped")
        else:
            with st.serve(policy, "treedpo") as url:
                with st.stage(f"evaluate the warm-started + TreeDPO model on the same tasks ({self.episodes_note()})"):
                    results[TREEDPO], samples[TREEDPO] = self.evaluate(policy, url, TREEDPO, eval_tasks,
                                                                       with_examples=False)
        if cfg.evaluate_base:
            with st.serve(cfg.base_model, "base") as url:
                with st.stage("evaluate the base model (usual prompt, in-context examples) on the same tasks"):
                    base_sets = [d.name for d in cfg.datasets if d.evaluate_base]
                    results[BASE], samples[BASE] = self.evaluate(cfg.base_model, url, BASE, eval_tasks,
                                                                 with_examples=True, datasets=base_sets)
        with st.stage("table, paired tests, plot"):
            report = self.report(results, samples, eval_tasks, train_by_round[0], warm)
            print(report.read_text().split("## Settings")[0])
        print(f"[experiment] finished in {st.elapsed():.0f} s; report: {shown(report)}")
        return 0

    def check_resumable(self) -> None:
        """`resume=true`: output_dir holds an experiment made with these settings (its run.json), else ConfigError."""
        path = self.root / "run.json"
        try:
            before = json.loads(path.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"key 'resume': {shown(path)} cannot be read ({exc}); nothing to resume") from None
        now = self.stored_config()
        if "device" not in before and isinstance(before, dict):  # made before the device key: a CPU run
            before = {**before, "device": "cpu", "gpu": now.get("gpu"),
                      "serving": {**(before.get("serving") or {}), "device": "cpu"}}
        diffs = config_diffs(before, now, ignore={"resume"})
        if diffs:
            raise ConfigError(f"key 'resume': {shown(self.root)} was made with other settings ({'; '.join(diffs)}); "
                              "resume with the same settings or drop resume=true")
        print(f"[experiment] resuming {shown(self.root)}: finished runs are reused")

    def copy_reused_runs(self) -> None:
        """`reuse_from=DIR`: copy DIR's round-1 screen, trees and warm-start evaluations into output_dir.

        DIR must hold an experiment whose settings equal these except for the DPO keys (REUSABLE_DIFFS), else
        ConfigError naming the keys. The copies are finished runs, so the stages find them done (a run that
        DIR left unfinished is completed here, in the copy; DIR itself is only read)."""
        source = resolve(self.cfg.reuse_from)
        if source.resolve() == self.root.resolve():
            raise ConfigError("key 'reuse_from' must name another experiment's output_dir, not this one's")
        path = source / "run.json"
        try:
            run = json.loads(path.read_text())
            before = run["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"key 'reuse_from': {shown(path)} cannot be read ({exc})") from None
        diffs = config_diffs(before, self.stored_config(), ignore=REUSABLE_DIFFS)
        if diffs:
            raise ConfigError(f"key 'reuse_from': {shown(source)} was made with other settings than DPO's "
                              f"({'; '.join(diffs)}); its trees and evaluations do not apply here")
        before_fp, now_fp = run.get("warm_fingerprint"), self.info["warm_fingerprint"]
        same_warm = (run.get("warm_model") == self.info["warm_model"] if before_fp is None  # older run: the path
                     else before_fp == now_fp)
        if not same_warm:
            raise ConfigError(f"key 'reuse_from': its runs were made by another warm start "
                              f"({run.get('warm_model')}, fingerprint {before_fp}) than this run's "
                              f"({self.info['warm_model']}, {now_fp})")
        copied = []
        for kind in ("screen", "screen_focus", "sample", EVAL_DIRS[WARM]):  # eval_warm/ holds the greedy and the sampled runs
            if (source / kind).is_dir() and not (self.root / kind).exists():
                shutil.copytree(source / kind, self.root / kind, symlinks=True)
                copied.append(kind)
        self.remember(reused_from=str(source))
        print(f"[experiment] reusing the screen, trees and warm-start evaluations of {shown(source)} "
              f"({', '.join(copied) or 'nothing to copy'}); DPO and the TreeDPO evaluation run anew")

    def train_candidates(self, round_no: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Train tasks of a round (a seeded sample, a new one per round) and, for screened envs, the candidates."""
        cfg = self.cfg
        train_tasks, candidates = {}, {}
        for d in cfg.datasets:
            n = cfg.scaled(d.screen_tasks) - self.focus_share(d) if d.screen_tasks else cfg.scaled(d.sample_tasks)
            train_tasks[d.name] = select_task_ids(d.name, train_split(d.name), n, self.round_seed(round_no))
            if d.screen_tasks:
                candidates[d.name] = train_tasks[d.name]
            self.stages.say(f"{d.name}: {len(train_tasks[d.name])} {'candidate ' if d.screen_tasks else ''}train "
                            f"tasks ({train_split(d.name)}){'' if round_no == 1 else f', round {round_no}'}")
        return train_tasks, candidates

    def round_seed(self, round_no: int) -> int:
        """Seed of a round's train-task sample: `seed` in round 1, a new one in each later round."""
        return self.cfg.seed if round_no == 1 else self.cfg.seed + round_no - 1

    def focus_share(self, d: ExperimentDataset) -> int:
        """Candidates of `d`'s screen left to its focused second pass (screen_focus x the scaled screen_tasks; the
        first pass keeps at least one, it is what the second is drawn from)."""
        n = self.cfg.scaled(d.screen_tasks)
        return min(n - 1, round(n * d.screen_focus)) if d.screen_tasks else 0

    def write_tasks(self, train_by_round: list[dict[str, list[str]]], eval_tasks: dict[str, list[str]]) -> None:
        data: dict[str, object] = {"train": train_by_round[0], "evaluation": eval_tasks}
        if len(train_by_round) > 1:
            data["train_by_round"] = train_by_round
        write_text_atomic(self.root / "tasks.json", json.dumps(data, indent=1))

    def train_round(self, policy: str, merged_pairs: Path, trained: Path, round_no: int) -> dict[str, object]:
        """DPO from `policy` on this round's pairs; pairs of `dpo_heldout_tasks` of the tasks are held out and
        scored by the trained model (LLaMA-Factory's eval: reward accuracy and margin on unseen trees)."""
        cfg, st = self.cfg, self.stages
        train_csv, heldout_csv, split = split_pairs_by_task(merged_pairs, cfg.dpo_heldout_tasks,
                                                            f"{cfg.seed}:{round_no}")
        steps = dpo_steps(cfg, split["train_pairs"])
        heldout = []
        if split["heldout_pairs"]:
            heldout = [f"eval_dataset={cfg.dataset_name}_heldout", "do_eval=true", "per_device_eval_batch_size=1"]
        with st.stage(f"LLaMA-Factory dataset ({split['train_pairs']} pairs, {split['heldout_pairs']} held out) "
                      f"+ DPO ({cfg.train_config}, {steps} steps)"):
            # the dataset lives with the experiment (<output_dir>/lf_data), so experiments side by side never share it
            data_dir = trained.parent / "lf_data"
            st.prepare_dataset(train_csv, cfg.dataset_name, policy, data_dir=data_dir)
            if heldout:
                st.prepare_dataset(heldout_csv, f"{cfg.dataset_name}_heldout", policy, data_dir=data_dir)
            if cfg.resume and finished_training(trained, data_dir / f"{cfg.dataset_name}.json"):
                st.say(f"reusing {shown(trained)}: its DPO finished on this very dataset (same settings)")
            else:
                if trained.exists():
                    move_aside(trained, "experiment")
                st.train(cfg.train_config, cfg.dataset_name, policy, trained,
                         [*cfg.train_overrides, f"max_steps={steps}", *heldout], data_dir=data_dir)
        metrics = train_metrics(trained)
        held = {k.removeprefix("eval_"): v for k, v in metrics.items()
                if k in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_loss")}
        if held:
            st.say("held-out pairs: " + ", ".join(f"{k} {v:.3f}" for k, v in held.items()))
        return {"dpo_steps": steps, **split, "heldout_metrics": held, "train_loss": metrics.get("train_loss")}

    # -- pieces of main ------------------------------------------------------------------------
    def eval_split(self, d: ExperimentDataset) -> str:
        """The held-out split: `eval_split` (= valid_split under heldout=valid), else the task config's."""
        return d.eval_split or method_split(d.name, "codeact_agent")

    def max_parallel_runs(self) -> int:
        """Most launcher runs in flight at once (each uses a block of 10 TMUX_START_IDs)."""
        cfg = self.cfg
        evals = (1 + max((cfg.samples_of(d) for d in cfg.datasets), default=0)) * len(cfg.datasets)
        screens = max((d.screen_samples for d in cfg.datasets if d.screen_tasks), default=0) * len(cfg.datasets)
        return max(len(cfg.datasets), evals, screens)

    def episodes_note(self) -> str:
        n = max((self.cfg.samples_of(d) for d in self.cfg.datasets), default=0)
        return f"greedy + {n} sampled episodes per task" if n else "greedy"

    def procs_per_run(self, runs_per_dataset: int) -> int:
        """Workers per launcher run when several runs share the server (about proc_per_server per dataset)."""
        return max(1, math.ceil(self.cfg.proc_per_server / max(1, runs_per_dataset)))

    def evaluate(self, model: str, url: str, name: str, tasks: dict[str, list[str]], with_examples: bool,
                 datasets: list[str] | None = None) -> tuple[dict[str, Path], dict[str, list[Path]]]:
        """The greedy run and the sampled runs of one model on the held-out tasks, all at once against `url`.

        Returns (dataset -> greedy run dir, dataset -> [sampled run dirs]); sample k ran with sampler seed
        eval_seed + k at eval_temperature, the same for every model.
        """
        cfg = self.cfg
        greedy = {k: v for k, v in self.eval_settings(tasks, with_examples).items()
                  if datasets is None or k in datasets}
        by_name = {d.name: d for d in cfg.datasets}
        kind = EVAL_DIRS[name]
        jobs: dict[str, dict[str, list[str]]] = {kind: greedy}
        for k, sample_kind in enumerate(cfg.sample_kinds(kind)):
            sampled = {ds: [*sets, f"temperature={cfg.eval_temperature}", f"seed={cfg.eval_seed + k}"]
                       for ds, sets in greedy.items() if k < cfg.samples_of(by_name[ds])}
            if sampled:
                jobs[sample_kind] = sampled
        out = self.stages.run_jobs(model, "codeact_agent", url, jobs, 5, self.procs_per_run(len(jobs)))
        sample_dirs = {ds: [out[j][ds] for j in jobs if j != kind and ds in out[j]] for ds in greedy}
        return out[kind], {ds: dirs for ds, dirs in sample_dirs.items() if dirs}

    def screen(self, model: str, url: str, candidates: dict[str, list[str]], prefix: str = "",
               round_no: int = 1) -> dict[str, list[str]]:
        """Roll out each candidate train task `screen_samples` times; keep the mixed ones (at most sample_tasks).

        With `screen_focus`, a second pass (`<prefix>screen_focus/`) screens more candidates of the task types the
        first pass found mixed (`focus_candidates`); the mixed ones of both passes are kept, the first pass's first.
        """
        cfg = self.cfg
        screened = {d.name: d for d in cfg.datasets if d.name in candidates}
        settings = {n: [*d.evaluate, *d.screen, "in_context_number=0", f"split={train_split(d.name)}"]
                    for n, d in screened.items()}
        rollouts = {n: d.screen_samples for n, d in screened.items()}
        procs = self.procs_per_run(max(rollouts.values()))
        results = self.stages.screen(model, url, {n: candidates[n] for n in screened}, settings, rollouts,
                                     cfg.eval_temperature, cfg.eval_seed + 100, prefix, procs)
        focus, focus_types = {}, {}
        for n, d in screened.items():
            if self.focus_share(d):
                focus[n], focus_types[n] = focus_candidates(n, train_split(n), results[n], self.focus_share(d),
                                                            self.round_seed(round_no))
                self.stages.say(f"{n}: focused screen pass on {len(focus[n])} candidates of the {len(focus_types[n])} "
                                f"task types the first pass found mixed")
        focus = {n: ids for n, ids in focus.items() if ids}
        second = (self.stages.screen(model, url, focus, {n: settings[n] for n in focus}, {n: rollouts[n] for n in focus},
                                     cfg.eval_temperature, cfg.eval_seed + 100, prefix, procs, name="screen_focus")
                  if focus else {})
        chosen, record = {}, {}
        for n, d in screened.items():
            both = ScreenResult({**results[n].solved, **(second[n].solved if n in second else {})}, results[n].rollouts)
            chosen[n] = both.mixed()[:cfg.scaled(d.sample_tasks)]
            record[n] = both.record(len(chosen[n]))
            if n in focus_types:
                record[n]["first_pass"] = results[n].counts()
                record[n]["focused_pass"] = {**(second[n].counts() if n in second else {"candidates": 0}),
                                             "task_types": focus_types[n]}
            self.stages.say(f"{n}: {both.summary(len(chosen[n]))}")
        if not prefix:
            self.remember(screen=record)
        else:
            self.remember(**{f"screen_{prefix.rstrip('/')}": record})
        return chosen

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
        samples: dict[str, dict[str, list[Path]]] = {}
        unfinished = []
        for model, kind in EVAL_DIRS.items():
            for d in self.cfg.datasets:
                out = self.root / kind / d.name
                sampled = [self.root / sk / d.name for sk in self.cfg.sample_kinds(kind)[:self.cfg.samples_of(d)]]
                done = [run for run in [out, *sampled] if list(run.glob("*.None.csv"))]
                if len(done) == 1 + len(sampled):
                    results.setdefault(model, {})[d.name] = out
                    if sampled:
                        samples.setdefault(model, {})[d.name] = sampled
                elif any(run.exists() for run in [out, *sampled]):
                    unfinished.append(f"{model} on {d.name} ({len(done)} of {1 + len(sampled)} runs merged)")
        if unfinished:
            self.info["unfinished evaluations (left out)"] = unfinished
            print("[experiment] unfinished evaluations, left out of the report: " + ", ".join(unfinished))
        report = self.report(results, samples, tasks["evaluation"], tasks["train"], warm)
        print(report.read_text().split("## Settings")[0])
        print(f"[experiment] report rebuilt from {shown(self.root)}: {shown(report)}")
        return 0

    def report(self, results: dict[str, dict[str, Path]], samples: dict[str, dict[str, list[Path]]],
               eval_tasks: dict[str, list[str]], train_tasks: dict[str, list[str]], warm: str) -> Path:
        cfg = self.cfg
        comparisons = []
        for d in cfg.datasets:
            order = [m for m in (BASE, WARM, TREEDPO) if d.name in results.get(m, {})]
            if not order:
                continue
            tests = [t for t in ((TREEDPO, WARM), (WARM, BASE)) if t[0] in order and t[1] in order]
            outcomes = {m: self.held_out_outcomes(merged_csv(results[m][d.name]), m, d.name, eval_tasks)
                        for m in order}
            sampled = {m: [self.held_out_outcomes(merged_csv(run), m, d.name, eval_tasks)
                           for run in samples[m][d.name]]
                       for m in order if d.name in samples.get(m, {})}
            if sampled and len({len(v) for v in sampled.values()}) != 1:
                raise StageError(f"{d.name}: the models have different numbers of sampled episodes "
                                 f"({ {m: len(v) for m, v in sampled.items()} })")
            comparisons.append(comparison.compare(d.name, outcomes, tests, samples=sampled or None,
                                                  temperature=cfg.eval_temperature if sampled else None))
        treedpo = str(self.info.get("treedpo_model") or self.root / "treedpo_model")
        settings = {"config": to_dict(cfg), "models": {BASE: cfg.base_model, WARM: warm, TREEDPO: treedpo},
                    "tasks": {"train": train_tasks, "evaluation": eval_tasks}, **self.info,
                    "timings_s": {t: round(s, 1) for t, s in self.stages.timings},
                    "git_commit": git_state()["commit"] or ""}
        return write_report(self.root, comparisons, settings)


    @staticmethod
    def held_out_outcomes(path: Path, model: str, dataset: str, eval_tasks: dict[str, list[str]]) -> dict:
        got = comparison.load_outcomes(path)
        if set(got) != set(eval_tasks[dataset]):
            raise StageError(f"{dataset}: {model} results cover {len(got)} of the "
                             f"{len(eval_tasks[dataset])} held-out tasks ({path})")
        return got


def split_pairs_by_task(merged: Path, fraction: float, seed: str) -> tuple[Path, Path, dict[str, object]]:
    """Split a merged pairs CSV by (dataset, task): the pairs of a seeded `fraction` of the tasks (at least one
    when two or more tasks have pairs and fraction > 0) go to `<stem>.heldout.csv`, the rest to `<stem>.train.csv`."""
    with open(merged, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames or [], list(reader)
    tasks = sorted({(r["dataset"], r["task_id"]) for r in rows})
    n_held = 0 if fraction <= 0 or len(tasks) < 2 else max(1, round(fraction * len(tasks)))
    held = set(random.Random(seed).sample(tasks, n_held))
    out = {}
    for part, keep in (("train", lambda r: (r["dataset"], r["task_id"]) not in held),
                       ("heldout", lambda r: (r["dataset"], r["task_id"]) in held)):
        path = merged.with_name(f"{merged.stem}.{part}.csv")
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(r for r in rows if keep(r))
        out[part] = path
    n_held_pairs = sum(1 for r in rows if (r["dataset"], r["task_id"]) in held)
    return out["train"], out["heldout"], {"train_pairs": len(rows) - n_held_pairs, "heldout_pairs": n_held_pairs,
                                          "heldout_tasks": [f"{d}:{t}" for d, t in sorted(held)]}


def config_diffs(before: dict[str, Any], now: dict[str, Any], ignore: frozenset[str] | set[str]) -> list[str]:
    """`key: old -> new` for every top-level setting that differs between two stored configs, except `ignore`."""
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | set(before))
            if k not in ignore and before.get(k) != now.get(k)]


def finished_training(model_dir: Path, dataset_file: Path) -> bool:
    """True if `model_dir` holds a model whose training finished (train.py's densepolicy_train.json, written last)
    on a dataset with the same content as `dataset_file` (the sha256 in the model's provenance record)."""
    if not (model_dir / "densepolicy_train.json").is_file() or not dataset_file.is_file():
        return False
    try:
        records = json.loads((model_dir / "provenance.json").read_text())["records"]
        trained_on = {d.get("sha256") for r in records.values() for d in r.get("datasets", [])
                      if d.get("name") == dataset_file.stem}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return sha256_file(dataset_file) in trained_on


def train_metrics(model_dir: Path) -> dict[str, float]:
    """LLaMA-Factory's final metrics of a trained model directory (densepolicy_train.json), {} if absent."""
    record = model_dir / "densepolicy_train.json"
    if not record.is_file():
        return {}
    return {k: v for k, v in json.loads(record.read_text()).get("metrics", {}).items() if isinstance(v, (int, float))}


def tree_nodes(sample_dirs: dict[str, Path]) -> dict[str, int]:
    """Tree nodes grown per dataset (the `nodes` column of each merged tree-sampling CSV)."""
    counts = {}
    for name, out in sample_dirs.items():
        counts[name] = sum(int(float(row.get("nodes") or 0)) for _, row in iter_csv(merged_csv(out)))
    return counts


def per_thousand(pairs: int, nodes: int) -> str:
    """Selected pairs per 1,000 tree nodes, as text ('–' without nodes)."""
    return f"{1000 * pairs / nodes:.1f}" if nodes else "–"


def focus_note(record: dict) -> str:
    """The two passes of a focused screen, side by side (the mixed share per candidate is what the focus buys)."""
    def share(part: dict) -> str:
        n = part.get("candidates", 0)
        return f"{part.get('mixed', 0)} of {n} mixed ({100 * part.get('mixed', 0) / n:.1f} %)" if n else "none"
    focused = record["focused_pass"]
    return (f" (first pass: {share(record['first_pass'])}; focused pass on the {len(focused['task_types'])} task "
            f"types mixed in the first: {share(focused)})")


def write_report(root: Path, comparisons: list[comparison.EnvComparison], settings: dict) -> Path:
    """report.md, results.csv, paired_tests.csv, per_task.csv, success.png and settings.json in `root` (with sampled
    episodes also sampled_results.csv, paired_rate_tests.csv and per_task_sampled.csv)."""
    root.mkdir(parents=True, exist_ok=True)
    comparison.write_csv(root / "results.csv", comparison.results_rows(comparisons))
    comparison.write_csv(root / "paired_tests.csv", comparison.paired_rows(comparisons))
    comparison.write_csv(root / "per_task.csv", comparison.task_rows(comparisons))
    if any(c.sampled for c in comparisons):
        comparison.write_csv(root / "sampled_results.csv", comparison.sampled_rows(comparisons))
        comparison.write_csv(root / "paired_rate_tests.csv", comparison.rate_test_rows(comparisons))
        comparison.write_csv(root / "per_task_sampled.csv", comparison.sampled_task_rows(comparisons))
    comparison.plot(comparisons, root / "success.png")
    write_text_atomic(root / "settings.json", json.dumps(settings, indent=1, default=str) + "\n")
    cfg = settings.get("config", {})
    pairs = settings.get("pairs", {})
    lines = ["# TreeDPO experiment", "",
             f"Budget {cfg.get('budget')}; models: " + ", ".join(f"{k} = `{shown(v)}`" for k, v in settings["models"].items()),
             "",
             "Prompts: base = its usual prompt (in-context examples as configured in configs/tasks/<dataset>.yaml: "
             "GSM8K 8, MATH 1, embodied 0); warm-start and warm+TreeDPO = no in-context examples. "
             "Math: accuracy@1 (first answer correct); embodied: success. Protocol = share of the model's own "
             "steps that parse as a valid `Action:` or `Answer:`. Greedy paired tests: exact McNemar on the tasks "
             "solved by exactly one of the two models. Sampled episodes: per-task success rates; the paired test "
             "compares per-task rates (effect = mean difference in points with a paired-t 95 % CI; two-sided "
             "sign-flip permutation and Wilcoxon signed-rank p-values); MDE = the smallest true effect this many "
             "tasks and samples detect with 80 % power at p < 0.05 (from the observed spread of the differences; "
             "'design': from the second model's per-task rates, binomial noise only).", ""]
    screen = settings.get("screen", {})
    if screen:
        lines += ["Train-task screen (rollouts of the warm-started model; trees only on mixed outcomes): " + "; ".join(
            f"{k}: {v['mixed']} of {v['candidates']} candidates mixed over {v['rollouts_per_task']} rollouts "
            f"({v['always_solved']} always, {v['never_solved']} never solved), trees on {v['trees']}"
            + (focus_note(v) if "focused_pass" in v else "") for k, v in screen.items()), ""]
    nodes = settings.get("tree_nodes", {})
    if pairs:
        lines += ["Preference pairs from tree sampling: " + ", ".join(
            f"{k} {v}" + (f" from {nodes[k]} nodes ({per_thousand(v, nodes[k])} per 1,000 nodes)" if k in nodes else "")
            for k, v in pairs.items())
                  + (f"; DPO steps: {settings['dpo_steps']}" if "dpo_steps" in settings else
                     " (no pairs: DPO skipped)"), ""]
    rounds = settings.get("rounds", [])
    if rounds:
        lines += ["| round | trained from | pairs (train / held out) | tree nodes | pairs per 1,000 nodes | DPO steps "
                  "| held-out pairs: reward accuracy | margin |", "|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in rounds:
            n_pairs, n_nodes = sum(r.get("pairs", {}).values()), sum(r.get("tree_nodes", {}).values())
            held = r.get("heldout_metrics", {})
            acc, margin = held.get("rewards/accuracies"), held.get("rewards/margins")
            lines.append(f"| {r['round']} | `{shown(r['policy'])}` | {r.get('train_pairs', n_pairs)} / "
                         f"{r.get('heldout_pairs', 0)} | {n_nodes} | {per_thousand(n_pairs, n_nodes)} "
                         f"| {r.get('dpo_steps', '–')} | {'–' if acc is None else f'{acc:.3f}'} "
                         f"| {'–' if margin is None else f'{margin:.3f}'} |")
        lines += ["", "Held-out pairs: the pairs of a seeded share of the tasks (`dpo_heldout_tasks`), left out of "
                  "DPO and scored by the trained model (reward accuracy = share of pairs whose chosen step gets the "
                  "higher implicit reward; 0.5 = chance).", ""]
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
    write_text_atomic(report, "\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (override as key=value; configs/experiment.yaml sets the experiment's values, the defaults "
               "below are for the keys it leaves out):\n" + describe(ExperimentConfig))
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment config YAML")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild report.md, the CSVs and the plot from the evaluations an earlier (possibly "
                             "interrupted) run finished in output_dir; runs nothing else")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    stop_on_signals()
    try:
        cfg = load_loop_config(ExperimentConfig, args.config, args.overrides)
        experiment = Experiment(cfg)
        return experiment.report_only() if args.report_only else experiment.main()
    except KeyboardInterrupt as exc:
        print(f"experiment: interrupted ({exc or 'SIGINT'}); workers stopped. What finished stays in output_dir; "
              f"`make experiment ARGS=--report-only` writes its report.", file=sys.stderr)
        return 130
    except (ConfigError, StageError, ModelError, ServerError, TrainingError) as exc:
        print(f"experiment: error: {exc}", file=sys.stderr)
        return 1
    except OutputWriteError as exc:  # names the file and what to free; the finished stages are kept
        print(f"experiment: error: {exc} (add resume=true)", file=sys.stderr)
        return 5
