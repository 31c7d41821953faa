"""`distributed_test.sh status`: one line per session with role, shard, state, progress and last log line."""
from __future__ import annotations

import socket

from densepolicy.launcher import tmux_backend as tmux
from densepolicy.launcher.files import read_json, tail_lines
from densepolicy.launcher.progress import shard_progress
from densepolicy.launcher.registry import RunRecord, Slot


def slot_state(slot: Slot, live_sessions: set[str] | None) -> str:
    """'alive', 'exited N' (N = exit code, negative = signal), 'starting' or 'not started'."""
    status = read_json(slot.status)
    running = slot.session in live_sessions if live_sessions is not None else tmux.supervised_alive(slot)
    if running:
        return "alive"
    if not status:
        return "not started"
    code = status.get("exit_code")
    if code is not None:
        return f"exited {code}"
    if status.get("host") and status["host"] != socket.gethostname():
        return f"on {status['host']}"  # another node: trust the Slurm column
    return "killed"


def run_lines(record: RunRecord, live_sessions: set[str] | None, slurm_states: dict[int, str] | None = None,
              width: int = 70) -> list[str]:
    """Status lines of one run (header first)."""
    lines = [f"run TMUX_START_ID={record.start_id} [{record.backend}"
             + (f" job {record.slurm_job_id}" if record.slurm_job_id else "") + "] "
             f"{record.method} on {record.dataset} with {record.model}, {record.num_shards} shards -> {record.output_dir}"]
    done_total = pairs_total = 0
    for slot in record.slots():
        state = slot_state(slot, live_sessions)
        last = next((line for line in reversed(tail_lines(slot.log, 5)) if not line.startswith("=== ")), "")
        last = last[:width]
        if slot.role == "server":
            where = f"gpu {','.join(slot.gpus)}" if slot.gpus else "cpu"
            what = f"{where:<10} {state:<11} {slot.url or '':<28}"
        else:
            prog = shard_progress(record.output_dir, record.dataset, slot.index, slot.log)
            done_total += prog.done
            pairs_total += prog.pairs
            total = "?" if prog.total is None else str(prog.total)
            what = (f"shard {slot.index}/{record.num_shards:<3} {state:<11} "
                    f"tasks {prog.done}/{total:<5} pairs {prog.pairs:<6}")
        if slurm_states is not None:
            what += f" slurm {slurm_states.get(slot_task(record, slot), '?'):<10}"
        lines.append(f"  {slot.session:<10} {slot.role:<7} {what} | {last}")
    lines.append(f"  total: {done_total} tasks done, {pairs_total} pairs")
    return lines


def slot_task(record: RunRecord, slot: Slot) -> int:
    """Slurm array index that runs `slot` (servers: their index; workers: by shard block)."""
    if slot.role == "server":
        return slot.index
    per_task = max(1, record.num_shards // max(1, len(record.servers) or 1))
    return slot.server_index if slot.server_index is not None else slot.index // per_task
