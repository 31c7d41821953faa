"""sample_tree.py killed with SIGKILL at random moments resumes to exactly the uninterrupted result;
server faults are retried; a server that stays down ends the run resumably (fake server, subprocesses)."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from densepolicy.paths import PROJECT_ROOT
from densepolicy.results_io import split_jsonl
from tests.harness import fakes, worker_runs

ARGS = [*worker_runs.ARGS, "max_tasks=6", "max_retries=2"]


def command(server_url: str, out: Path, *extra: str) -> list[str]:
    return worker_runs.command(server_url, out, *extra, args=ARGS)


def outputs(out: Path) -> tuple[list[str], list[str]]:
    with (out / "gsm8k.train.0.csv").open(newline="") as fh:
        rows = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(fh)]
    for row in rows:  # a resumed task rebuilds journaled episodes by replay: the only expected difference
        extra = json.loads(row["extra"])
        extra.pop("replays"), extra.pop("replay_mismatches")
        row["extra"] = extra
    dump = [line for line in split_jsonl((out / "trees" / "gsm8k.train.0.jsonl").read_text()) if line]
    return {r["task_id"]: r for r in rows}, sorted(dump)


def test_sigkill_at_random_moments_then_resume_gives_identical_outputs(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply, latency_s=0.02)
    reference = tmp_path / "reference"
    subprocess.run(command(server.base_url, reference), check=True, cwd=PROJECT_ROOT, timeout=300)
    ref_rows, ref_dump = outputs(reference)
    assert len(ref_rows) == 6

    out = tmp_path / "killed"
    rng = random.Random(7)
    kills_mid_task = 0
    for _ in range(5):
        proc = subprocess.Popen(command(server.base_url, out), cwd=PROJECT_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        state = out / "state" / "gsm8k.train.0"
        def journal_bytes(state: Path = state) -> int:
            return sum(p.stat().st_size for p in state.glob("*.jsonl"))

        before = journal_bytes()
        deadline = time.monotonic() + 120
        while proc.poll() is None and journal_bytes() == before and time.monotonic() < deadline:
            time.sleep(0.02)  # wait until this run journals nodes (start-up time varies with machine load)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills_mid_task += journal_bytes() > before
    assert kills_mid_task >= 2, "the kills should interrupt tasks in progress"
    requests_before = len(server.requests)
    done = subprocess.run(command(server.base_url, out), cwd=PROJECT_ROOT, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows, dump = outputs(out)
    with (out / "gsm8k.train.0.csv").open() as fh:
        assert sum(1 for _ in fh) == 1 + 6                                    # no duplicate rows
    assert dump == ref_dump
    for task_id, row in rows.items():
        ref = ref_rows[task_id]
        assert {k: (row[k], ref[k]) for k in row if row[k] != ref[k]} == {}
    # the journal let the last run skip the nodes finished before the kills
    assert len(server.requests) - requests_before < len(ref_dump)
    assert not list((out / "state" / "gsm8k.train.0").glob("*.jsonl"))


def test_server_faults_are_retried_with_identical_results(fake_server, tmp_path):
    clean = fake_server(fakes.scripted_reply)
    subprocess.run(command(clean.base_url, tmp_path / "clean", "max_tasks=2"), check=True, cwd=PROJECT_ROOT, timeout=300)
    faulty = fake_server(fakes.scripted_reply, fail_plan={1: "500", 5: "drop", 9: "500", 10: "500"})
    subprocess.run(command(faulty.base_url, tmp_path / "faulty", "max_tasks=2"), check=True, cwd=PROJECT_ROOT, timeout=300)
    assert outputs(tmp_path / "faulty") == outputs(tmp_path / "clean")
    assert len(faulty.requests) == len(clean.requests) + 4      # each failed request was retried once


def test_server_that_stays_down_ends_with_a_clear_error_and_resumes(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    url = server.base_url
    server.stop()  # connection refused from now on
    out = tmp_path / "run"
    failed = subprocess.run(command(url, out, "max_tasks=2"), cwd=PROJECT_ROOT, timeout=300, capture_output=True, text=True)
    assert failed.returncode == 3
    assert "not answering" in failed.stderr and "rerun the same command to resume" in failed.stderr
    alive = fake_server(fakes.scripted_reply)
    ok = subprocess.run(command(alive.base_url, out, "max_tasks=2"), cwd=PROJECT_ROOT, timeout=300,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert len(outputs(out)[0]) == 2
