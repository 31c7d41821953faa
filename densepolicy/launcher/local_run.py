"""One box: servers and workers as tmux sessions (resume-safe, never a second server per slot)."""
from __future__ import annotations

import time

from densepolicy.launcher import servers as serving
from densepolicy.launcher import tmux_backend as tmux
from densepolicy.launcher.config import serving_overrides
from densepolicy.launcher.files import read_json
from densepolicy.gpus import busy_gpus
from densepolicy.launcher.health import PendingServer, ServerStartError, wait_all_healthy
from densepolicy.serving.server import is_healthy
from densepolicy.launcher.plan import (EXIT_ENVIRONMENT, EXIT_SERVER, EXIT_USAGE, EXIT_WORKERS, LaunchError,
                                       RunPlan, build_record, supervised, worker_argv)
from densepolicy.launcher.prepare import claim_output_dir
from densepolicy.launcher.registry import RunRecord, Slot, all_records, load_record, save_record
from densepolicy.paths import PROJECT_ROOT


def launch_local(plan: RunPlan, progress=print) -> int:
    """Start (or resume) the run of `plan` in tmux; with `wait=true` also wait for it and stop it."""
    cfg, req = plan.cfg, plan.request
    try:
        server = tmux.tmux_server(cfg.tmux_socket)
    except tmux.TmuxMissing as exc:
        raise LaunchError(str(exc), EXIT_ENVIRONMENT) from None
    record = build_record(plan, backend="tmux")
    live = tmux.alive_sessions(server)
    previous = load_record(cfg.state_dir, cfg.tmux_socket, req.start_id)
    check_conflicts(record, previous, live, cfg.state_dir)
    if previous and previous.output_dir == record.output_dir:
        for slot, old in zip(record.servers, previous.servers):
            slot.port, slot.url = old.port, old.url  # so status/stop keep seeing live servers
    claim_output_dir(plan)
    plan.logs_dir.mkdir(parents=True, exist_ok=True)

    todo = [w for w in record.workers if not shard_finished(w)]
    if not todo:
        progress(f"all {len(record.workers)} shards of {plan.output_dir} are finished; nothing to do")
        if any(s.session in live for s in record.servers):
            progress(f"its servers still run: ./distributed_test.sh stop {req.start_id}")
        save_record(cfg.state_dir, record)
        return 0
    wait_for_stopping_workers(plan, [w for w in todo if w.session not in live], progress)
    try:
        started = start_servers(plan, record, previous, live, server, progress)
    finally:
        save_record(cfg.state_dir, record)
    launched = []
    for worker in todo:
        if worker.session in live:
            progress(f"{worker.session}: shard {worker.index} still running; left alone")
            continue
        worker.url = worker.url or record.servers[worker.server_index].url
        argv = supervised(worker_argv(plan, worker.index, worker.url), worker, cfg.stop_timeout_s)
        tmux.start_session(server, worker.session, argv, PROJECT_ROOT)
        launched.append(worker)
    save_record(cfg.state_dir, record)
    finished = len(record.workers) - len(todo)
    progress(f"started {len(launched)} worker(s) for {len(record.workers)} shards ({finished} already finished, "
             f"{len(todo) - len(launched)} still running; {len(started)} new server(s)); output: {plan.output_dir}")
    progress(f"watch: ./distributed_test.sh status {req.start_id} | attach: tmux -L {cfg.tmux_socket} attach -t "
             f"{todo[0].session} | stop: ./distributed_test.sh stop {req.start_id}")
    if not cfg.wait:
        return 0
    return wait_and_stop(record, server, cfg.stop_timeout_s, progress)


def wait_for_stopping_workers(plan: RunPlan, orphans: list[Slot], progress, poll_s: float = 0.5) -> None:
    """Wait for shard workers whose tmux session is gone but whose process still runs, then go on.

    A killed session (`tmux kill-session`, a closed terminal) SIGHUPs the worker's supervisor, which gives the
    worker up to `stop_timeout_s` to finish its last write before it is SIGKILLed; a rerun started meanwhile
    waits for that instead of failing. A worker still running after that was started outside the launcher
    (or ignores signals): two writers on one shard are refused."""
    running = [w for w in orphans if tmux.supervised_alive(w)]
    if not running:
        return
    limit = plan.cfg.stop_timeout_s + 15.0
    progress(f"waiting up to {limit:.0f} s for the stopping worker(s) of shard(s) "
             f"{', '.join(str(w.index) for w in running)} (their tmux sessions are gone)")
    deadline = time.time() + limit
    while running and time.time() < deadline:
        time.sleep(poll_s)
        running = [w for w in running if tmux.supervised_alive(w)]
    if running:
        worker = running[0]
        raise LaunchError(f"shard {worker.index} of {plan.output_dir} is still being run by process "
                          f"{read_json(worker.status).get('pid')} outside this run's sessions ({limit:.0f} s "
                          f"after its session was gone); stop it first", EXIT_USAGE)


def shard_finished(worker: Slot) -> bool:
    """The shard's worker exited with code 0 (the sampler's promise that the shard is complete)."""
    return read_json(worker.status).get("exit_code") == 0


