"""Many machines: the run becomes one Slurm array job; each array task = one server + its workers.

`submit` writes `<output_dir>/logs/slurm_plan.json` (everything an array task needs) and
`slurm_job.sh`, and calls `sbatch`. Each task runs `python -m densepolicy.launcher.slurm_task`.
All tasks write into the shared output directory, so resubmitting the same command resumes.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from densepolicy.launcher.config import LauncherConfig, serving_overrides
from densepolicy.launcher.files import read_json
from densepolicy.results_io import write_json_atomic
from densepolicy.launcher.plan import (EXIT_ENVIRONMENT, EXIT_USAGE, EXIT_WORKERS, LaunchError, RunPlan,
                                       build_record, worker_argv)
from densepolicy.launcher.prepare import claim_output_dir
from densepolicy.launcher.registry import RunRecord, load_record, save_record
from densepolicy.paths import PROJECT_ROOT, main_python

ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise LaunchError(f"{cmd[0]} not found: Slurm client tools are needed for backend=slurm "
                          f"(or set slurm.{Path(cmd[0]).name}=...)", EXIT_ENVIRONMENT)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def job_states(cfg: LauncherConfig, job_id: str) -> dict[int, str]:
    """{array index: state} from squeue (queued/running) and sacct (finished, when accounting exists)."""
    states: dict[int, str] = {}
    out = _run([cfg.slurm.sacct, "-j", job_id, "-n", "-P", "-X", "-o", "JobID,State"])
    if out.returncode == 0:
        _parse_states(out.stdout, job_id, states, sep="|")
    out = _run([cfg.slurm.squeue, "-j", job_id, "-h", "-r", "-o", "%i|%T"])
    if out.returncode == 0:
        _parse_states(out.stdout, job_id, states, sep="|")
    return states


def _parse_states(text: str, job_id: str, states: dict[int, str], sep: str) -> None:
    for line in text.splitlines():
        parts = line.strip().split(sep)
        if len(parts) < 2 or not parts[0].startswith(f"{job_id}_"):
            continue
        index = parts[0].split("_", 1)[1]
        if index.isdigit():
            states[int(index)] = parts[1].split()[0]


def job_active(cfg: LauncherConfig, job_id: str) -> bool:
    """True while any task of the job is queued or running (squeue)."""
    out = _run([cfg.slurm.squeue, "-j", job_id, "-h", "-o", "%T"])
    return out.returncode == 0 and any(s.strip() in ACTIVE_STATES for s in out.stdout.splitlines())


def array_index(plan: RunPlan, shard: int) -> int:
    """Array task that runs `shard` (contiguous blocks of shards per task)."""
    return shard // (plan.num_shards // plan.cfg.slurm.array_size)


def write_task_plan(plan: RunPlan, record: RunRecord, python: str) -> Path:
    """The JSON file every array task reads: its server slot and its workers' command lines."""
    cfg = plan.cfg
    tasks = []
    for t in range(cfg.slurm.array_size):
        workers = [w for w in record.workers if w.server_index == t]
        tasks.append({
            "server": None if cfg.server == "external" else record.servers[t].__dict__,
            "workers": [{"slot": w.__dict__, "argv": worker_argv(plan, w.index, "{SERVER_URL}", python)}
                        for w in workers]})
    data = {"server_mode": cfg.server, "server_url": cfg.server_url, "model": plan.request.model,
            "serving_overrides": serving_overrides(cfg),
            "gpus_per_task": cfg.slurm.gpus_per_task, "base_port": cfg.base_port + plan.request.start_id,
            "server_start_timeout_s": cfg.server_start_timeout_s, "grace_s": cfg.stop_timeout_s,
            "python": python, "tasks": tasks}
    path = plan.logs_dir / "slurm_plan.json"
    write_json_atomic(path, data)
    return path


