"""The stages of the DensePolicy loop, each run as the project's own command (shared by demo and experiment).

    serve a model -> tree sampling / evaluation through the launcher (all datasets at once) -> merge
    -> preference pairs -> LLaMA-Factory dataset -> DPO training

`LoopStages` only sequences user-facing commands (`distributed_test.sh`, `post_process_*.py`,
`prepare_dataset.py`, `TreeDPO/train.py`), logs each to `<root>/logs/<name>.log`, and prints one
progress line per stage. `make demo` (densepolicy/demo.py) and `make experiment`
(densepolicy/experiment.py) are two orderings of these stages with different budgets.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from densepolicy.config import ConfigError, load_config, read_yaml
from densepolicy.paths import PROJECT_ROOT, main_python, shown
from densepolicy.postprocess.comparison import load_outcomes
from densepolicy.results_io import write_text_atomic
from densepolicy.sampling.config import resolve_sampler_config, task_config_path
from densepolicy.serving.server import ServingConfig, VLLMServer


def task_config(dataset: str) -> dict:
    """configs/tasks/<dataset>.yaml as a dict (the sampler's own lookup, `task_config_path`; a `ConfigError`
    naming the key `datasets` and the known datasets when there is none)."""
    try:
        return read_yaml(task_config_path(dataset))
    except ConfigError as exc:
        raise ConfigError(f"key 'datasets': {exc}") from None


def method_split(dataset: str, method: str) -> str:
    """The split `method` runs on for `dataset` when no split is given: its resolved sampler config (sampler.yaml <
    the task config's common keys < its `<method>` section), as the workers resolve it."""
    return resolve_sampler_config(method, dataset).split


def train_split(dataset: str) -> str:
    """The split trees (and the train-task screen) draw their tasks from."""
    return method_split(dataset, "codeact_agent_tree")


def task_ids_setting(ids: Sequence[str]) -> str:
    """The sampler setting that restricts a run to these task ids."""
    return "task_ids=" + json.dumps(list(ids))


@dataclasses.dataclass(frozen=True)
class ScreenResult:
    """How often each candidate train task was solved in a screen (candidates in their order)."""

    solved: dict[str, int]
    rollouts: int

    def mixed(self) -> list[str]:
        """Candidates solved in some rollouts but not all: a tree on them can yield pairs."""
        return [t for t, n in self.solved.items() if 0 < n < self.rollouts]

    def ranked(self) -> list[str]:
        """All candidates, the mixed ones first, then the always solved (a wide tree may still fail below them),
        then the never solved; candidate order within each group."""
        always = [t for t, n in self.solved.items() if n == self.rollouts]
        return [*self.mixed(), *always, *[t for t, n in self.solved.items() if n == 0]]

    def counts(self) -> dict[str, int]:
        """How many candidates were always, never and sometimes solved."""
        return {"candidates": len(self.solved), "rollouts_per_task": self.rollouts,
                "always_solved": sum(n == self.rollouts for n in self.solved.values()),
                "never_solved": sum(n == 0 for n in self.solved.values()), "mixed": len(self.mixed())}

    def record(self, trees: int) -> dict[str, int]:
        """The screen's counts and the trees grown, for the run's record and report."""
        return {**self.counts(), "trees": trees}

    def summary(self, trees: int) -> str:
        r = self.record(trees)
        return (f"{r['mixed']} of {r['candidates']} candidates mixed over {self.rollouts} rollouts "
                f"({r['always_solved']} always, {r['never_solved']} never solved); trees on {trees}")


class StageError(RuntimeError):
    """A stage failed; the message names the stage, the command and its log."""


class LoopStages:
    """Runs loop stages into `root`; `tag` prefixes the progress lines (`[demo 3/9] ...`)."""

    def __init__(self, root: Path, *, tag: str, n_stages: int, proc_per_server: int, tmux_start_id: int,
                 serving: Mapping[str, object], sampler: Mapping[str, object]) -> None:
        self.root = root
        self.logs = root / "logs"
        self.tag = tag
        self.n_stages = n_stages
        self.proc_per_server = proc_per_server
        self.tmux_start_id = tmux_start_id
        self.serving = dict(serving)
        self.sampler = dict(sampler)
        self.stage_no = 0
        self.t0 = time.monotonic()
        self.timings: list[tuple[str, float]] = []
        self.redo_pairs = False
        """True (an experiment with resume=true): pair files of an earlier run are recomputed and replaced."""

    # -- plumbing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, title: str) -> Iterator[None]:
        """Print `[tag k/n] title ...` and, at the end, `done in Xs` (or FAILED); record the timing, also in
        `<root>/timings.json` (so a report can be rebuilt after an interrupted run)."""
        self.stage_no += 1
        start = time.monotonic()
        print(f"[{self.tag} {self.stage_no}/{self.n_stages}] {title} ...", flush=True)
        status = "FAILED"
        try:
            yield
            status = "done"
        finally:
            took = time.monotonic() - start
            self.timings.append((title, took))
            if self.root.is_dir():
                done = json.loads(self.timings_file.read_text()) if self.timings_file.exists() else []
                done.append({"stage": title, "status": status, "seconds": round(took, 1)})
                write_text_atomic(self.timings_file, json.dumps(done, indent=1) + "\n")
            print(f"[{self.tag} {self.stage_no}/{self.n_stages}] {title}: {status} in {took:.0f}s "
                  f"(total {self.elapsed():.0f}s)", flush=True)

    @property
    def timings_file(self) -> Path:
        return self.root / "timings.json"

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, line: str) -> None:
        print(f"        {line}", flush=True)

    def run(self, args: list[str], log_name: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one project command; its output goes to logs/<log_name>.log."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{log_name}.log"
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(args)}\n")
            fh.flush()
            proc = run_as_group(args, fh)
        if check and proc.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-25:])
            raise StageError(f"command failed (exit {proc.returncode}): {shlex.join(args)}\n"
                             f"log: {log}\n{tail}")
        return proc

    @staticmethod
    def py(script: str, *args: str) -> list[str]:
        """Command line running a project script with the main venv's Python."""
        return [str(main_python()), str(PROJECT_ROOT / script), *args]

    def launcher(self, model: str, dataset: str, method: str, tmux_id: int, out: Path,
                 server_url: str, settings: Sequence[str], procs: int | None = None) -> list[str]:
        """`./distributed_test.sh` against an already running server, blocking until the workers end
        (`procs` workers, default proc_per_server)."""
        sampler = [f"sampler.{kv}" for kv in settings]
        sampler += [f"sampler.{k}={v}" for k, v in self.sampler.items()]
        return [str(PROJECT_ROOT / "distributed_test.sh"), model, dataset, method,
                str(procs or self.proc_per_server), str(tmux_id), "server=external", f"server_url={server_url}",
                "wait=true", "gpus=none", f"output_dir={out}", *sampler]

    # -- stages -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def serve(self, model: str, name: str) -> Iterator[str]:
        """A vLLM server for `model` (configs/serving.yaml + `serving` overrides); yields its base URL."""
        overrides = [f"{k}={v}" for k, v in self.serving.items()]
        scfg = load_config(ServingConfig, PROJECT_ROOT / "configs" / "serving.yaml", overrides)
        server = VLLMServer(model, scfg, self.logs / f"server_{name}.log")
        with self.stage(f"start vLLM server for {shown(model)}"):
            server.start()
        try:
            yield server.base_url
        finally:
            server.stop()

    def run_envs(self, model: str, method: str, kind: str, server_url: str,
                 settings: Mapping[str, Sequence[str]], id_offset: int) -> dict[str, Path]:
        """Run METHOD on every dataset of `settings` (name -> sampler key=value) at once; merge each.

        Output: `<root>/<kind>/<dataset>/`; dataset i uses TMUX_START_ID tmux_start_id + id_offset + 10 i.
        """
        return self.run_jobs(model, method, server_url, {kind: settings}, id_offset)[kind]

    def run_jobs(self, model: str, method: str, server_url: str,
                 jobs: Mapping[str, Mapping[str, Sequence[str]]], id_offset: int,
                 proc_per_job: int | None = None) -> dict[str, dict[str, Path]]:
        """Several launcher runs of METHOD against one server at once, e.g. the sampled evaluation episodes.

        `jobs`: kind -> (dataset -> sampler key=value); output `<root>/<kind>/<dataset>/`, each merged. Run j
        (over all kinds and datasets, in order) uses TMUX_START_ID tmux_start_id + id_offset + 10 j and
        `proc_per_job` workers (default proc_per_server); the server batches the requests of all of them.
        """
        self.logs.mkdir(parents=True, exist_ok=True)
        runs = [(kind, name, sets) for kind, settings in jobs.items() for name, sets in settings.items()]
        outs = {(kind, name): self.root / kind / name for kind, name, _ in runs}
        tmux_ids = [self.tmux_start_id + id_offset + 10 * j for j in range(len(runs))]
        procs = proc_per_job or self.proc_per_server
        with concurrent.futures.ThreadPoolExecutor(max(1, len(runs))) as pool:
            futures = []
            for tmux_id, (kind, name, sets) in zip(tmux_ids, runs):
                args = self.launcher(model, name, method, tmux_id, outs[kind, name], server_url, sets, procs)
                futures.append(pool.submit(self.run, args, f"{kind.replace('/', '_')}_{name}"))
            try:
                for job in futures:
                    job.result()
            except BaseException:
                # Ctrl-C or a failed env: stop every worker, else the pool waits for the other launchers
                for tmux_id in tmux_ids:
                    self.run([str(PROJECT_ROOT / "distributed_test.sh"), "stop", str(tmux_id)], "stop_workers",
                             check=False)
                stop_running_commands()  # the launchers themselves wait in the pool's threads
                raise
        result: dict[str, dict[str, Path]] = {kind: {} for kind in jobs}
        for (kind, name), out in outs.items():
            self.run(self.py("post_process_test_result.py", "--merge_distributed_result", "--data_dir", str(out),
                             "--dataset_file_name_list", shard_template(out)),
                     f"merge_{kind.replace('/', '_')}_{name}")
            result[kind][name] = out
        return result

    def screen(self, model: str, server_url: str, candidates: Mapping[str, Sequence[str]],
               settings: Mapping[str, Sequence[str]], rollouts: Mapping[str, int], temperature: float, seed: int,
               prefix: str = "", procs: int | None = None, name: str = "screen") -> dict[str, ScreenResult]:
        """Train-task screen: roll out each candidate of dataset d `rollouts[d]` times (codeact_agent with
        `settings[d]`, which name the train split; rollout k at `temperature` with sampler seed `seed + k`, into
        `<root>/<prefix><name>/sample<k>/<d>/`), all against one server. Returns d -> how often each was solved."""
        # max_tasks after the settings: an evaluation's own cap (the demo's max_tasks=8) must not cut the screen
        jobs = {f"{prefix}{name}/sample{k}": {
                    d: [*settings[d], task_ids_setting(ids), f"max_tasks={len(ids)}", f"temperature={temperature}",
                        f"seed={seed + k}"]
                    for d, ids in candidates.items() if k < rollouts[d]}
                for k in range(max(rollouts.values(), default=0))}
        out = self.run_jobs(model, "codeact_agent", server_url, jobs, 5, procs)
        result = {}
        for d, ids in candidates.items():
            runs = {j: load_outcomes(merged_csv(out[j][d])) for j in jobs if d in out[j]}
            for j, run in runs.items():  # a candidate without an outcome is not "never solved"
                missing = [t for t in ids if t not in run]
                if missing:
                    raise StageError(f"screen of {d}: {len(missing)} of {len(ids)} candidates have no result in "
                                     f"{shown(merged_csv(out[j][d]))} (first: {missing[0]!r})")
            result[d] = ScreenResult({t: sum(run[t].solved for run in runs.values()) for t in ids}, len(runs))
        return result

    def pairs(self, sample_dirs: Mapping[str, Path], merged: Path) -> dict[str, int]:
        """Preference pairs per env (`--process_result`) and all selected ones merged into `merged`.

        Returns the number of merged pairs per dataset (datasets without pairs map to 0). When no env
        has a candidate pair, `merged` is not written.
        """
        pair_files = []
        for name, out in sample_dirs.items():
            self.run(self.py("post_process_training_data.py", "--process_result", "--data_dir", str(out),
                             "--dataset_file_name", merged_name(out), "--data_sub_dir", "pairs",
                             *(["--overwrite"] if self.redo_pairs else [])), f"pairs_{name}")
            pair_files += sorted((out / "pairs").glob("*.pairs.csv"))
        counts = {name: 0 for name in sample_dirs}
        if not pair_files:
            return counts
        self.run(self.py("post_process_training_data.py", "--merge_all_pairs", "--pairs_files",
                         *map(str, pair_files), "--output", str(merged), "--overwrite"), "merge_all_pairs")
        if merged.exists():
            with open(merged, newline="") as fh:
                for row in csv.DictReader(fh):
                    counts[row["dataset"]] = counts.get(row["dataset"], 0) + 1
        return counts

    def prepare_dataset(self, pairs_csv: Path, name: str, model: str, data_dir: Path | None = None) -> None:
        """LLaMA-Factory pairwise dataset `<data_dir>/<name>.json` (default TreeDPO/data; replaces an older one of
        that name)."""
        where = ["--output_dir", str(data_dir)] if data_dir else []
        self.run(self.py("prepare_dataset.py", "--pairs", str(pairs_csv), "--name", name, "--model", model,
                         *where, "--overwrite"), "prepare_dataset")

    def train(self, config: str, dataset: str, model: str, out: Path, overrides: Sequence[str],
              data_dir: Path | None = None) -> None:
        """DPO with `TreeDPO/train.py <config>` from `model` into `out` (a servable model directory), on the
        datasets registered in `data_dir` (default TreeDPO/data)."""
        where = ["--dataset-dir", str(data_dir)] if data_dir else []
        self.run(self.py("TreeDPO/train.py", config, "--dataset", dataset, *where, "--model", model,
                         "--output-dir", str(out), *overrides), "train")

    def check_prompt_style(self, model: str, settings: Mapping[str, Sequence[str]]) -> None:
        """Refuse to sample with a warm-started `model` in another prompt style than it was trained in.

        The style the model was trained in is `expert_data.prompt_style` of its `warm_start.json` (models that are
        not warm starts have none: nothing to check); the style of a run is the sampler's `prompt_style` after
        configs/sampler.yaml, the task config, `sampler` and the run's own `settings` (dataset -> key=value).
        """
        record = Path(model) / "warm_start.json"
        if not record.is_file():
            return
        trained = json.loads(record.read_text()).get("inputs", {}).get("expert_data", {}).get("prompt_style")
        if trained is None:
            return
        for dataset, sets in settings.items():
            keys = [kv for kv in sets if kv.split("=", 1)[0] not in ("task_ids",)]
            keys += [f"{k}={v}" for k, v in self.sampler.items()]
            style = resolve_sampler_config("codeact_agent_tree", dataset, keys).prompt_style
            if style != trained:
                raise StageError(f"{dataset}: the sampler's prompt_style is {style!r} but {shown(model)} was trained "
                                 f"on {trained!r} prompts (its warm_start.json); set sampler.prompt_style={trained} "
                                 f"or rebuild the warm start with expert_data.prompt_style={style}")

    def release_tmux_ids(self, n_runs: int, offsets: Sequence[int]) -> None:
        """Stop leftovers of an earlier, interrupted run that used the same TMUX_START_IDs (`n_runs` blocks of
        10 ids from each offset)."""
        for offset in offsets:
            for i in range(n_runs):
                tmux_id = self.tmux_start_id + offset + 10 * i
                self.run([str(PROJECT_ROOT / "distributed_test.sh"), "stop", str(tmux_id)], "stop_leftovers",
                         check=False)


