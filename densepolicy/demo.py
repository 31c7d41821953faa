"""`make demo`: the whole DensePolicy loop on the embedded model, from its warm start, stage by stage.

    warm start (expert SFT, built once and cached) -> serve it -> tree sampling (launcher, every env)
    -> evaluate it -> pairs -> LLaMA-Factory dataset -> DPO (cpu_tiny) -> evaluate warm+TreeDPO on the
    same tasks -> score table + paired comparison + plots

Every stage is one of the project's own commands (densepolicy/loop_stages.py, shared with
`make experiment`); this module only orders them with the demo's small budgets (configs/demo.yaml).
When tree sampling finds no pair, the demo says so in one line, skips training and still finishes
the evaluation (exit 0); only real errors exit non-zero.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from densepolicy.config import ConfigError, describe, help_field
from densepolicy.loop_config import LoopConfig, WarmStart, cached_warm_start, load_loop_config
from densepolicy.loop_stages import (LoopStages, StageError, merged_csv, move_aside, stop_on_signals,
                                     task_ids_setting, train_split, tree_to_plot)
from densepolicy.paths import PROJECT_ROOT, resolve, shown
from densepolicy.postprocess import comparison
from densepolicy.results_io import OutputWriteError, write_text_atomic
from densepolicy.serving.models import ModelError
from densepolicy.serving.server import ServerError
from densepolicy.training.train import TrainingError

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"
BASE, WARM, TREEDPO = "base", "warm-start", "warm+TreeDPO"
NO_PAIRS_MESSAGE = "[demo] no preference pairs were found: DPO training is skipped; the evaluation goes on"


@dataclasses.dataclass
class DemoDataset:
    """One environment of the demo."""

    name: str = help_field(help="Dataset name (configs/tasks/<name>.yaml).")
    sample: list[str] = help_field([], help="sample_tree.py key=value settings for tree sampling (train split).")
    evaluate: list[str] = help_field([], help="sample_tree.py key=value settings for evaluation (test split).")
    screen: list[str] = help_field([], help="Candidate train task ids, each rolled out screen_samples times by the "
                                            "warm start; trees grow on `trees` of them, mixed outcomes first "
                                            "([] = no screen: `sample` names the tasks).")
    screen_samples: int = help_field(2, help="Rollouts per candidate (at screen_temperature).")
    trees: int = help_field(2, help="Trees grown after a screen.")

    def __post_init__(self) -> None:
        if self.screen and any(s.startswith("task_ids=") for s in self.sample):
            raise ConfigError(f"keys 'datasets.{self.name}.screen' and 'sample: task_ids=...' both choose the "
                              "tree tasks: keep one")
        if self.screen_samples < 2 or self.trees < 1:
            raise ConfigError(f"keys 'datasets.{self.name}.screen_samples' (>= 2: one rollout cannot be mixed) and "
                              f"'trees' (>= 1) are out of range")


@dataclasses.dataclass
class DemoConfig(LoopConfig):
    """Budgets of `make demo` (configs/demo.yaml); the keys shared with `make experiment` are `LoopConfig`'s."""

    datasets: list[DemoDataset] = help_field([], help="The environments and their budgets.")
    screen_temperature: float = help_field(0.7, help="Temperature of the screen rollouts.")
    screen_seed: int = help_field(1100, help="Sampler seed of screen rollout 0 (rollout k: screen_seed + k).")


