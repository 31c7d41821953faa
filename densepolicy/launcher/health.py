"""Wait until servers answer, failing early (with the log tail) when one of them dies."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from densepolicy.launcher.files import tail_lines
from densepolicy.serving.server import is_healthy


class ServerStartError(RuntimeError):
    """A server exited or did not become healthy in time; the message ends with its log tail."""


@dataclass
class PendingServer:
    """A server to wait for: its OpenAI base URL, its log, and a probe telling whether it still runs."""

    name: str
    url: str
    log: str | None = None
    is_running: Callable[[], bool] = lambda: True


def wait_all_healthy(servers: list[PendingServer], timeout: float, poll_s: float = 1.0,
                     progress: Callable[[str], None] = print, report_every_s: float = 15.0) -> None:
    """Block until every server is healthy; raise `ServerStartError` on death or time-out.

    All servers are polled together, so they start in parallel and the wait is as long as the slowest.
    """
    pending = list(servers)
    deadline = time.time() + timeout
    started = last_report = time.time()
    while pending:
        for server in list(pending):
            if is_healthy(server.url):
                pending.remove(server)
                progress(f"{server.name} healthy at {server.url} after {time.time() - started:.0f} s")
            elif not server.is_running():
                raise ServerStartError(_failure(server, "exited before becoming healthy"))
        if not pending:
            return
        if time.time() - last_report >= report_every_s:
            last_report = time.time()
            progress(f"waiting for {', '.join(s.name for s in pending)} to become healthy "
                     f"({time.time() - started:.0f} s of {timeout:.0f} s; logs: {', '.join(str(s.log) for s in pending)})")
        if time.time() > deadline:
            raise ServerStartError(_failure(pending[0], f"not healthy after {timeout:.0f} s "
                                                        f"(server_start_timeout_s)"))
        time.sleep(poll_s)


def _failure(server: PendingServer, what: str) -> str:
    tail = tail_lines(server.log, 25) if server.log else []
    log_part = f"\n--- last lines of {server.log} ---\n" + "\n".join(tail) if tail else ""
    return f"server {server.name} ({server.url}) {what}{log_part}"
