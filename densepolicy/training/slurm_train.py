"""Multi-node TreeDPO training as one Slurm job: ``TreeDPO/train.py CONFIG ... --slurm [slurm.key=value ...]``.

`submit` checks the run on the submitting machine (keys, dataset, model, an empty output directory), writes
``<output_dir>.slurm/train_job.sh`` and calls ``sbatch``. The job script, on the first node of the
allocation, sets MASTER_ADDR (that node) and MASTER_PORT (a free port there), then runs ``srun`` with one
``TreeDPO/train.py`` per node (``--ntasks-per-node``); each finds its rank in SLURM_PROCID
(`densepolicy.training.launch.node_placement`), the nodes check they agree, node 0 prepares the output
directory, and torchrun trains over all of them. Settings: ``configs/train_slurm.yaml``. The checkout, its
venv and the output directory must be on a filesystem every node sees.
"""
from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from densepolicy.config import ConfigError, help_field, load_config
from densepolicy.paths import PROJECT_ROOT, main_python, resolve

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "train_slurm.yaml"
SCRIPT_NAME = "train_job.sh"


@dataclasses.dataclass
class SlurmTrainSettings:
    """The `slurm:` section of configs/train_slurm.yaml."""

    nodes: int = help_field(2, help="Nodes (`--nodes`); one train.py per node starts torchrun for its GPUs.")
    tasks_per_node: int = help_field(
        1, help="train.py processes per node (`--ntasks-per-node`). Keep 1 on GPUs; >1 only for CPU runs "
                "(the local test runs 2 on one node).")
    gpus_per_node: int = help_field(8, help="`--gres=gpu:N` per node; torchrun starts one process per GPU. 0 = CPU.")
    cpus_per_task: int = help_field(16, help="`--cpus-per-task` of each train.py task.")
    mem: str | None = help_field(None, help="`--mem` per node (e.g. '512G'); null = the cluster default.")
    time: str | None = help_field(
        None, help="`--time` limit, quoted: '24:00:00' (unquoted YAML reads 24:00:00 as a number, refused).")
    partition: str | None = help_field(None, help="`--partition`; null = the cluster's default.")
    job_name: str = help_field("treedpo", help="`--job-name`.")
    extra_args: list[str] = help_field([], help="More sbatch arguments, e.g. ['--account=abc', '--exclusive'].")
    node_timeout_s: float = help_field(
        1800.0, help="How long the nodes wait for each other (and for node 0's checks) before torchrun starts.")
    wait: bool = help_field(False, help="Wait for the job to end (`sbatch --wait`); exit with its exit code.")
    logs_dir: str | None = help_field(
        None, help="Job script and slurm-<job>.out; null = <output_dir>.slurm beside the output directory.")
    python: str | None = help_field(
        None, help="Python of the main venv as seen from the compute nodes; null = this checkout's .venv.")
    sbatch: str = help_field("sbatch", help="sbatch executable.")
    srun: str = help_field("srun", help="srun executable (on the compute nodes).")
    scontrol: str = help_field("scontrol", help="scontrol executable (on the compute nodes).")

    def __post_init__(self) -> None:
        for key in ("nodes", "tasks_per_node", "cpus_per_task"):
            if getattr(self, key) < 1:
                raise ConfigError(f"key 'slurm.{key}' must be >= 1, got {getattr(self, key)}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"key 'slurm.gpus_per_node' must be >= 0, got {self.gpus_per_node}")
        if self.tasks_per_node > 1 and self.gpus_per_node:
            raise ConfigError(f"key 'slurm.tasks_per_node'={self.tasks_per_node} with slurm.gpus_per_node="
                              f"{self.gpus_per_node}: on GPUs run one train.py per node (torchrun starts one "
                              f"process per GPU); several per node are for CPU runs only")
        if self.time is not None and str(self.time).isdigit():
            raise ConfigError(f"key 'slurm.time' is the bare number {self.time}: write the limit quoted, e.g. "
                              f"'24:00:00' (YAML turns unquoted 24:00:00 into seconds)")
        if self.node_timeout_s <= 0:
            raise ConfigError(f"key 'slurm.node_timeout_s' must be > 0, got {self.node_timeout_s}")

    @property
    def launchers(self) -> int:
        """train.py processes in the job (= torchrun's NNODES)."""
        return self.nodes * self.tasks_per_node


@dataclasses.dataclass
class TrainSlurmConfig:
    """configs/train_slurm.yaml."""

    slurm: SlurmTrainSettings = dataclasses.field(default_factory=SlurmTrainSettings)


def load_train_slurm_config(overrides: Sequence[str] = (), path: str | Path | None = None) -> TrainSlurmConfig:
    """Read configs/train_slurm.yaml (or `path`) and apply ``slurm.key=value`` overrides."""
    return load_config(TrainSlurmConfig, resolve(path) if path else DEFAULT_CONFIG, list(overrides))


def split_slurm_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(``slurm.*`` overrides, the others: LLaMA-Factory keys)."""
    slurm = [o for o in overrides if o.startswith("slurm.")]
    return slurm, [o for o in overrides if not o.startswith("slurm.")]


def train_argv(config: str, dataset: str, model: str, dataset_dir: str, output_dir: str,
               overrides: Sequence[str], resume: bool, template_check: bool) -> list[str]:
    """The ``TreeDPO/train.py`` command line every task runs (absolute paths: the job runs elsewhere)."""
    argv = ["TreeDPO/train.py", config, "--dataset", dataset, "--model", model, "--dataset-dir", dataset_dir,
            "--output-dir", output_dir, *overrides]
    if resume:
        argv.append("--resume")
    if not template_check:
        argv.append("--skip-template-check")
    return argv


def batch_script(settings: SlurmTrainSettings, argv: Sequence[str], logs_dir: Path, python: str) -> str:
    """The sbatch script: resources, MASTER_ADDR/MASTER_PORT on the first node, one srun step of train.py."""
    s = settings
    lines = ["#!/bin/bash", f"#SBATCH --job-name={s.job_name}", f"#SBATCH --nodes={s.nodes}",
             f"#SBATCH --ntasks-per-node={s.tasks_per_node}", f"#SBATCH --cpus-per-task={s.cpus_per_task}",
             f"#SBATCH --output={logs_dir}/slurm-%j.out"]
    if s.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{s.gpus_per_node}")
    for key, value in (("mem", s.mem), ("time", s.time), ("partition", s.partition)):
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    lines += [f"#SBATCH {arg}" for arg in s.extra_args]
    q = shlex.quote
    lines += [
        "set -eu",
        f"cd {q(str(PROJECT_ROOT))}",
        "# node 0 = the first node of the allocation, where this script runs",
        f'export MASTER_ADDR="$({q(s.scontrol)} show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        (f"export MASTER_PORT=\"$({q(python)} -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); "
         f"print(s.getsockname()[1])')\""),
        f"export DENSEPOLICY_NODE_TIMEOUT={s.node_timeout_s:g}",
        "unset NNODES NODE_RANK  # each task's rank comes from SLURM_PROCID",
        ('echo "[train_slurm] job $SLURM_JOB_ID: $SLURM_NTASKS train.py task(s) on $SLURM_JOB_NODELIST, '
         'node 0 at $MASTER_ADDR:$MASTER_PORT"'),
        (f"exec {q(s.srun)} --kill-on-bad-exit=1 --nodes={s.nodes} --ntasks-per-node={s.tasks_per_node} "
         f"{q(python)} {' '.join(q(a) for a in argv)}"),
    ]
    return "\n".join(lines) + "\n"


def submit(config: str, dataset: str | None, model: str | None, output_dir: str | None, overrides: Sequence[str],
           dataset_dir: str | None, template_check: bool, resume: bool, slurm_overrides: Sequence[str] = (),
           slurm_config: str | Path | None = None, progress=print) -> int:
    """Check the run here, write the job script and submit it; returns 0, or the job's exit code with
    ``slurm.wait=true``. Raises `ConfigError` for bad settings, a non-empty output directory (without
    `resume`), the single-process plugin in a multi-node run, or a failed sbatch."""
    from densepolicy.training import lf_fast
    from densepolicy.training.train import build_train_args, config_path

    settings = load_train_slurm_config(slurm_overrides, slurm_config).slurm
    args = build_train_args(config, dataset, model, output_dir, list(overrides), dataset_dir)
    out = Path(args["output_dir"])
    if resume and not out.is_dir():
        raise ConfigError(f"--resume: output directory {out} does not exist")
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"output directory {out} exists and is not empty; choose another --output-dir "
                          f"(or --resume to continue from its last checkpoint)")
    if args.get(lf_fast.KEY) and settings.launchers > 1:
        raise ConfigError(f"key {lf_fast.KEY!r} (the single-process LLaMA-Factory plugin) cannot train on "
                          f"{settings.launchers} nodes: set {lf_fast.KEY}=false")
    logs_dir = resolve(settings.logs_dir) if settings.logs_dir else out.with_name(out.name + ".slurm")
    logs_dir.mkdir(parents=True, exist_ok=True)
    python = settings.python or str(main_python())
    argv = train_argv(str(config_path(config)), str(args["dataset"]), args["model_name_or_path"],
                      args["dataset_dir"], str(out), list(overrides), resume, template_check)
    script = logs_dir / SCRIPT_NAME
    script.write_text(batch_script(settings, argv, logs_dir, python))
    if shutil.which(settings.sbatch) is None:
        raise ConfigError(f"{settings.sbatch} not found: Slurm's client tools are needed for --slurm "
                          f"(or set slurm.sbatch=...)")
    command = [settings.sbatch, "--parsable"] + (["--wait"] if settings.wait else []) + [str(script)]
    if settings.wait:
        progress(f"submitting {script} and waiting for it ({settings.launchers} train.py task(s) on "
                 f"{settings.nodes} node(s))")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    job_id = done.stdout.strip().split(";")[0]
    if not job_id:
        raise ConfigError(f"sbatch failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    log = logs_dir / f"slurm-{job_id}.out"
    progress(f"submitted Slurm job {job_id}: {settings.nodes} node(s) x {settings.tasks_per_node} train.py "
             f"task(s); log: {log}; model: {out}")
    if settings.wait:
        progress(f"Slurm job {job_id} ended with exit code {done.returncode}")
        return done.returncode
    return 0
