"""Fault injection: no command silently corrupts, mixes or loses results (issue 13, its nine cases).

Every worker runs as a real `sample_tree.py` subprocess against the scripted fake server (in this
process), on the scripted math env of `tests.harness.fakes`. The kill-resume test lives in
test_sample_tree_resume.py and is unchanged.
"""
from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import pytest

from densepolicy.config import ConfigError
from densepolicy.file_lock import LockHeldError, LockLostError, OutputLock, read_holder
from densepolicy.paths import PROJECT_ROOT
from densepolicy.sampling.config import resolve_sampler_config, setting_fields
from densepolicy.serving.llm_client import LLMClient, LLMError, LLMRejectedError
from tests.harness import fakes
from tests.harness.worker_runs import (SHARD, USER, command, error_line, gated_reply, merge_cmd, rows, run, start,
                                          wait_for)
from tests.harness.worker_runs import pairs_file as _pairs_file

HOST = socket.gethostname()
















# -- 1. one writer per shard ---------------------------------------------------------------------------

def test_second_worker_and_merge_are_refused_while_a_worker_writes_the_shard(fake_server, tmp_path):
    gate = threading.Event()
    server = fake_server(gated_reply(gate))
    out = tmp_path / "run"
    first = start(command(server.base_url, out))
    try:
        wait_for(lambda: len(server.requests) > 0 or first.poll() is not None)
        second = run(command(server.base_url, out), timeout=60)
        assert second.returncode == 4
        line = error_line(second)
        assert f"pid {first.pid}" in line and HOST in line and SHARD in line
        merge = run(merge_cmd(out), timeout=60)
        assert merge.returncode == 4
        line = error_line(merge)
        assert f"pid {first.pid}" in line and HOST in line
        assert (out / f"{SHARD}.csv").is_file() and not (out / "distributed_result").exists()  # nothing moved
    finally:
        gate.set()
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    task_ids = [r["task_id"] for r in rows(out)]
    assert sorted(task_ids) == ["0", "1"]                                   # no duplicate rows
    assert not (out / f"{SHARD}.csv.lock").exists()                         # released on exit


def test_a_worker_whose_lock_was_taken_over_stops_before_writing(fake_server, tmp_path):
    gate = threading.Event()
    server = fake_server(gated_reply(gate))
    out = tmp_path / "run"
    proc = start(command(server.base_url, out))
    try:
        wait_for(lambda: len(server.requests) > 0 or proc.poll() is not None)
        lock = out / f"{SHARD}.csv.lock"       # another node decided our heartbeat was stale and took over
        lock.unlink()
        _write_lock(lock, host="node-9", pid=99)
    finally:
        gate.set()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4
    assert "lost the lock" in stderr and "node-9" in stderr and "Traceback" not in stderr
    assert rows(out) == []                                                  # not a single row written
    assert read_holder(lock)["host"] == "node-9"                            # the new holder's lock is kept


def test_two_workers_started_together_one_runs_one_is_refused(fake_server, tmp_path):
    gate = threading.Event()
    server = fake_server(gated_reply(gate))
    out = tmp_path / "run"
    procs = [start(command(server.base_url, out)) for _ in range(2)]
    try:
        wait_for(lambda: any(p.poll() is not None for p in procs), timeout=120)
    finally:
        gate.set()
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 4], results
    refused = next(err for code, err in results if code == 4)
    assert "Traceback" not in refused and len(refused.strip().splitlines()) == 1
    assert sorted(r["task_id"] for r in rows(out)) == ["0", "1"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_lock(path: Path, **holder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "t-other", "purpose": "test", "created": "then", **holder}))


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    path = tmp_path / "shard.csv.lock"
    _write_lock(path, host=HOST, pid=_dead_pid())
    with OutputLock(path, "worker") as lock:
        assert read_holder(path)["pid"] == os.getpid() and read_holder(path)["token"] == lock.token
    assert not path.exists()
    assert "took over" in caplog.text
    # same pid number but another process start time: the pid was reused, the holder is gone
    _write_lock(path, host=HOST, pid=os.getpid(), start_time=1)
    with OutputLock(path, "worker"):
        pass


def test_lock_of_another_host_is_held_while_its_heartbeat_is_fresh(tmp_path):
    path = tmp_path / "shard.csv.lock"
    _write_lock(path, host="node-17", pid=4242)
    with pytest.raises(LockHeldError) as info:
        OutputLock(path, "worker", stale_after_s=60).acquire()
    assert "pid 4242 on host node-17" in str(info.value) and "\n" not in str(info.value)
    old = time.time() - 3600
    os.utime(path, (old, old))                      # no heartbeat for an hour: the holder is gone
    with OutputLock(path, "worker", stale_after_s=60):
        assert read_holder(path)["host"] == HOST


