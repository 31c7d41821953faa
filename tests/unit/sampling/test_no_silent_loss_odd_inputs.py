"""Fault injection, issue 19: odd text, full disks, damaged side files, dataset names, shared clusters.

Each numbered case of the issue is a test here (the number is in the section title). Workers run as
real `sample_tree.py` subprocesses against the scripted fake server, on the scripted math env of
`tests.harness.fakes`; a full disk is simulated by `tests/harness/fail_writes.py` (fsync fails with ENOSPC/EROFS).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from densepolicy.file_lock import OutputLock, lock_path
from densepolicy.paths import PROJECT_ROOT
from densepolicy.postprocess import merge as merge_module
from densepolicy.results_io import atomic_open, write_csv_atomic, write_json_atomic
from densepolicy.sampling.shard_writer import TaskJournal
from densepolicy.testing.fake_server import FakeOpenAIServer
from tests.harness import fakes
from tests.harness.worker_runs import (SHARD, command, error_line, gated_reply, merge_cmd, rows, run, start,
                                          wait_for)
from tests.harness.worker_runs import pairs_file as _pairs_file

TREE = Path("trees") / f"{SHARD}.jsonl"


def split_jsonl(text: str) -> list[str]:
    """JSONL lines split on \\n only (the test's own reader, independent of the code under test)."""
    return text.split("\n")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A finished run directory of one shard (2 tasks), made once; tests work on copies."""
    server = FakeOpenAIServer(fakes.scripted_reply).start()
    try:
        out = tmp_path_factory.mktemp("reference") / "run"
        proc = run(command(server.base_url, out))
        assert proc.returncode == 0, proc.stderr
    finally:
        server.stop()
    return out


def copy_run(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


def comparable_rows(out: Path) -> dict[str, dict[str, str]]:
    """Rows by task id without what legitimately differs between runs (time, replay counters)."""
    result = {}
    for row in rows(out):
        extra = json.loads(row.pop("extra"))
        extra.pop("replays", None), extra.pop("replay_mismatches", None)
        row.pop("wall_time_s")
        result[row["task_id"]] = {**row, "extra": extra}
    return result


def tree_lines(out: Path) -> list[str]:
    return sorted(line for line in split_jsonl((out / TREE).read_text(encoding="utf-8")) if line)


def node_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in split_jsonl(path.read_text(encoding="utf-8")):
        if line:
            task = json.loads(line)["task_id"]
            counts[task] = counts.get(task, 0) + 1
    return counts


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".stale." in p.name]


def failing(cmd: list[str], under: Path, after: int, err: str = "ENOSPC") -> subprocess.CompletedProcess:
    """Run `cmd` (a python script command line) with fsyncs under `under` failing after `after` of them."""
    env = {**os.environ, "FAIL_UNDER": str(under), "FAIL_AFTER": str(after), "FAIL_ERRNO": err}
    return run([cmd[0], str(PROJECT_ROOT / "tests" / "harness" / "fail_writes.py"), *cmd[1:]], env=env)


# -- 1. a lone surrogate (and U+2028) in a model reply ----------------------------------------------------

def odd_reply(messages, request):
    """The scripted reply with a lone surrogate and the line separators U+2028/U+2029 in its thought."""
    return fakes.scripted_reply(messages, request).replace("Thought:", "Thought: \ud800 odd \u2028 text \u2029", 1)


def test_a_lone_surrogate_in_a_reply_is_kept_and_the_task_finishes(fake_server, tmp_path):
    server = fake_server(odd_reply)
    out = tmp_path / "run"
    proc = run(command(server.base_url, out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["task_id"] for r in rows(out)) == ["0", "1"]
    assert {r["status"] for r in rows(out)} == {"done"}, proc.stderr      # no task lost as status=error
    raw = (out / TREE).read_bytes()
    raw.decode("utf-8")                                                     # valid UTF-8 throughout
    records = [json.loads(line) for line in split_jsonl(raw.decode()) if line]
    # U+2028/U+2029 kept exactly; the lone surrogate (which no UTF-8 request or file can carry) replaced and counted
    assert any("\ufffd odd \u2028 text \u2029" in r["assistant"] for r in records)
    assert "replaced 1 lone surrogate" in proc.stderr
    assert node_counts(out / TREE) == {r["task_id"]: int(r["nodes"]) for r in rows(out)}
    again = run(command(server.base_url, out))
    assert again.returncode == 0 and "done: 0 task(s) run" in again.stdout


# -- 7. JSONL lines survive every line splitter ------------------------------------------------------------

def test_jsonl_lines_escape_u2028_u2029_and_lone_surrogates(tmp_path):
    from densepolicy.results_io import json_line
    record = {"task_id": "t", "assistant": "a\u2028b\u2029c\ud800d\u00e9\u0000"}
    line = json_line(record)
    assert line.count("\n") == 1 and len(line.splitlines()) == 1
    assert "\u2028" not in line and "\u2029" not in line and "é" in line   # other non-ASCII stays readable
    line.encode("utf-8")
    assert json.loads(line) == record
    journal = TaskJournal(tmp_path / "state" / "t.jsonl")
    journal.append(record)
    journal.append({"task_id": "t", "n": 2})
    journal.close()
    text = (tmp_path / "state" / "t.jsonl").read_bytes().decode("utf-8")
    assert len(text.splitlines()) == 2                                      # str.splitlines() readers work
    assert TaskJournal(tmp_path / "state" / "t.jsonl").records() == [record, {"task_id": "t", "n": 2}]


def test_project_jsonl_readers_split_on_newline_only(tmp_path):
    from densepolicy.results_io import split_jsonl as project_split
    from densepolicy.training.train import _dataset_records
    records = [{"conversations": [{"from": "human", "value": "x\u2028y"}], "chosen": {"from": "gpt", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"}}, {"conversations": [], "chosen": {}, "rejected": {}}]
    data = tmp_path / "data"
    data.mkdir()
    # written by another tool that keeps U+2028 raw (valid JSON): still two records, not three
    (data / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    (data / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.jsonl"}}))
    assert _dataset_records("d", data) == records
    assert project_split('{"a": "x\u2028y"}\n{"b": 1}\n') == ['{"a": "x\u2028y"}', '{"b": 1}', ""]


# -- 2. disk full --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("after", [0, 1, 2, 6])  # the shard lock's temp file, provenance.json's lock, provenance.json,
#                                                  a resume-journal line
def test_worker_on_a_full_disk_names_the_file_exits_5_and_resumes(fake_server, reference, tmp_path, after):
    server = fake_server(fakes.scripted_reply)
    out = tmp_path / "run"
    proc = failing(command(server.base_url, out), tmp_path, after)
    assert proc.returncode == 5, proc.stderr
    line = error_line(proc)                                                 # one line, no traceback
    assert str(out) in line and "No space left on device" in line
    assert "free disk space" in line and "rerun the same command to resume" in line
    assert temp_files(tmp_path) == [] and not (out / f"{SHARD}.csv.lock").exists()
    resumed = run(command(server.base_url, out))
    assert resumed.returncode == 0, resumed.stderr
    assert comparable_rows(out) == comparable_rows(reference)
    assert tree_lines(out) == tree_lines(reference)
    assert temp_files(tmp_path) == []


def test_worker_on_a_read_only_file_system_says_so(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    proc = failing(command(server.base_url, tmp_path / "run"), tmp_path, 3, "EROFS")
    assert proc.returncode == 5
    line = error_line(proc)
    assert "read-only" in line and "rerun the same command to resume" in line and str(tmp_path / "run") in line


def _placement(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("after", [0, 1, 2, 3, 4])  # merge lock, shard lock, provenance.json's lock and file, merged CSV
def test_merge_on_a_full_disk_moves_nothing_and_names_the_file(reference, tmp_path, after):
    out = copy_run(reference, tmp_path)
    before = _placement(out)
    proc = failing(merge_cmd(out), out, after)
    assert proc.returncode == 5, proc.stderr
    line = error_line(proc)
    assert str(out) in line and "free disk space" in line and "rerun" in line
    assert _placement(out) == before                                        # nothing moved, nothing left behind
    assert not (out / "gsm8k.train.None.csv").exists()
    done = run(merge_cmd(out))
    assert done.returncode == 0, done.stderr
    assert (out / "distributed_result" / f"{SHARD}.csv").is_file() and (out / "gsm8k.train.None.csv").is_file()


# -- 3. tree dump and shard CSV are checked against each other ---------------------------------------------

def test_worker_reruns_a_task_whose_tree_dump_lost_its_last_line(fake_server, reference, tmp_path):
    out = copy_run(reference, tmp_path)
    tree = out / TREE
    data = tree.read_bytes()
    tree.write_bytes(data[:-10])                                            # the last tree line cut, CSV intact
    server = fake_server(fakes.scripted_reply)
    proc = run(command(server.base_url, out, "--log_level", "INFO"))
    assert proc.returncode == 0, proc.stderr
    assert "running the task again" in proc.stderr and "done: 1 task(s) run" in proc.stdout
    assert comparable_rows(out) == comparable_rows(reference)              # one row per task, as before
    assert tree_lines(out) == tree_lines(reference)                        # the lost node is back
    assert node_counts(tree) == {r["task_id"]: int(r["nodes"]) for r in rows(out)}


@pytest.mark.parametrize("damage", ["line_removed", "zero_bytes"])
def test_merge_refuses_a_tree_dump_that_does_not_match_the_csv(reference, tmp_path, damage):
    out = copy_run(reference, tmp_path)
    tree = out / TREE
    if damage == "zero_bytes":
        tree.write_bytes(b"")
    else:
        lines = tree.read_bytes().split(b"\n")
        tree.write_bytes(b"\n".join(lines[:-2] + [b""]))                   # a whole valid line gone
    before = _placement(out)
    proc = run(merge_cmd(out))
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"{out / (SHARD + '.csv')}:" in line and "tree node(s)" in line and str(tree) in line
    assert _placement(out) == before


# -- 4. prepare_dataset.py --name and concurrent runs ----------------------------------------------------------

@pytest.mark.parametrize("name", ["../escaped", "sub/inner", "..", "a\\b"])
def test_prepare_dataset_rejects_names_that_are_paths(tmp_path, name):
    pairs = _pairs_file(tmp_path / "p.pairs.csv", "header_only")
    data = tmp_path / "data"
    proc = run([sys.executable, str(PROJECT_ROOT / "prepare_dataset.py"), "--pairs", str(pairs), "--output_dir",
                str(data), "--name", name, "--allow_empty"])
    assert proc.returncode == 2
    assert "--name" in error_line(proc)
    assert not (tmp_path / "escaped.json").exists() and not (data / "sub").exists()
    assert not (data / "dataset_info.json").exists()


def test_prepare_dataset_is_refused_while_another_run_writes_the_registry(tmp_path):
    pairs = _pairs_file(tmp_path / "p.pairs.csv", "header_only")
    data = tmp_path / "data"
    cmd = [sys.executable, str(PROJECT_ROOT / "prepare_dataset.py"), "--pairs", str(pairs), "--output_dir", str(data),
           "--name", "same", "--allow_empty"]
    with OutputLock(lock_path(data / "dataset_info.json"), "prepare_dataset.py"):  # the other run
        proc = run(cmd)
        assert proc.returncode == 4
        assert f"pid {os.getpid()}" in error_line(proc)
        assert not (data / "same.json").exists() and not (data / "dataset_info.json").exists()
    done = run(cmd)                                                         # after it: runs normally
    assert done.returncode == 0, done.stderr
    assert "same" in json.loads((data / "dataset_info.json").read_text())
    second = run(cmd)                                                       # and never replaces it silently
    assert second.returncode == 2 and "already exists" in error_line(second)


# -- 5. damaged side files --------------------------------------------------------------------------------------

def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:20] + b"\xff\xfe" + data[20:] if how == "non_utf8" else data[: len(data) // 2])


@pytest.mark.parametrize("how", ["non_utf8", "truncated"])
def test_a_damaged_provenance_json_is_one_line_for_worker_and_merge(fake_server, reference, tmp_path, how):
    out = copy_run(reference, tmp_path)
    prov = out / "provenance.json"
    _damage(prov, how)
    server = fake_server(fakes.scripted_reply)
    worker = run(command(server.base_url, out))
    assert worker.returncode == 2
    assert str(prov) in error_line(worker)
    before = _placement(out)
    merge = run(merge_cmd(out))
    assert merge.returncode == 2
    assert str(prov) in error_line(merge)
    assert _placement(out) == before                                        # checked before anything moved


@pytest.mark.parametrize("how", ["non_utf8", "truncated"])
def test_a_damaged_settings_record_stops_the_merge_before_anything_moves(reference, tmp_path, how):
    out = copy_run(reference, tmp_path)
    settings = out / f"{SHARD}.settings.json"
    _damage(settings, how)
    before = _placement(out)
    merge = run(merge_cmd(out))
    assert merge.returncode == 2
    assert str(settings) in error_line(merge)
    assert _placement(out) == before


# -- 6. shared clusters: permissions, signals, the merge's listing ------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_writes_get_the_users_umask_permissions(reference, tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        write_csv_atomic(tmp_path / "b.csv", ["x"], [{"x": 1}])
        with atomic_open(tmp_path / "c.txt", "w", encoding="utf-8") as fh:
            fh.write("c")
        out = copy_run(reference, tmp_path)
        merge_module.merge_distributed(out, "gsm8k.train.{}.csv", show_progress=False)
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "b.csv", tmp_path / "c.txt", out / "gsm8k.train.None.csv",
                 out / "trees" / "gsm8k.train.None.jsonl"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_sigterm_releases_the_shard_lock_with_one_line(fake_server, tmp_path):
    gate = threading.Event()
    server = fake_server(gated_reply(gate))
    out = tmp_path / "run"
    proc = start(command(server.base_url, out))
    try:
        wait_for(lambda: len(server.requests) > 0 or proc.poll() is not None)
        assert (out / f"{SHARD}.csv.lock").exists()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        gate.set()
    assert proc.returncode == 143
    line = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert "SIGTERM" in line and "rerun the same command to resume" in line
    assert not (out / f"{SHARD}.csv.lock").exists()                          # another host may start at once


def test_sigterm_inside_the_event_loop_cancels_every_task_and_cleans_up_in_the_running_loop():
    """The CI failure of 2026-12-04: SIGTERM turned into an exception by a plain handler inside one task's
    step escaped `asyncio.run` with the other tasks still pending; their clean-up then ran in a closed
    loop (or never) and Python printed a traceback after the one-line message (5 of 25 workers stopped at
    random moments; this test: 2 of 4 clean-ups skipped). `cancel_on_signals` lets the loop take the
    signal and cancel the task, so every `finally` runs with the loop alive."""
    from densepolicy.file_lock import Terminated, cancel_on_signals, terminate_on_signals
    cleaned = []

    async def child(i: int) -> None:
        try:
            await asyncio.sleep(0.05)
            if i == 0:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of this task's step
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)  # an await in clean-up needs a running loop
            cleaned.append(i)

    async def body() -> None:
        children = [asyncio.ensure_future(child(i)) for i in range(3)]
        try:
            await asyncio.gather(*children)
        except BaseException:
            for c in children:
                c.cancel()
            await asyncio.gather(*children, return_exceptions=True)
            raise
        finally:
            await asyncio.sleep(0)
            cleaned.append("body")

    with terminate_on_signals():
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(Terminated) as info:
            asyncio.run(cancel_on_signals(body()))
        assert signal.getsignal(signal.SIGTERM) is handler  # the outer handler is back, not SIG_DFL
    assert info.value.code == 143 and sorted(map(str, cleaned)) == ["0", "1", "2", "body"]


def test_the_merge_lists_the_shards_with_its_lock_held(reference, tmp_path, monkeypatch):
    out = copy_run(reference, tmp_path)
    listed_under_lock = []
    real = merge_module.find_shards

    def spy(data_dir, template):
        listed_under_lock.append(lock_path(out / "gsm8k.train.None.csv").exists())
        return real(data_dir, template)

    monkeypatch.setattr(merge_module, "find_shards", spy)
    merge_module.merge_distributed(out, "gsm8k.train.{}.csv", show_progress=False)
    assert listed_under_lock == [True]


def test_sigterm_during_a_merge_releases_its_locks_and_moves_nothing(reference, tmp_path):
    out = copy_run(reference, tmp_path)
    before = _placement(out)
    script = PROJECT_ROOT / "post_process_test_result.py"
    code = (
        "import os, runpy, signal, sys, time\n"
        "from densepolicy.postprocess import merge\n"
        "def stopped(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(60)\n"
        "merge._merge_shards = stopped  # SIGTERM arrives with every lock held\n"
        f"sys.argv = [{str(script)!r}, '--merge_distributed_result', '--data_dir', {str(out)!r},\n"
        "            '--dataset_file_name_list', 'gsm8k.train.{}.csv']\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    proc = run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 143
    assert "SIGTERM" in error_line(proc)
    assert _placement(out) == before                                        # no lock file left, nothing moved
