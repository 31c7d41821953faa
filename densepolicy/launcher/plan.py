"""What a run consists of: shards, servers, worker/server command lines and the run record.

Both backends share this: the tmux backend runs the slots as tmux sessions, the Slurm backend
hands the same slots to array tasks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from densepolicy.launcher.config import LauncherConfig
from densepolicy.gpus import group_gpus
from densepolicy.launcher.naming import server_session, worker_session
from densepolicy.launcher.registry import RunRecord, Slot
from densepolicy.paths import main_python, resolve


class LaunchError(RuntimeError):
    """A launch cannot proceed; `exit_code` tells the shell why (see `distributed_test.sh --help`)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


EXIT_USAGE, EXIT_MODEL, EXIT_ENVIRONMENT, EXIT_SERVER, EXIT_WORKERS = 2, 3, 4, 5, 1


@dataclass
class RunRequest:
    """The five positional arguments of `distributed_test.sh`."""

    model: str
    dataset: str
    method: str
    proc_per_gpu: int
    start_id: int


@dataclass
class RunPlan:
    """A resolved request: model identity, server groups, shards, output dir and worker settings."""

    request: RunRequest
    cfg: LauncherConfig
    model_identity: str                 # resolved path (or name for external servers): goes in the manifest
    server_gpus: list[list[str]]        # one entry per server: its GPU ids ([] = CPU); [] when external
    num_shards: int
    output_dir: Path
    sampler_args: list[str] = field(default_factory=list)
    worker_settings: dict = field(default_factory=dict)   # the sampler's effective config (run manifest)

    @property
    def logs_dir(self) -> Path:
        return self.output_dir / "logs"

    def workers_per_server(self) -> int:
        return max(1, self.num_shards // max(1, len(self.server_gpus)))


def shards_for(proc_per_gpu: int, server_gpus: list[list[str]]) -> int:
    """num_gpus x PROC_PER_GPU workers (PROC_PER_GPU on a CPU server)."""
    gpus = sum(len(g) for g in server_gpus)
    return proc_per_gpu * (gpus if gpus else max(1, len(server_gpus)))


def local_server_groups(gpu_ids: list[str], tp: int) -> list[list[str]]:
    """One server per `tp` GPUs; a single CPU server when there is no GPU."""
    return group_gpus(gpu_ids, tp) if gpu_ids else [[]]


def build_record(plan: RunPlan, backend: str) -> RunRecord:
    """Slots (sessions, logs, status files, server assignment) of every server and worker of the plan."""
    req, logs = plan.request, plan.logs_dir
    external = plan.cfg.server == "external"
    servers = [] if external else [
        Slot(role="server", index=i, session=server_session(req.start_id, i),
             log=str(logs / f"server-{i}.log"), status=str(logs / f"server-{i}.status.json"), gpus=gpus)
        for i, gpus in enumerate(plan.server_gpus)]
    per_server = plan.workers_per_server()
    workers = [
        Slot(role="worker", index=k, session=worker_session(req.start_id, k),
             log=str(logs / f"worker-{k}.log"), status=str(logs / f"worker-{k}.status.json"),
             server_index=None if external else min(k // per_server, len(servers) - 1),
             url=plan.cfg.server_url if external else None)
        for k in range(plan.num_shards)]
    return RunRecord(start_id=req.start_id, backend=backend, socket=plan.cfg.tmux_socket,
                     output_dir=str(plan.output_dir), model=plan.model_identity, dataset=req.dataset,
                     method=req.method, num_shards=plan.num_shards, servers=servers, workers=workers,
                     external_server=external)


def worker_argv(plan: RunPlan, shard: int, server_url: str, python: str | None = None) -> list[str]:
    """The sample_tree.py command of one shard. `--model` is MODEL as given: the worker resolves it exactly
    like the server does (same served name, context length and tokenizer)."""
    req = plan.request
    return [python or str(main_python()), str(resolve(plan.cfg.worker_script)), req.method, req.dataset,
            "--shard", str(shard), "--num_shards", str(plan.num_shards), "--server_url", server_url,
            "--model", req.model, "--output_dir", str(plan.output_dir), *plan.sampler_args]


def supervised(argv: list[str], slot: Slot, grace: float, env: dict[str, str] | None = None,
               python: str | None = None) -> list[str]:
    """`argv` wrapped in the supervisor (log tee + exit-code file + process-group cleanup)."""
    wrapped = [python or str(main_python()), "-m", "densepolicy.launcher.supervise",
               "--log", slot.log, "--status", slot.status, "--grace", str(grace)]
    for key, value in (env or {}).items():
        wrapped += ["--env", f"{key}={value}"]
    return [*wrapped, "--", *argv]