class Demo:
    """Runs the stages in order; `warm_start` and `stages` are injectable for tests."""

    def __init__(self, cfg: DemoConfig, warm_start: WarmStart = cached_warm_start,
                 stages: LoopStages | None = None) -> None:
        self.cfg = cfg
        self.root = resolve(cfg.output_dir)
        n_stages = 10 + (2 if cfg.evaluate_base else 0) + (1 if any(d.screen for d in cfg.datasets) else 0)
        self.stages = stages or LoopStages(self.root, tag="demo", n_stages=n_stages, **cfg.stage_settings())
        self.warm_start = warm_start

    def settings(self, kind: str, tree_tasks: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """Sampler settings per dataset; the warm-started models are prompted without in-context examples.
        `tree_tasks` (dataset -> ids chosen by the screen) restricts the trees to those tasks."""
        out = {}
        for d in self.cfg.datasets:
            sets = d.sample if kind == "sample" else d.evaluate
            if kind == "sample" and tree_tasks and d.name in tree_tasks:
                sets = [*sets, task_ids_setting(tree_tasks[d.name])]
            out[d.name] = list(sets) if kind == "base" else [*sets, "in_context_number=0"]
        return out

    def screen(self, model: str, url: str) -> dict[str, list[str]]:
        """Roll out each env's candidate train tasks; the trees grow on `trees` of them, mixed outcomes first, so
        that a warm start rebuilt with other weights still gets trees that can yield pairs."""
        cfg, st = self.cfg, self.stages
        screened = [d for d in cfg.datasets if d.screen]
        settings = {d.name: [*d.evaluate, "in_context_number=0", f"split={train_split(d.name)}"] for d in screened}
        results = st.screen(model, url, {d.name: d.screen for d in screened}, settings,
                            {d.name: d.screen_samples for d in screened}, cfg.screen_temperature, cfg.screen_seed,
                            procs=max(1, cfg.proc_per_server // 2))
        chosen = {}
        for d in screened:
            chosen[d.name] = results[d.name].ranked()[:d.trees]
            st.say(f"{d.name}: {results[d.name].summary(len(chosen[d.name]))}: {', '.join(chosen[d.name])}")
        return chosen

    def main(self) -> int:
        cfg, st = self.cfg, self.stages
        move_aside(self.root, "demo")
        screen_runs = sum(d.screen_samples for d in cfg.datasets if d.screen)  # one launcher run per rollout and env
        st.release_tmux_ids(max(len(cfg.datasets), screen_runs), (0, 5))
        with st.stage("warm start (expert SFT; built once, then cached)"):
            warm = cfg.warm_start_model(st.say, self.warm_start)
        st.check_prompt_style(warm, self.settings("sample"))
        results: dict[str, dict[str, Path]] = {}
        with st.serve(warm, "warm") as url:
            tree_tasks = None
            if any(d.screen for d in cfg.datasets):
                with st.stage("screen candidate train tasks by rollouts of the warm-started model"):
                    tree_tasks = self.screen(warm, url)
            with st.stage("tree sampling (codeact_agent_tree) with the warm-started model on the train splits"):
                sample_dirs = st.run_envs(warm, "codeact_agent_tree", "sample", url,
                                          self.settings("sample", tree_tasks), 0)
            with st.stage("evaluate the warm-started model (codeact_agent) on the evaluation splits"):
                results[WARM] = st.run_envs(warm, "codeact_agent", "eval_warm", url, self.settings("eval"), 5)
        merged_pairs = self.root / "merged_all_pairs.csv"
        with st.stage("preference pairs from sibling steps (+ budgeted merge)"):
            pairs = st.pairs(sample_dirs, merged_pairs)
            st.say(f"{sum(pairs.values())} pairs (" + ", ".join(f"{k} {v}" for k, v in pairs.items())
                   + f") in {shown(merged_pairs)}")
        trained = self.root / "trained_model"
        if sum(pairs.values()) == 0:
            print(NO_PAIRS_MESSAGE, flush=True)
            st.stage_no += 4
        else:
            with st.stage("LLaMA-Factory dataset"):
                st.prepare_dataset(merged_pairs, cfg.dataset_name, warm)
            with st.stage(f"DPO training ({cfg.train_config}) with LLaMA-Factory"):
                st.train(cfg.train_config, cfg.dataset_name, warm, trained, cfg.train_overrides)
            with st.serve(str(trained), "trained") as url:
                with st.stage("evaluate the warm+TreeDPO model on the same tasks"):
                    results[TREEDPO] = st.run_envs(str(trained), "codeact_agent", "eval_trained", url,
                                                   self.settings("eval"), 5)
        if cfg.evaluate_base:
            with st.serve(cfg.base_model, "base") as url:
                with st.stage("evaluate the base model (usual prompt) on the same tasks"):
                    results[BASE] = st.run_envs(cfg.base_model, "codeact_agent", "eval_base", url,
                                                self.settings("base"), 5)
        with st.stage("score table, paired comparison + plots"):
            table = self.tables(results)
            self.plot_tree(sample_dirs, merged_pairs)
        self.summary(sample_dirs, merged_pairs, trained if TREEDPO in results else None, table)
        return 0

    def tables(self, results: dict[str, dict[str, Path]]) -> Path:
        """`--see_score` table of every evaluated model, then success + protocol rate with Wilson CIs."""
        st, order = self.stages, [m for m in (BASE, WARM, TREEDPO) if m in results]
        files, labels = [], []
        for d in self.cfg.datasets:
            for label in order:
                files.append(str(merged_csv(results[label][d.name])))
                labels.append(label)
        table = self.root / "scores"
        st.run(st.py("post_process_test_result.py", "--see_score", "--files", *files, "--labels", *labels,
                     "--output", str(table), "--overwrite"), "see_score")
        print((st.logs / "see_score.log").read_text().split("\n", 1)[1])
        tests = [t for t in ((TREEDPO, WARM), (WARM, BASE)) if t[0] in results and t[1] in results]
        comparisons = [comparison.compare(d.name, {m: comparison.load_outcomes(merged_csv(results[m][d.name]))
                                                   for m in order}, tests) for d in self.cfg.datasets]
        text = comparison.markdown_tables(comparisons)
        write_text_atomic(self.root / "comparison.md", text)
        comparison.plot(comparisons, self.root / "comparison.png", title="demo: held-out tasks, 95 % Wilson intervals")
        print(text)
        return table

    def plot_tree(self, sample_dirs: dict[str, Path], merged_pairs: Path) -> None:
        st = self.stages
        dataset, task = tree_to_plot(merged_pairs, self.cfg.datasets[0].name)
        tree_file = next((sample_dirs[dataset] / "trees").glob("*.None.jsonl"), None)
        if tree_file is not None and tree_file.stat().st_size:
            task = task or json.loads(tree_file.open().readline())["task_id"]
            st.run(st.py("post_process_training_data.py", "--tree_file", str(tree_file), "--plot_tree",
                         task, "--output", str(self.root / "tree_plot")), "plot_tree")

    def summary(self, sample_dirs, merged_pairs, trained, table) -> None:
        st = self.stages
        print(f"\n[demo] finished in {st.elapsed():.0f} s. Artefacts:")
        evals = ", ".join(shown(p) for p in sorted(self.root.glob("eval_*")))
        rows = [("tree samples (CSV + trees/*.jsonl)", shown(self.root / "sample")),
                ("pairs per env", ", ".join(shown(p / "pairs") for p in sample_dirs.values())),
                ("merged pairs", shown(merged_pairs) if merged_pairs.exists() else "none (no pairs)"),
                ("LLaMA-Factory dataset", shown(PROJECT_ROOT / "TreeDPO" / "data" / f"{self.cfg.dataset_name}.json")
                 if trained else "skipped (no pairs)"),
                ("trained model + loss plots", shown(trained) if trained else "skipped (no pairs)"),
                ("evaluation results", evals),
                ("score tables", f"{shown(table)}*"),
                ("comparison (success, CI, protocol)", shown(self.root / "comparison") + ".{md,png}"),
                ("tree plot", shown(self.root / "tree_plot") + "*"),
                ("logs", shown(st.logs))]
        for what, where in rows:
            print(f"  {what:<36} {where}")
        print("  stage timings: " + ", ".join(f"{t}: {s:.0f}s" for t, s in st.timings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (override as key=value; configs/demo.yaml sets the demo's values, the defaults "
               "below are for the keys it leaves out):\n" + describe(DemoConfig))
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo config YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    stop_on_signals()
    try:
        cfg = load_loop_config(DemoConfig, args.config, args.overrides)
        return Demo(cfg).main()
    except KeyboardInterrupt as exc:
        print(f"demo: interrupted ({exc or 'SIGINT'}); workers stopped", file=sys.stderr)
        return 130
    except (ConfigError, StageError, ModelError, ServerError, TrainingError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except OutputWriteError as exc:  # names the file and what to free
        print(f"demo: error: {exc}", file=sys.stderr)
        return 5
