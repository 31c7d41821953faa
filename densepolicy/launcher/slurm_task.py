"""One Slurm array task: start this task's server, run its workers (in parallel), stop the server.

    python -m densepolicy.launcher.slurm_task <output_dir>/logs/slurm_plan.json

Reads $SLURM_ARRAY_TASK_ID to pick its part of the plan. Shards whose worker already exited 0
are skipped (so a resubmitted job only redoes what is missing). Exit code: 0 when every worker
of the task succeeded, 1 otherwise, 5 when the server did not come up.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from densepolicy.launcher.files import read_json
from densepolicy.launcher.health import PendingServer, ServerStartError, wait_all_healthy
from densepolicy.launcher.plan import EXIT_SERVER, EXIT_WORKERS, supervised
from densepolicy.launcher.registry import Slot


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the supervisor forwards it to its process group
    for proc in procs:
        try:
            proc.wait(timeout=grace + 10)
        except subprocess.TimeoutExpired:
            proc.kill()


_PORT_CLAIMS: list = []
"""Port claims of this task's server, held until the task process exits (`servers.claim_free_port`)."""


def server_command(plan: dict, slot: Slot) -> tuple[list[str], dict[str, str], str]:
    """argv, env and base URL of this task's vLLM server (GPUs come from Slurm's CUDA_VISIBLE_DEVICES).

    The port is the first free one from base_port + array task id that no other task on this node has claimed;
    the claim lasts as long as this task's process, so tasks sharing a node never pick the same port even while
    their servers are still starting."""
    from densepolicy.launcher import servers as serving

    task_id = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    claim = serving.claim_free_port(plan["base_port"] + task_id)
    _PORT_CLAIMS.append(claim)
    port = claim.port
    tp = int(plan.get("gpus_per_task") or 0)
    cfg = serving.load_serving_config("gpu" if tp else "cpu", plan["serving_overrides"], tp or None)
    proc = serving.server_process(plan["model"], cfg, Path(slot.log), port, gpus=[])
    return proc.argv, proc.env, serving.base_url(port)


def run_task(plan: dict, task_id: int) -> int:
    """Run array task `task_id` of `plan`; return its exit code."""
    task = plan["tasks"][task_id]
    grace = float(plan["grace_s"])
    python = plan["python"]
    workers = [(Slot(**w["slot"]), w["argv"]) for w in task["workers"]]
    todo = [(slot, argv) for slot, argv in workers if read_json(slot.status).get("exit_code") != 0]
    if not todo:
        print(f"task {task_id}: all {len(workers)} shards already finished")
        return 0
    running: list[subprocess.Popen] = []
    cancelled: list[int] = []

    def on_signal(signum, _frame):
        # Only signal here: Popen.wait() inside a handler that interrupted another wait() spins on a lock.
        cancelled.append(signum)
        for proc in running:
            try:
                os.kill(proc.pid, signal.SIGTERM)  # the supervisor forwards it to its process group
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server_proc = None
    if plan["server_mode"] == "external":
        url = plan["server_url"]
    else:
        slot = Slot(**task["server"])
        argv, env, url = server_command(plan, slot)
        server_proc = _start(supervised(argv, slot, grace, env=env, python=python))
        running.append(server_proc)
        print(f"task {task_id}: server starting at {url} (log {slot.log})", flush=True)
        try:
            wait_all_healthy([PendingServer(slot.session, url, slot.log, lambda: server_proc.poll() is None)],
                             float(plan["server_start_timeout_s"]))
        except ServerStartError as exc:
            print(exc, file=sys.stderr)
            _stop(running, grace)
            return EXIT_SERVER
        if cancelled:
            _stop(running, grace)
            return 128 + cancelled[0]
    procs = []
    for slot, argv in todo:
        argv = [a.replace("{SERVER_URL}", url) for a in argv]
        procs.append(_start(supervised(argv, slot, grace, python=python)))
        print(f"task {task_id}: shard {slot.index} started (log {slot.log})", flush=True)
    running.extend(procs)
    codes = [p.wait() for p in procs]
    if server_proc is not None:
        _stop([server_proc], grace)
    if cancelled:
        print(f"task {task_id}: cancelled (signal {cancelled[0]})", flush=True)
        return 128 + cancelled[0]
    failed = [slot.index for (slot, _), code in zip(todo, codes) if code != 0]
    print(f"task {task_id}: {len(todo) - len(failed)}/{len(todo)} shards finished"
          + (f", failed: {failed}" if failed else ""), flush=True)
    return EXIT_WORKERS if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    plan = json.loads(Path(args[0]).read_text())
    return run_task(plan, int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")))


if __name__ == "__main__":
    sys.exit(main())
