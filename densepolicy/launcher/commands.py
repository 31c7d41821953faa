"""The three launcher commands: run (launch or resume), status, stop."""
from __future__ import annotations

from densepolicy.launcher import slurm_backend
from densepolicy.launcher import tmux_backend as tmux
from densepolicy.launcher.config import LauncherConfig
from densepolicy.launcher.local_run import launch_local, stop_run
from densepolicy.launcher.plan import EXIT_ENVIRONMENT, EXIT_USAGE, LaunchError, RunRequest
from densepolicy.launcher.prepare import prepare
from densepolicy.launcher.registry import RunRecord, all_records, load_record
from densepolicy.launcher.status import run_lines


def run(request: RunRequest, cfg: LauncherConfig) -> int:
    """Launch (or resume) a run on this machine (tmux) or as a Slurm array job."""
    plan = prepare(request, cfg)
    if cfg.backend == "slurm":
        return slurm_backend.submit(plan)
    return launch_local(plan)


def _records(cfg: LauncherConfig, start_id: int | None) -> list[RunRecord]:
    if start_id is None:
        return all_records(cfg.state_dir, cfg.tmux_socket)
    record = load_record(cfg.state_dir, cfg.tmux_socket, start_id)
    if record is None:
        known = [r.start_id for r in all_records(cfg.state_dir, cfg.tmux_socket)]
        raise LaunchError(f"no run with TMUX_START_ID {start_id} on tmux socket {cfg.tmux_socket!r} "
                          f"(known: {known or 'none'})", EXIT_USAGE)
    return [record]


def status(cfg: LauncherConfig, start_id: int | None) -> int:
    """Print one line per session of the run(s)."""
    records = _records(cfg, start_id)
    if not records:
        print(f"no runs on tmux socket {cfg.tmux_socket!r}")
        return 0
    for record in records:
        if record.backend == "slurm":
            states = slurm_backend.job_states(cfg, record.slurm_job_id) if record.slurm_job_id else {}
            lines = run_lines(record, None, slurm_states=states)
        else:
            try:
                live = tmux.alive_sessions(tmux.tmux_server(record.socket))
            except tmux.TmuxMissing as exc:
                raise LaunchError(str(exc), EXIT_ENVIRONMENT) from None
            lines = run_lines(record, live)
        print("\n".join(lines))
    return 0


def stop(cfg: LauncherConfig, start_id: int | None) -> int:
    """Stop the workers and servers of one run (or of every run of the socket)."""
    for record in _records(cfg, start_id):
        if record.backend == "slurm":
            slurm_backend.cancel(cfg, record)
            print(f"run {record.start_id}: Slurm job {record.slurm_job_id} stopped")
        else:
            try:
                stopped = stop_run(record, cfg.stop_timeout_s)
            except tmux.TmuxMissing as exc:
                raise LaunchError(str(exc), EXIT_ENVIRONMENT) from None
            print(f"run {record.start_id}: stopped {len(stopped)} session(s)"
                  + (f" ({', '.join(stopped)})" if stopped else ""))
    return 0
