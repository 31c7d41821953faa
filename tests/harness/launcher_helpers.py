"""Helpers shared by the launcher tests: run distributed_test.sh, isolate tmux/state, wait for sessions."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import libtmux

from densepolicy.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "distributed_test.sh"
STUB = "tests/harness/launcher_stub_worker.py"


class Launcher:
    """`./distributed_test.sh` with a test-only tmux socket and state dir appended to every call."""

    def __init__(self, tmp_path: Path, socket: str):
        self.socket = socket
        self.state_dir = tmp_path / "launcher_state"
        self.common = [f"tmux_socket={socket}", f"state_dir={self.state_dir}"]

    def __call__(self, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *args, *self.common], capture_output=True, text=True,
                              timeout=timeout, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})

    def sessions(self) -> set[str]:
        server = libtmux.Server(socket_name=self.socket)
        try:
            return {s.session_name for s in server.sessions} if server.is_alive() else set()
        except Exception:  # noqa: BLE001 - libtmux: various errors once the server is gone
            return set()

    def wait_sessions_gone(self, names: set[str], timeout: float) -> None:
        deadline = time.time() + timeout
        while names & self.sessions():
            assert time.time() < deadline, f"sessions still running after {timeout} s: {names & self.sessions()}"
            time.sleep(0.5)

    def kill_everything(self) -> None:
        """Test clean-up: stop every run of this socket, then the tmux server itself."""
        self("stop", timeout=180)
        server = libtmux.Server(socket_name=self.socket)
        try:
            if server.is_alive():
                server.kill()
        except Exception:  # noqa: BLE001 - libtmux: various errors once the server is gone
            pass


def read_shard_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
