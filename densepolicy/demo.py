"""`make demo`: the whole DensePolicy loop on the embedded model, stage by stage.

    serve base model -> tree sampling (launcher, 4 envs) -> merge -> pairs -> budgeted merge
    -> LLaMA-Factory dataset -> DPO (cpu_tiny) -> evaluate base and trained -> score table + plots

Every stage is one of the project's own commands, run as a user would run it; this module only
sequences them, prints a progress line per stage and a summary of where every artefact is.
Budgets live in configs/demo.yaml.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from densepolicy.config import ConfigError, describe, help_field, load_config
from densepolicy.paths import PROJECT_ROOT, main_python, resolve

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"


@dataclasses.dataclass
class DemoDataset:
    """One environment of the demo."""

    name: str = help_field(help="Dataset name (configs/tasks/<name>.yaml).")
    sample: list[str] = help_field([], help="sample_tree.py key=value settings for tree sampling (train split).")
    evaluate: list[str] = help_field([], help="sample_tree.py key=value settings for evaluation (test split).")


@dataclasses.dataclass
class DemoConfig:
    """Budgets of `make demo` (configs/demo.yaml)."""

    model: str = help_field("SmolLM2-135M-Instruct", help="Base model (name in configs/models.yaml or a directory).")
    output_dir: str = help_field("eval_results/demo", help="Where every artefact of the demo goes.")
    proc_per_server: int = help_field(2, help="Workers per server (PROC_PER_GPU of distributed_test.sh).")
    tmux_start_id: int = help_field(70, help="First TMUX_START_ID; each launcher run uses a block of 10 ids.")
    serving: dict[str, str | int | float | bool] = help_field({}, help="Overrides of configs/serving.yaml.")
    sampler: dict[str, str | int | float | bool] = help_field({}, help="Settings forwarded to every worker.")
    train_config: str = help_field("cpu_tiny", help="TreeDPO/configs/<name>.yaml.")
    train_overrides: list[str] = help_field([], help="LLaMA-Factory key=value overrides for the demo training.")
    dataset_name: str = help_field("tree_dpo_demo", help="Name of the DPO dataset in TreeDPO/data/dataset_info.json.")
    datasets: list[DemoDataset] = help_field([], help="The environments and their budgets.")


class DemoError(RuntimeError):
    """A stage failed; the message names the stage, the command and its log."""


class Demo:
    """Runs the stages in order; each stage is a method that returns its artefacts."""

    def __init__(self, cfg: DemoConfig, n_stages: int = 9) -> None:
        self.cfg = cfg
        self.root = resolve(cfg.output_dir)
        self.logs = self.root / "logs"
        self.n_stages = n_stages
        self.stage_no = 0
        self.t0 = time.monotonic()
        self.artefacts: dict[str, str] = {}
        self.timings: list[tuple[str, float]] = []

    # -- plumbing -----------------------------------------------------------------------------
    def stage(self, title: str):
        """Context manager printing `[demo k/n] title ... done in Xs`."""
        demo = self

        class _Stage:
            def __enter__(self):
                demo.stage_no += 1
                self.start = time.monotonic()
                print(f"[demo {demo.stage_no}/{demo.n_stages}] {title} ...", flush=True)

            def __exit__(self, exc_type, exc, tb):
                took = time.monotonic() - self.start
                demo.timings.append((title, took))
                status = "done" if exc is None else "FAILED"
                print(f"[demo {demo.stage_no}/{demo.n_stages}] {title}: {status} in {took:.0f}s "
                      f"(total {time.monotonic() - demo.t0:.0f}s)", flush=True)

        return _Stage()

    def run(self, args: list[str], log_name: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one project command; its output goes to logs/<log_name>.log."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{log_name}.log"
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(args)}\n")
            fh.flush()
            proc = subprocess.run(args, cwd=PROJECT_ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True)
        if check and proc.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-25:])
            raise DemoError(f"command failed (exit {proc.returncode}): {shlex.join(args)}\n"
                            f"log: {log}\n{tail}")
        return proc

    def py(self, script: str, *args: str) -> list[str]:
        return [str(main_python()), str(PROJECT_ROOT / script), *args]

    def launcher(self, model: str, dataset: str, method: str, tmux_id: int, out: Path,
                 server_url: str, settings: list[str]) -> list[str]:
        """`./distributed_test.sh` against the demo's running server, blocking until the workers end."""
        sampler = [f"sampler.{kv}" for kv in settings]
        sampler += [f"sampler.{k}={v}" for k, v in self.cfg.sampler.items()]
        return [str(PROJECT_ROOT / "distributed_test.sh"), model, dataset, method,
                str(self.cfg.proc_per_server), str(tmux_id), "server=external", f"server_url={server_url}",
                "wait=true", "gpus=none", f"output_dir={out}", *sampler]

    # -- stages -------------------------------------------------------------------------------
    def start_server(self, model: str, name: str):
        from densepolicy.serving.server import ServingConfig, VLLMServer
        overrides = [f"{k}={v}" for k, v in self.cfg.serving.items()]
        scfg = load_config(ServingConfig, PROJECT_ROOT / "configs" / "serving.yaml", overrides)
        server = VLLMServer(model, scfg, self.logs / f"server_{name}.log")
        server.start()
        return server

    def run_envs(self, model: str, method: str, kind: str, server_url: str, id_offset: int) -> dict[str, Path]:
        """Run METHOD on every dataset through the launcher, all datasets at once; merge each."""
        outs = {d.name: self.root / kind / d.name for d in self.cfg.datasets}
        jobs = {}
        with concurrent.futures.ThreadPoolExecutor(len(self.cfg.datasets)) as pool:
            for i, d in enumerate(self.cfg.datasets):
                settings = d.sample if method == "codeact_agent_tree" else d.evaluate
                tmux_id = self.cfg.tmux_start_id + id_offset + 10 * i
                args = self.launcher(model, d.name, method, tmux_id, outs[d.name], server_url, settings)
                jobs[d.name] = pool.submit(self.run, args, f"{kind}_{d.name}")
            for name, job in jobs.items():
                job.result()
        for name, out in outs.items():
            template = shard_template(out)
            self.run(self.py("post_process_test_result.py", "--merge_distributed_result", "--data_dir", str(out),
                             "--dataset_file_name_list", template), f"merge_{kind}_{name}")
        return outs

    def pairs(self, sample_dirs: dict[str, Path]) -> Path:
        pair_files = []
        for name, out in sample_dirs.items():
            merged = shard_template(out).replace("{}", "None")
            self.run(self.py("post_process_training_data.py", "--process_result", "--data_dir", str(out),
                             "--dataset_file_name", merged, "--data_sub_dir", "pairs"), f"pairs_{name}")
            pair_files += sorted((out / "pairs").glob("*.pairs.csv"))
        merged_pairs = self.root / "merged_all_pairs.csv"
        self.run(self.py("post_process_training_data.py", "--merge_all_pairs", "--pairs_files",
                         *map(str, pair_files), "--output", str(merged_pairs), "--overwrite"), "merge_all_pairs")
        return merged_pairs

    def release_tmux_ids(self) -> None:
        """Stop leftovers of an earlier, interrupted demo that used the same TMUX_START_IDs."""
        for offset in (0, 5):
            for i in range(len(self.cfg.datasets)):
                tmux_id = self.cfg.tmux_start_id + offset + 10 * i
                self.run([str(PROJECT_ROOT / "distributed_test.sh"), "stop", str(tmux_id)], "stop_leftovers",
                         check=False)

    def main(self) -> int:
        cfg = self.cfg
        if self.root.exists() and any(self.root.iterdir()):
            backup = self.root.with_name(f"{self.root.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
            self.root.rename(backup)
            print(f"[demo] previous demo output moved to {backup}")
        self.root.mkdir(parents=True)
        self.release_tmux_ids()
        with self.stage(f"start vLLM server for {cfg.model}"):
            server = self.start_server(cfg.model, "base")
        try:
            with self.stage("tree sampling (codeact_agent_tree) on the train splits of every env"):
                sample_dirs = self.run_envs(cfg.model, "codeact_agent_tree", "sample", server.base_url, 0)
            with self.stage("preference pairs from sibling steps (+ budgeted merge)"):
                merged_pairs = self.pairs(sample_dirs)
                n_pairs = count_rows(merged_pairs)
                print(f"        {n_pairs} pairs in {merged_pairs}")
                if n_pairs == 0:
                    raise DemoError("no preference pairs were found: raise the sampling budgets in configs/demo.yaml")
            with self.stage("evaluate the base model (codeact_agent) on the evaluation splits"):
                base_dirs = self.run_envs(cfg.model, "codeact_agent", "eval_base", server.base_url, 5)
        finally:
            server.stop()
        with self.stage("LLaMA-Factory dataset"):
            self.run(self.py("prepare_dataset.py", "--pairs", str(merged_pairs), "--name", cfg.dataset_name,
                             "--model", cfg.model, "--overwrite"), "prepare_dataset")
        trained = self.root / "trained_model"
        with self.stage(f"DPO training ({cfg.train_config}) with LLaMA-Factory"):
            self.run(self.py("TreeDPO/train.py", cfg.train_config, "--dataset", cfg.dataset_name, "--model",
                             cfg.model, "--output-dir", str(trained), *cfg.train_overrides), "train")
        with self.stage("start vLLM server for the trained model"):
            server = self.start_server(str(trained), "trained")
        try:
            with self.stage("evaluate the trained model on the same tasks"):
                trained_dirs = self.run_envs(str(trained), "codeact_agent", "eval_trained", server.base_url, 5)
        finally:
            server.stop()
        with self.stage("score table base vs trained + plots"):
            files, labels = [], []
            for d in cfg.datasets:
                for label, dirs in (("base", base_dirs), ("trained", trained_dirs)):
                    files.append(str(dirs[d.name] / shard_template(dirs[d.name]).replace("{}", "None")))
                    labels.append(f"{label}")
            table = self.root / "scores"
            self.run(self.py("post_process_test_result.py", "--see_score", "--files", *files, "--labels", *labels,
                             "--output", str(table), "--overwrite"), "see_score")
            print((self.logs / "see_score.log").read_text().split("\n", 1)[1])
            dataset, task = tree_to_plot(merged_pairs, cfg.datasets[0].name)
            tree_file = next((sample_dirs[dataset] / "trees").glob("*.None.jsonl"), None)
            if tree_file is not None:
                task = task or json.loads(tree_file.open().readline())["task_id"]
                self.run(self.py("post_process_training_data.py", "--tree_file", str(tree_file), "--plot_tree",
                                 task, "--output", str(self.root / "tree_plot")), "plot_tree")
        self.summary(sample_dirs, merged_pairs, trained, table)
        return 0

    def summary(self, sample_dirs, merged_pairs, trained, table) -> None:
        print("\n[demo] finished in %.0f s. Artefacts:" % (time.monotonic() - self.t0))
        rows = [("tree samples (CSV + trees/*.jsonl)", self.root / "sample"),
                ("pairs per env", ", ".join(str(p / "pairs") for p in sample_dirs.values())),
                ("merged pairs", merged_pairs),
                ("LLaMA-Factory dataset", PROJECT_ROOT / "TreeDPO" / "data" / f"{self.cfg.dataset_name}.json"),
                ("trained model + loss plots", trained),
                ("evaluation results", f"{self.root / 'eval_base'} , {self.root / 'eval_trained'}"),
                ("score tables", f"{table}*"),
                ("tree plot", self.root / "tree_plot*"),
                ("logs", self.logs)]
        for what, where in rows:
            print(f"  {what:<36} {where}")
        print("  stage timings: " + ", ".join(f"{t}: {s:.0f}s" for t, s in self.timings))


def shard_template(run_dir: Path) -> str:
    """`<dataset>.<split>.{}.csv` of the shards in a run directory (read from the shard files)."""
    names = sorted(p.name for p in run_dir.glob("*.csv") if not p.name.endswith(".None.csv"))
    names += sorted(p.name for p in (run_dir / "distributed_result").glob("*.csv"))
    names += sorted(p.name for p in run_dir.glob("*.None.csv"))
    if not names:
        raise DemoError(f"no result CSV in {run_dir}")
    dataset, split, *_ = names[0].split(".")
    return f"{dataset}.{split}.{{}}.csv"


def tree_to_plot(pairs_csv: Path, fallback_dataset: str) -> tuple[str, str | None]:
    """(dataset, task id) of the task with the most pairs, so the picture shows chosen/rejected nodes."""
    import collections
    import csv
    with open(pairs_csv, newline="") as fh:
        counts = collections.Counter((row["dataset"], row["task_id"]) for row in csv.DictReader(fh))
    if not counts:
        return fallback_dataset, None
    return counts.most_common(1)[0][0]


def count_rows(csv_path: Path) -> int:
    import csv
    with open(csv_path, newline="") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (configs/demo.yaml, override as key=value):\n" + describe(DemoConfig))
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo config YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(DemoConfig, args.config, args.overrides)
        return Demo(cfg).main()
    except (ConfigError, DemoError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
