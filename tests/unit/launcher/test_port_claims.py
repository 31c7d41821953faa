"""Slurm array tasks sharing a node never pick the same server port (densepolicy/launcher/servers.py
`claim_free_port`, used by densepolicy/launcher/slurm_task.py)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from densepolicy.launcher import servers, slurm_task
from densepolicy.launcher.registry import Slot
from densepolicy.launcher.servers import NoFreePort, claim_free_port, find_free_ports
from densepolicy.paths import PROJECT_ROOT


@pytest.fixture(autouse=True)
def lock_dir(tmp_path, monkeypatch):
    folder = tmp_path / "port-claims"
    monkeypatch.setenv(servers.PORT_LOCK_ENV, str(folder))
    monkeypatch.setattr(slurm_task, "_PORT_CLAIMS", [])
    return folder


def free_base() -> int:
    """A start port with free ports after it (from a range away from the launcher's defaults)."""
    return find_free_ports(32000 + 4 * (os.getpid() % 2000), 1)[0]


def test_a_claimed_port_is_skipped_until_its_claim_is_released():
    base = free_base()
    first = claim_free_port(base)
    second = claim_free_port(base)
    assert first.port == base and second.port != first.port
    first.release()
    assert claim_free_port(base).port == base


def test_a_claim_holds_across_processes_and_ends_with_its_process(lock_dir):
    base = free_base()
    code = ("import sys; from densepolicy.launcher.servers import claim_free_port; c = claim_free_port(int(sys.argv[1])); "
            "print(c.port, flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(base)], cwd=PROJECT_ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert int(holder.stdout.readline()) == base
        assert claim_free_port(base).port != base  # the other process holds it (its server is still starting)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert claim_free_port(base).port == base  # released by the OS when the holder ended


def test_busy_ports_and_the_end_of_the_range():
    base = free_base()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        assert claim_free_port(base).port == base + 1
        with pytest.raises(NoFreePort, match="base_port"):
            claim_free_port(base, span=0)


def _plan(tmp_path, base: int) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    return {"base_port": base, "gpus_per_task": 0, "serving_overrides": ["device=cpu"], "model": str(model)}


def test_array_tasks_on_one_node_get_different_ports_while_their_servers_start(tmp_path, monkeypatch):
    """Task 1 starts at base+1, task 2 at base+2. With base+1 taken by another program, task 1 moves on to base+2,
    which task 2's server has not bound yet: the old bind test gave both base+2."""
    base = free_base()
    plan = _plan(tmp_path, base)
    slot = Slot(role="server", index=0, session="s", log=str(tmp_path / "server.log"), status=str(tmp_path / "st"))
    urls = []
    with socket.socket() as other:
        other.bind(("127.0.0.1", base + 1))
        other.listen()
        for task_id in ("2", "1"):
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task_id)
            argv, env, url = slurm_task.server_command(plan, slot)
            assert argv[argv.index("--port") + 1] == url.rsplit(":", 1)[1].split("/")[0]
            urls.append(url)
    assert len(set(urls)) == 2, urls
    assert len(slurm_task._PORT_CLAIMS) == 2  # held for the task's lifetime