def batch_script(plan: RunPlan, plan_file: Path, python: str) -> str:
    """The sbatch script of the array job."""
    s, req = plan.cfg.slurm, plan.request
    array = f"0-{s.array_size - 1}" + (f"%{s.max_concurrent}" if s.max_concurrent else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=densepolicy{req.start_id}", f"#SBATCH --array={array}",
             f"#SBATCH --output={plan.logs_dir}/slurm-%A_%a.out", f"#SBATCH --cpus-per-task={s.cpus_per_task}",
             "#SBATCH --ntasks=1"]
    if s.gpus_per_task:
        lines.append(f"#SBATCH --gres=gpu:{s.gpus_per_task}")
    for key, value in (("mem", s.mem), ("time", s.time), ("partition", s.partition)):
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    lines += [f"#SBATCH {arg}" for arg in s.extra_args]
    lines += [f"cd {shlex.quote(str(PROJECT_ROOT))}",
              f"exec {shlex.quote(python)} -m densepolicy.launcher.slurm_task {shlex.quote(str(plan_file))}"]
    return "\n".join(lines) + "\n"


def submit(plan: RunPlan, progress=print) -> int:
    """Submit (or resubmit, which resumes) the run as an array job; with `wait=true` wait for it."""
    cfg, req = plan.cfg, plan.request
    previous = load_record(cfg.state_dir, cfg.tmux_socket, req.start_id)
    if previous and previous.slurm_job_id and job_active(cfg, previous.slurm_job_id):
        raise LaunchError(f"Slurm job {previous.slurm_job_id} of TMUX_START_ID {req.start_id} is still queued or "
                          f"running; wait for it or ./distributed_test.sh stop {req.start_id}", EXIT_USAGE)
    if plan.num_shards % cfg.slurm.array_size:
        raise LaunchError("internal: shards must split evenly over array tasks", EXIT_USAGE)
    claim_output_dir(plan)
    plan.logs_dir.mkdir(parents=True, exist_ok=True)
    record = build_record(plan, backend="slurm")
    for worker in record.workers:
        worker.server_index = array_index(plan, worker.index)
    python = cfg.slurm.python or str(main_python())
    plan_file = write_task_plan(plan, record, python)
    script = plan.logs_dir / "slurm_job.sh"
    script.write_text(batch_script(plan, plan_file, python))
    out = _run([cfg.slurm.sbatch, "--parsable", str(script)])
    if out.returncode != 0:
        raise LaunchError(f"sbatch failed: {out.stderr.strip() or out.stdout.strip()}", EXIT_ENVIRONMENT)
    record.slurm_job_id = out.stdout.strip().split(";")[0]
    save_record(cfg.state_dir, record)
    progress(f"submitted Slurm array job {record.slurm_job_id} ({cfg.slurm.array_size} task(s), "
             f"{plan.num_shards} shards); output: {plan.output_dir}")
    progress(f"watch: ./distributed_test.sh status {req.start_id} | stop: ./distributed_test.sh stop {req.start_id}")
    if not cfg.wait:
        return 0
    while job_active(cfg, record.slurm_job_id):
        time.sleep(3)
    failed = [w for w in record.workers if read_json(w.status).get("exit_code") != 0]
    for w in failed:
        progress(f"shard {w.index} failed (exit code {read_json(w.status).get('exit_code')}); log {w.log}")
    return EXIT_WORKERS if failed else 0


def cancel(cfg: LauncherConfig, record: RunRecord, progress=print) -> bool:
    """scancel the run's job (Slurm signals every process of its tasks); True if it was active."""
    if not record.slurm_job_id:
        return False
    active = job_active(cfg, record.slurm_job_id)
    if active:
        _run([cfg.slurm.scancel, record.slurm_job_id])
        progress(f"cancelled Slurm job {record.slurm_job_id}")
        deadline = time.time() + cfg.stop_timeout_s + 30
        while time.time() < deadline and job_active(cfg, record.slurm_job_id):
            time.sleep(1)
    return active