def check_conflicts(record: RunRecord, previous: RunRecord | None, live: set[str], state_dir: str) -> None:
    """Refuse to touch sessions of another run: same TMUX_START_ID with another output dir, or overlapping names."""
    if previous and previous.output_dir != record.output_dir:
        busy = [s.session for s in previous.slots() if s.session in live]
        if busy:
            raise LaunchError(
                f"TMUX_START_ID {record.start_id} is running another run ({previous.method} on "
                f"{previous.dataset}, output {previous.output_dir}; sessions {', '.join(busy[:4])}...). "
                f"Stop it (./distributed_test.sh stop {record.start_id}) or choose another TMUX_START_ID",
                EXIT_USAGE)
    ours = {s.session for s in record.slots()}
    for other in all_records(state_dir, record.socket):
        if other.start_id == record.start_id:
            continue
        if other.output_dir == record.output_dir and any(s.session in live for s in other.slots()):
            raise LaunchError(f"{record.output_dir} is being written by the run with TMUX_START_ID "
                              f"{other.start_id}; resume with that TMUX_START_ID or stop it first", EXIT_USAGE)
        clash = sorted(ours & {s.session for s in other.slots()} & live)
        if clash:
            last = max(s.index for s in other.workers) + other.start_id if other.workers else other.start_id
            raise LaunchError(
                f"tmux sessions {', '.join(clash[:4])} belong to the run with TMUX_START_ID {other.start_id}; "
                f"choose TMUX_START_ID > {last} or stop that run", EXIT_USAGE)
    known = {s.session for s in previous.slots()} if previous and previous.output_dir == record.output_dir else set()
    unknown = sorted((ours & live) - known)
    if unknown:
        raise LaunchError(f"tmux sessions {', '.join(unknown[:4])} (socket {record.socket}) exist but belong to no "
                          f"recorded run; kill them (tmux -L {record.socket} kill-session -t NAME) or choose "
                          f"another TMUX_START_ID", EXIT_USAGE)


def start_servers(plan: RunPlan, record: RunRecord, previous: RunRecord | None, live: set[str], server,
                  progress) -> list[Slot]:
    """Reuse this run's live servers, start the missing ones in parallel, wait for all to be healthy."""
    cfg, req = plan.cfg, plan.request
    if cfg.server == "external":
        if not is_healthy(cfg.server_url, timeout=10):
            raise LaunchError(f"external server {cfg.server_url} does not answer GET /models (key 'server_url')",
                              EXIT_SERVER)
        return []
    old = {s.index: s for s in (previous.servers if previous and previous.output_dir == record.output_dir else [])}
    missing = []
    for slot in record.servers:
        if slot.session in live and slot.index in old and old[slot.index].port:
            slot.port, slot.url = old[slot.index].port, old[slot.index].url
            progress(f"{slot.session}: reusing the running server at {slot.url}")
        else:
            if slot.session in live:  # ours (check_conflicts) but without a recorded port: restart it
                tmux.stop_slots(server, [slot], cfg.stop_timeout_s, progress)
            missing.append(slot)
    if missing:
        busy = busy_gpus([g for s in missing for g in s.gpus])
        if busy:
            detail = "; ".join(f"GPU {g}: pids {pids}" for g, pids in sorted(busy.items()))
            raise LaunchError(f"GPU(s) already in use ({detail}); stop those processes or set gpus=...",
                              EXIT_ENVIRONMENT)
        taken = {s.port for r in all_records(cfg.state_dir, cfg.tmux_socket) for s in r.servers if s.port}
        try:
            ports = serving.find_free_ports(cfg.base_port + plan.request.start_id, len(missing), taken)
        except serving.NoFreePort as exc:
            raise LaunchError(str(exc), EXIT_ENVIRONMENT) from None
        device = "gpu" if any(s.gpus for s in record.servers) else "cpu"
        serving_cfg = serving.load_serving_config(device, serving_overrides(cfg))
        for slot, port in zip(missing, ports):
            proc = serving.server_process(req.model, serving_cfg, slot.log, port, slot.gpus)
            slot.port, slot.url = port, serving.base_url(port)
            argv = supervised(proc.argv, slot, cfg.stop_timeout_s, env=proc.env)
            tmux.start_session(server, slot.session, argv, PROJECT_ROOT)
            where = f"GPU {','.join(slot.gpus)}" if slot.gpus else "CPU"
            progress(f"{slot.session}: starting vLLM on {where}, port {port} (log {slot.log})")
    pending = [PendingServer(s.session, s.url, s.log, lambda s=s: s.session in tmux.alive_sessions(server))
               for s in record.servers]
    try:
        wait_all_healthy(pending, cfg.server_start_timeout_s, progress=progress)
    except ServerStartError as exc:
        tmux.stop_slots(server, missing, cfg.stop_timeout_s, progress)
        raise LaunchError(str(exc), EXIT_SERVER) from None
    return missing


def wait_and_stop(record: RunRecord, server, grace: float, progress, poll_s: float = 2.0) -> int:
    """Wait for every worker session to end, stop the servers, and report failed shards (exit 1)."""
    names = {w.session for w in record.workers}
    while names & tmux.alive_sessions(server):
        time.sleep(poll_s)
    tmux.stop_slots(server, record.servers, grace, progress)
    tmux.kill_server_if_empty(server)
    failed = [w for w in record.workers if read_json(w.status).get("exit_code") != 0]
    for w in failed:
        progress(f"shard {w.index} failed (exit code {read_json(w.status).get('exit_code')}); log {w.log}")
    if not failed:
        progress(f"all {len(record.workers)} shards finished; servers stopped; output: {record.output_dir}")
    return EXIT_WORKERS if failed else 0


def stop_run(record: RunRecord, grace: float, progress=print) -> list[str]:
    """Stop a run's workers, then its servers; return the sessions that were running."""
    server = tmux.tmux_server(record.socket)
    stopped = tmux.stop_slots(server, record.workers, grace, progress)
    stopped += tmux.stop_slots(server, record.servers, grace, progress)
    tmux.kill_server_if_empty(server)
    return stopped