def run_as_group(args: list[str], log: IO[str], grace_s: float = 15.0) -> subprocess.CompletedProcess:
    """Run a command in its own process group, output to `log`. On Ctrl-C, `kill`, or any error while waiting,
    the whole group is stopped (SIGTERM, then SIGKILL after `grace_s`) before the exception goes on: a stage's
    command may start children of its own (train.py -> the LLaMA-Factory trainer), which would otherwise keep
    running, and training, after the loop has stopped."""
    proc = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    try:
        return subprocess.CompletedProcess(args, proc.wait())
    except BaseException:
        _stop_group(proc, grace_s)
        raise
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)


_RUNNING: set[subprocess.Popen] = set()  # commands of run_as_group still running, in any thread
_RUNNING_LOCK = threading.Lock()


def stop_running_commands(grace_s: float = 15.0) -> None:
    """Stop every command that `run_as_group` is waiting for in other threads (their process groups), e.g. the
    launchers of `run_jobs` after Ctrl-C reached the main thread."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for proc in running:
        _stop_group(proc, grace_s)


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the group of `proc`, SIGKILL to what is left after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not _group_alive(proc):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.1)


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader: a zombie leader would keep the group "alive"
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_on_signals() -> None:
    """Ctrl-C and `kill` stop the run the same way (KeyboardInterrupt: the stages stop their workers). Python
    leaves SIGINT ignored when it starts ignored, as in a job started with `&` from a script."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def move_aside(root: Path, tag: str) -> None:
    """Move a non-empty output directory to `<root>.prev-<time>` so nothing is overwritten; create `root`."""
    if root.exists() and any(root.iterdir()):
        backup = root.with_name(f"{root.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
        root.rename(backup)
        print(f"[{tag}] previous output moved to {shown(backup)}")
    root.mkdir(parents=True, exist_ok=True)


def shard_template(run_dir: Path) -> str:
    """`<dataset>.<split>.{}.csv` of the shards in a run directory (read from the shard files)."""
    names = sorted(p.name for p in run_dir.glob("*.csv") if not p.name.endswith(".None.csv"))
    names += sorted(p.name for p in (run_dir / "distributed_result").glob("*.csv"))
    names += sorted(p.name for p in run_dir.glob("*.None.csv"))
    if not names:
        raise StageError(f"no result CSV in {run_dir}")
    dataset, split, *_ = names[0].split(".")
    return f"{dataset}.{split}.{{}}.csv"


def merged_name(run_dir: Path) -> str:
    """File name of the merged result CSV of a run directory (`<dataset>.<split>.None.csv`)."""
    return shard_template(run_dir).replace("{}", "None")


def merged_csv(run_dir: Path) -> Path:
    """Path of the merged result CSV of a run directory."""
    return run_dir / merged_name(run_dir)


def tree_to_plot(pairs_csv: Path, fallback_dataset: str) -> tuple[str, str | None]:
    """(dataset, task id) of the task with the most pairs, so the picture shows chosen/rejected nodes."""
    if not pairs_csv.exists():
        return fallback_dataset, None
    with open(pairs_csv, newline="") as fh:
        counts = collections.Counter((row["dataset"], row["task_id"]) for row in csv.DictReader(fh))
    if not counts:
        return fallback_dataset, None
    return counts.most_common(1)[0][0]
