"""Running `sample_tree.py` and the merge as real subprocesses against the scripted fake server, on the scripted
math env of `tests.harness.fakes` (the shared harness of the worker tests: no silent loss, odd inputs, resume).

    proc = run(command(server.base_url, tmp_path / "run", "max_tasks=1"))
    assert proc.returncode == 0 and len(rows(tmp_path / "run")) == 1
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from densepolicy.paths import PROJECT_ROOT
from tests.harness import fakes

SCRIPTED_ENV_ARGS = ["env=tests.harness.fakes:ScriptedMathEnv", "context_length=100000", "progress=false"]
"""Any method on the scripted math env, without a tokenizer limit or progress bars."""
ARGS = [*SCRIPTED_ENV_ARGS, "in_context_number=0", "base=3", "max_steps=4", "window_size=4", "max_sample_number=8",
        "max_tasks=2", "task_concurrency=2", "backoff_s=0.05"]
"""A small tree per task (later `key=value` items override these)."""
SHARD = "gsm8k.train.0"
USER = [{"role": "user", "content": "2+3?"}]


def command(server_url: str, out: Path, *extra: str, model: str = "fake",
            args: list[str] = ARGS) -> list[str]:
    """`sample_tree.py codeact_agent_tree gsm8k` on shard 0 of 1 with `args` (default ARGS), then `extra`."""
    return [sys.executable, str(PROJECT_ROOT / "sample_tree.py"), "codeact_agent_tree", "gsm8k", "--shard", "0",
            "--num_shards", "1", "--server_url", server_url, "--model", model, "--output_dir", str(out),
            *args, *extra]


def run(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=PROJECT_ROOT, timeout=timeout, capture_output=True, text=True, **kwargs)


def start(cmd: list[str]) -> subprocess.Popen:
    """`cmd` started in the project root, its output captured as text (for tests that act while it runs)."""
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints (no traceback, no second line; progress bars and logged
    warnings aside)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not re.search(r"\[\d\d:\d\d", line)
             and not re.match(r"\d{4}-\d\d-\d\d [\d:,]+ (WARNING|INFO) ", line)]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def rows(out: Path) -> list[dict[str, str]]:
    with (out / f"{SHARD}.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def gated_reply(gate: threading.Event):
    """A responder that holds every request until `gate` is set (keeps a worker busy on demand)."""
    def reply(messages, request):
        gate.wait(120)
        return fakes.scripted_reply(messages, request)
    return reply


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def merge_cmd(run_dir: Path, template: str = "gsm8k.train.{}.csv") -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "post_process_test_result.py"), "--merge_distributed_result",
            "--data_dir", str(run_dir), "--dataset_file_name_list", template]


def pairs_file(path: Path, kind: str) -> Path:
    from densepolicy.postprocess.pairs import PAIR_COLUMNS
    if kind == "zero_bytes":
        path.write_bytes(b"")
        return path
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PAIR_COLUMNS)
        writer.writeheader()
        if kind == "unselected":
            writer.writerow({"task_id": "0", "dataset": "math", "prompt": json.dumps(USER), "chosen": "a",
                             "rejected": "b", "chosen_node": "0", "rejected_node": "1", "chosen_value": 1,
                             "rejected_value": 0, "chosen_visits": 1, "rejected_visits": 1, "depth": 1,
                             "selected": False})
    return path
