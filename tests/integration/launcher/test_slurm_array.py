"""Slurm backend on a real single-node Slurm started by the test (slurm-wlm + munge, own SLURM_CONF).

What this covers: `backend=slurm` writes an sbatch array script and submits it; every array task runs
its real sample_tree.py workers on real MATH tasks, each on its contiguous shard, into the shared
output dir. `server=external`: a scripted fake OpenAI server in this process stands in for vLLM to stay
within CI time, so no vLLM is started inside the array tasks (the CPU-mode tmux test starts a real one);
`status` reads the task states from squeue; resubmitting while the job runs is refused;
`stop` = scancel, and every worker process is gone afterwards; resubmitting resumes every shard to
completion without duplicates. Not covered: GPUs (`--gres`), vLLM inside an array task, several nodes.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from densepolicy.config import ConfigError
from densepolicy.launcher.config import load_launcher_config
from densepolicy.launcher.plan import RunPlan, RunRequest
from densepolicy.launcher.slurm_backend import batch_script
from tests.harness.launcher_helpers import STUB, Launcher, read_shard_rows
from tests.harness.slurm_local import start_or_skip
from tests.harness import fakes

TASKS = 16


def test_batch_script_asks_for_gpus_and_limits(tmp_path):
    cfg = load_launcher_config(["backend=slurm", "slurm.array_size=4", "slurm.gpus_per_task=2",
                                "slurm.max_concurrent=2", "slurm.time='12:00:00'", "slurm.extra_args=['--account=x']"])
    plan = RunPlan(RunRequest("m", "math", "codeact_agent_tree", 5, 0), cfg, "/m", [[]] * 4, 40, tmp_path)
    script = batch_script(plan, tmp_path / "plan.json", "/venv/bin/python")
    with pytest.raises(ConfigError, match="slurm.time"):
        load_launcher_config(["slurm.time=12:00:00"])
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --gres=gpu:2", "#SBATCH --time=12:00:00",
                 "#SBATCH --account=x", "-m densepolicy.launcher.slurm_task"):
        assert line in script


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = start_or_skip(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.integration
@pytest.mark.slurm
def test_slurm_array_runs_stops_and_resumes(slurm, tmp_path, fake_server):
    server = fake_server(fakes.scripted_reply, latency_s=0.3, model="SmolLM2-135M-Instruct")
    launcher = Launcher(tmp_path, f"dpslurm-{uuid.uuid4().hex[:8]}")
    out_dir = tmp_path / "run"
    cmd = ["SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "2", "0", "backend=slurm",
           "slurm.array_size=2", "slurm.gpus_per_task=0", "slurm.cpus_per_task=1", "server=external",
           f"server_url={server.base_url}", f"output_dir={out_dir}", f"sampler.max_tasks={TASKS}",
           "sampler.base=2", "sampler.max_steps=2", "sampler.window_size=2", "sampler.max_sample_number=2",
           "sampler.task_concurrency=1"]

    first = launcher(*cmd, env=slurm.env)
    assert first.returncode == 0, first.stderr
    assert "submitted Slurm array job" in first.stdout
    deadline = time.time() + 60
    while "slurm RUNNING" not in (status := launcher("status", "0", env=slurm.env).stdout):
        assert time.time() < deadline, status
        time.sleep(0.5)
    while _rows(out_dir) < 4:
        assert time.time() < deadline, "workers made no progress"
        time.sleep(0.3)
    busy = launcher(*cmd, env=slurm.env)
    assert busy.returncode == 2 and "still queued or running" in busy.stderr

    stop = launcher("stop", "0", env=slurm.env)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert slurm.run("squeue", "-h").stdout.strip() == ""
    pids = [json.loads((out_dir / "logs" / f"worker-{k}.status.json").read_text())["pid"] for k in range(4)]
    assert not any(_alive(pid) for pid in pids)
    done_before = _rows(out_dir)
    assert 4 <= done_before < TASKS, "the job should be stopped midway"

    again = launcher(*cmd, "wait=true", env=slurm.env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    per_shard = [[r["task_id"] for r in read_shard_rows(out_dir / f"math.train.{k}.csv")] for k in range(4)]
    ids = [t for shard in per_shard for t in shard]
    assert len(ids) == TASKS and len(set(ids)) == TASKS  # every shard complete, no duplicates
    assert [len(s) for s in per_shard] == [TASKS // 4] * 4
    assert all((out_dir / "trees" / f"math.train.{k}.jsonl").stat().st_size > 0 for k in range(4))
    script = (out_dir / "logs" / "slurm_job.sh").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --cpus-per-task=1" in script
    task_logs = sorted((out_dir / "logs").glob("slurm-*_*.out"))
    assert any("2/2 shards finished" in p.read_text() for p in task_logs)
    status = launcher("status", "0", env=slurm.env).stdout
    assert status.count("exited 0") == 4 and f"total: {TASKS} tasks done" in status


def _rows(out_dir: Path) -> int:
    return sum(len(read_shard_rows(p)) for p in out_dir.glob("math.train.*.csv"))


@pytest.mark.integration
@pytest.mark.slurm
def test_slurm_array_tasks_start_and_stop_their_own_servers(slurm, tmp_path):
    """server=vllm inside array tasks: each task starts a server (a fake `vllm serve` executable that only
    answers /v1/models, given as serving.python), waits for it, points its workers at it, stops it."""
    from densepolicy.paths import main_python

    fake_python = tmp_path / "fake-vllm-python"
    fake_python.write_text(f"#!/bin/sh\nshift 2\nexec {main_python()} "
                           f"{Path('tests/harness/launcher_fake_vllm.py').resolve()} \"$@\"\n")
    fake_python.chmod(0o755)
    launcher = Launcher(tmp_path, f"dpslurm-{uuid.uuid4().hex[:8]}")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "stub_worker.json").write_text(json.dumps({"sleep": 0.05}))
    out = launcher("SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "2", "0", "backend=slurm",
                   "slurm.array_size=2", "slurm.gpus_per_task=0", "slurm.cpus_per_task=1", "wait=true",
                   f"serving.python={fake_python}", f"worker_script={STUB}", f"output_dir={out_dir}",
                   "sampler.max_tasks=8", "base_port=24500", env=slurm.env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    servers = [json.loads((out_dir / "logs" / f"server-{t}.status.json").read_text()) for t in range(2)]
    assert all(s["exit_code"] is not None and not _alive(s["pid"]) for s in servers)  # stopped at task end
    for t in range(2):
        assert "fake vLLM serving SmolLM2-135M-Instruct" in (out_dir / "logs" / f"server-{t}.log").read_text()
    for k in range(4):  # each worker used its own task's server
        task = k // 2
        port = int(servers[task]["argv"][servers[task]["argv"].index("--port") + 1])
        assert f"--server_url http://127.0.0.1:{port}/v1" in (out_dir / "logs" / f"worker-{k}.log").read_text()
        assert len(read_shard_rows(out_dir / f"math.test.{k}.csv")) == 2