def test_a_live_holder_on_this_host_is_never_taken_over(tmp_path):
    path = tmp_path / "shard.csv.lock"
    with OutputLock(path, "worker"):
        os.utime(path, (0, 0))                      # even with an ancient mtime: the process is alive
        with pytest.raises(LockHeldError, match=f"pid {os.getpid()} on host {HOST}"):
            OutputLock(path, "worker", stale_after_s=1).acquire()


def test_a_holder_whose_lock_was_taken_over_notices_before_writing(tmp_path):
    path = tmp_path / "shard.csv.lock"
    lock = OutputLock(path, "worker").acquire()
    lock.check()
    path.unlink()
    _write_lock(path, host="node-3", pid=7)
    with pytest.raises(LockLostError, match="node-3"):
        lock.check()
    lock.release()
    assert read_holder(path)["host"] == "node-3"     # the new holder's lock is left alone


def _race_for_stale_lock(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        lock = OutputLock(Path(path), "worker").acquire()
    except LockHeldError:
        results.put("refused")
        return
    results.put("won")
    time.sleep(3.0)  # hold it while the others try
    lock.release()


def test_racing_takeovers_of_one_stale_lock_leave_exactly_one_holder(tmp_path):
    path = tmp_path / "shard.csv.lock"
    _write_lock(path, host=HOST, pid=_dead_pid())
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_race_for_stale_lock, args=(str(path), barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["refused"] * 5 + ["won"]


# -- 2. validation before any file is created ------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("max_tasks", "-3"), ("max_tasks", "0"), ("temperature", "-1"), ("temperature", ".nan"), ("max_retries", "-1"),
    ("top_p", "0"), ("top_p", "1.5"), ("max_sample_number", "0"), ("thre_value", "-0.5"), ("thre_max", "0"),
    ("request_timeout_s", "0"), ("backoff_s", "-1"), ("retry_window_s", "-1"), ("max_runs", "0"),
    ("temperature_cycle", "[0.7, -1.0]"), ("context_length", "0"), ("min_completion_tokens", "-1"),
    ("explore_weight", "-2"), ("max_turn", "0"), ("lock_stale_s", "0")])
def test_out_of_range_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"key '{key}' must"):
        resolve_sampler_config("codeact_agent_tree", "gsm8k", [f"{key}={value}"])


def test_every_numeric_setting_has_a_range():
    """A new numeric key must get a range: -10**9 is refused for all of them (seed takes any integer)."""
    numeric = [name for name, (_, tp) in setting_fields().items()
               if {int, float} & ({tp} | set(typing.get_args(tp))) and name != "seed"]  # the tree's and agent's too
    assert len(numeric) > 20 and {"base", "thre_value", "max_turn", "max_tokens"} <= set(numeric)
    accepted = []
    for key in numeric:
        try:
            resolve_sampler_config("codeact_agent_tree", "gsm8k", [f"{key}=-1000000000"])
        except ConfigError as exc:
            assert key in str(exc)
        else:
            accepted.append(key)
    assert accepted == []


def test_worker_with_a_bad_setting_exits_2_before_creating_any_file(tmp_path):
    out = tmp_path / "run"
    for bad in ("max_tasks=-3", "max_retries=-1"):
        proc = run(command("http://127.0.0.1:9/v1", out, bad), timeout=120)
        assert proc.returncode == 2
        assert bad.split("=")[0] in error_line(proc)
        assert not out.exists()


def test_an_output_dir_that_cannot_be_created_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run(command("http://127.0.0.1:9/v1", blocker / "run"), timeout=120)
    assert proc.returncode == 2
    assert str(blocker) in error_line(proc)


# -- 3. the run's identity lives with its results ------------------------------------------------------

def test_deleting_state_does_not_let_other_settings_append_to_a_shard(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    out = tmp_path / "run"
    first = run(command(server.base_url, out, "max_tasks=1"))
    assert first.returncode == 0, first.stderr
    assert (out / f"{SHARD}.settings.json").is_file()
    before = (out / f"{SHARD}.csv").read_bytes(), (out / f"{SHARD}.settings.json").read_bytes()
    subprocess.run(["rm", "-rf", str(out / "state")], check=True)
    other = run(command(server.base_url, out, "max_tasks=1", "base=2"))
    assert other.returncode == 2
    assert "base: 3 -> 2" in error_line(other)
    assert ((out / f"{SHARD}.csv").read_bytes(), (out / f"{SHARD}.settings.json").read_bytes()) == before
    # without its settings record a shard with results is refused too (never guessed)
    (out / f"{SHARD}.settings.json").unlink()
    again = run(command(server.base_url, out, "max_tasks=1"))
    assert again.returncode == 2 and "settings" in error_line(again)
    assert (out / f"{SHARD}.csv").read_bytes() == before[0]
    # the same settings resume normally once the record is back
    (out / f"{SHARD}.settings.json").write_bytes(before[1])
    resumed = run(command(server.base_url, out, "max_tasks=1"))
    assert resumed.returncode == 0, resumed.stderr
    assert [r["task_id"] for r in rows(out)] == ["0"]


def test_merge_refuses_shards_made_with_different_settings(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    out = tmp_path / "run"
    assert run(command(server.base_url, out, "max_tasks=1")).returncode == 0
    assert run(merge_cmd(out)).returncode == 0
    (out / "provenance.json").unlink(missing_ok=True)   # the run-level record (issue 12) deleted too
    # shard 0 is archived; a new worker 0 with other settings starts a fresh shard 0 ...
    assert run(command(server.base_url, out, "max_tasks=1", "max_sample_number=4")).returncode == 0
    merge = run(merge_cmd(out))                      # ... which the merge will not mix with the archived one
    assert merge.returncode == 2
    assert "max_sample_number" in error_line(merge)
    assert (out / f"{SHARD}.csv").is_file()


# -- 4. prepare_dataset.py refuses an empty dataset --------------------------------------------------------



@pytest.mark.parametrize("kind", ["zero_bytes", "header_only", "unselected"])
def test_prepare_dataset_refuses_an_empty_dataset_unless_allowed(tmp_path, kind):
    pairs = _pairs_file(tmp_path / "p.pairs.csv", kind)
    data = tmp_path / "data"
    cmd = [sys.executable, str(PROJECT_ROOT / "prepare_dataset.py"), "--pairs", str(pairs), "--output_dir", str(data),
           "--name", "empty"]
    refused = run(cmd)
    assert refused.returncode == 2
    line = error_line(refused)
    assert str(pairs) in line and ("no selected pairs" in line or "empty file" in line)
    assert not (data / "empty.json").exists() and not (data / "dataset_info.json").exists()
    if kind != "zero_bytes":                        # a 0-byte file is corrupt, not an empty dataset
        allowed = run(cmd + ["--allow_empty"])
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads((data / "empty.json").read_text()) == []
        assert "empty" in json.loads((data / "dataset_info.json").read_text())


# -- 5. decode errors name the file and line ---------------------------------------------------------------

def _tree_row(task_id: str) -> dict[str, str]:
    return {"task_id": task_id, "dataset": "math", "split": "train", "method": "codeact_agent_tree", "model": "m",
            "status": "done", "score": "1.0", "history": "", "extra": "{}"}


def _write_csv(path: Path, rows_: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows_[0]))
        writer.writeheader()
        writer.writerows(rows_)
    return path


def _poison(path: Path, line: int) -> None:
    """Put a non-UTF-8 byte into 1-based line `line`."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"math", b"ma\xffth", 1)
    path.write_bytes(b"\n".join(lines))


def test_non_utf8_bytes_are_reported_with_file_and_line_by_every_reader(tmp_path):
    run_dir = tmp_path / "run"
    shard = _write_csv(run_dir / "math.train.0.csv", [_tree_row("a"), _tree_row("b"), _tree_row("c")])
    _poison(shard, 3)
    merge = run(merge_cmd(run_dir, "math.train.{}.csv"))
    assert merge.returncode == 2 and f"{shard}:3" in error_line(merge) and "UTF-8" in merge.stderr
    assert shard.is_file()                                               # nothing moved

    score = run([sys.executable, str(PROJECT_ROOT / "post_process_test_result.py"), "--see_score",
                 "--files", str(shard)])
    assert score.returncode == 2 and f"{shard}:3" in error_line(score)

    tree = tmp_path / "tree.jsonl"
    tree.write_bytes(b'{"task_id": "a", "node_id": "0"}\n{"task_id": "math", "node_id": "1"}\n')
    _poison(tree, 2)
    pairs = run([sys.executable, str(PROJECT_ROOT / "post_process_training_data.py"), "--process_result",
                 "--tree_file", str(tree), "--output", str(tmp_path / "out.pairs.csv")])
    assert pairs.returncode == 2 and f"{tree}:2" in error_line(pairs)

    pairs_csv = _pairs_file(tmp_path / "p.pairs.csv", "unselected")
    _poison(pairs_csv, 2)
    prep = run([sys.executable, str(PROJECT_ROOT / "prepare_dataset.py"), "--pairs", str(pairs_csv),
                "--output_dir", str(tmp_path / "data")])
    assert prep.returncode == 2 and f"{pairs_csv}:2" in error_line(prep)


def test_non_utf8_config_and_dataset_registry_are_named_before_anything_is_written(tmp_path):
    from densepolicy.config import read_yaml
    from densepolicy.postprocess.config import DatasetConfig
    from densepolicy.postprocess.lf_dataset import DatasetError, prepare_dataset
    config = tmp_path / "c.yaml"
    config.write_bytes(b"base: \xff\n")
    with pytest.raises(ConfigError, match=re.escape(f"{config}: not UTF-8")):
        read_yaml(config)
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_info.json").write_bytes(b'{"other": "\xff"}')
    pairs = _pairs_file(tmp_path / "p.pairs.csv", "unselected")
    with pytest.raises(DatasetError, match=re.escape(str(data / "dataset_info.json"))):
        prepare_dataset(pairs, DatasetConfig(output_dir=str(data)), name="n", allow_empty=True, show_progress=False)
    assert not (data / "n.json").exists()


@pytest.mark.parametrize("target", ["csv", "tree", "journal"])
def test_worker_resuming_a_shard_with_bad_bytes_names_file_and_line(fake_server, tmp_path, target):
    server = fake_server(fakes.scripted_reply)
    out = tmp_path / "run"
    assert run(command(server.base_url, out)).returncode == 0
    if target == "csv":
        path, line = out / f"{SHARD}.csv", 2
        path.write_bytes(path.read_bytes().replace(b"gsm8k", b"gsm\xff8k", 1))
    elif target == "tree":
        path, line = out / "trees" / f"{SHARD}.jsonl", 1
        path.write_bytes(b'{"task_id": "0", "x": "\xff"}\n' + path.read_bytes())
    else:  # a task in progress whose journal is damaged: the damaged lines are dropped, the nodes regenerated
        from densepolicy.sampling.shard_writer import ShardWriter
        shard = out / f"{SHARD}.csv"
        lines = shard.read_bytes().splitlines(keepends=True)
        shard.write_bytes(b"".join(lines[:-1]))                   # the last task is unfinished again
        unfinished = lines[-1].split(b",", 1)[0].decode()
        path = ShardWriter(out, SHARD, tree=True)._journal_path(unfinished)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'{"task_id": "%s", "node": "\xff\n' % unfinished.encode())
    proc = run(command(server.base_url, out))
    if target == "journal":
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and f"{path}:1: damaged journal line" in proc.stderr
        assert sorted(r["task_id"] for r in rows(out)) == ["0", "1"]
        return
    assert proc.returncode == 2
    assert f"{path}:{line}" in error_line(proc)


# -- 6. a 0-byte shard is refused by the merge ------------------------------------------------------------

def test_merge_refuses_a_zero_byte_shard_with_file_and_line(tmp_path):
    run_dir = tmp_path / "run"
    _write_csv(run_dir / "math.train.0.csv", [_tree_row("a")])
    (run_dir / "math.train.1.csv").write_bytes(b"")
    (run_dir / "trees").mkdir()
    (run_dir / "trees" / "math.train.1.jsonl").write_text('{"task_id": "b", "node_id": "0"}\n')
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    merge = run(merge_cmd(run_dir, "math.train.{}.csv"))
    assert merge.returncode == 2
    line = error_line(merge)
    assert f"{run_dir / 'math.train.1.csv'}:1" in line and "empty" in line
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


# -- 7. errors a rerun cannot fix are not reported as "rerun to resume" -------------------------------------

def test_wrong_model_name_exits_2_with_the_servers_message(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply, model="served-name")
    proc = run(command(server.base_url, tmp_path / "run", model="wrong-name"))
    assert proc.returncode == 2
    line = error_line(proc)
    assert "HTTP 404" in line and "`wrong-name` does not exist" in line and "rerun" not in line
    assert len(server.requests) <= 2 * 3             # the first steps of the 2 tasks in flight, none retried


def test_bad_request_other_than_context_length_exits_2(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    server.fault = "400"
    proc = run(command(server.base_url, tmp_path / "run"))
    assert proc.returncode == 2
    line = error_line(proc)
    assert "HTTP 400" in line and "scripted bad request" in line and "rerun" not in line


def test_malformed_replies_are_retried_a_few_times(fake_server, tmp_path):
    clean = fake_server(fakes.scripted_reply)
    assert run(command(clean.base_url, tmp_path / "clean", "max_tasks=1")).returncode == 0
    glitchy = fake_server(fakes.scripted_reply, fail_plan={0: "malformed", 3: "malformed_json", 4: "malformed"})
    proc = run(command(glitchy.base_url, tmp_path / "glitchy", "max_tasks=1"))
    assert proc.returncode == 0, proc.stderr
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_time_s", "extra")} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "glitchy")) == strip(rows(tmp_path / "clean"))
    assert len(glitchy.requests) == len(clean.requests) + 3

    broken = fake_server(fakes.scripted_reply)
    broken.fault = "malformed"
    proc = run(command(broken.base_url, tmp_path / "broken", "max_tasks=1"))
    assert proc.returncode == 2
    line = error_line(proc)
    assert "malformed" in line and "rerun" not in line
    assert len(broken.requests) <= 2 * 3 * 3         # 3 tries of each first-step request, not a retry window


# -- 8. a missing data directory ---------------------------------------------------------------------------

def test_missing_data_directory_is_one_line_exit_2(tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "no_such_data"
    cmd = [sys.executable, str(PROJECT_ROOT / "sample_tree.py"), "codeact_agent_tree", "gsm8k", "--model", "fake",
           "--output_dir", str(out), "context_length=1000", "progress=false"]
    proc = run(cmd, env={**os.environ, "DENSEPOLICY_DATA_DIR": str(missing)})
    assert proc.returncode == 2
    assert str(missing) in error_line(proc)
    proc = run(cmd + [f"data_dir={missing}"])
    assert proc.returncode == 2 and "data_dir" in error_line(proc)
    assert not out.exists()


# -- 9. retries that match reality --------------------------------------------------------------------------

def test_defaults_outlast_a_server_restart_and_show_a_hang_within_minutes():
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k")
    assert cfg.retry_window_s >= 120                  # a vLLM restart: 25-60 s on CPU, minutes for big models
    assert cfg.request_timeout_s <= 300               # a hung request is reported within 5 minutes
    assert cfg.request_timeout_s + cfg.retry_window_s + cfg.request_timeout_s <= 20 * 60


class VirtualClock:
    """monotonic() and sleep() for the client: sleeping advances time instantly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.on_advance = lambda now: None

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_advance(self.now)
        await asyncio.sleep(0)


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_default_retry_window_rides_out_150_s_of_server_faults(fake_server, fault):
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k")
    server = fake_server(["finally"])
    server.fault = fault
    clock = VirtualClock()
    clock.on_advance = lambda now: setattr(server, "fault", None) if now >= 150 else None
    client = LLMClient(server.base_url, "m", timeout_s=cfg.request_timeout_s, max_retries=cfg.max_retries,
                       backoff_s=cfg.backoff_s, retry_window_s=cfg.retry_window_s,
                       clock=clock.monotonic, sleep=clock.sleep)
    assert asyncio.run(client.chat(USER)).texts == ["finally"]
    assert 150 <= clock.now < 150 + 30                # picked up soon after the server came back


def test_retry_window_ends_with_the_last_error_and_no_sooner(fake_server):
    server = fake_server(["never"])
    server.fault = "500"
    clock = VirtualClock()
    client = LLMClient(server.base_url, "m", backoff_s=0.5, retry_window_s=200, clock=clock.monotonic,
                       sleep=clock.sleep)
    with pytest.raises(LLMError, match="HTTP 500") as info:
        asyncio.run(client.chat(USER))
    assert not isinstance(info.value, LLMRejectedError)
    assert 200 <= clock.now <= 200 + 1


def test_worker_survives_a_server_restart_longer_than_the_old_retry_budget(fake_server, tmp_path):
    clean = fake_server(fakes.scripted_reply)
    assert run(command(clean.base_url, tmp_path / "clean")).returncode == 0
    server = fake_server(fakes.scripted_reply, latency_s=0.02)
    proc = subprocess.Popen(command(server.base_url, tmp_path / "restarted"), cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(server.requests) >= 5 or proc.poll() is not None)
    server.restart(down_s=6.0)                        # 6 s > 6 retries from 0.05 s doubling (at most 3.2 s)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_time_s", "extra")} for r in rs]  # noqa: E731
    assert sorted(strip(rows(tmp_path / "restarted")), key=str) == sorted(strip(rows(tmp_path / "clean")), key=str)


def test_a_hung_server_is_given_up_on_after_timeout_and_window(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply, hang_s=60)
    server.fault = "hang"
    start = time.monotonic()
    proc = run(command(server.base_url, tmp_path / "run", "request_timeout_s=1", "retry_window_s=2"), timeout=120)
    assert proc.returncode == 3
    assert "timeout" in proc.stderr and "rerun the same command to resume" in proc.stderr
    assert time.monotonic() - start < 60
