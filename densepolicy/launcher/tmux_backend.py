"""Run supervised processes in tmux sessions on this machine (via libtmux), and stop them cleanly."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import time
from pathlib import Path

from densepolicy.launcher.files import read_json
from densepolicy.launcher.registry import Slot
from densepolicy.launcher.supervise import group_alive, kill_group


class TmuxMissing(RuntimeError):
    """The tmux binary is not installed."""


def tmux_server(socket_name: str):
    """The libtmux server on our dedicated socket (`tmux -L socket_name`)."""
    if shutil.which("tmux") is None:
        raise TmuxMissing("tmux is not installed (Debian/Ubuntu: apt-get install tmux; or run `make setup`)")
    import libtmux

    return libtmux.Server(socket_name=socket_name)


def alive_sessions(server) -> set[str]:
    """Names of the sessions on this socket (empty when its tmux server is not running)."""
    try:
        if not server.is_alive():
            return set()
        return {s.session_name for s in server.sessions}
    except Exception:  # noqa: BLE001 - libtmux raises various errors when the server vanished meanwhile
        return set()


def start_session(server, name: str, argv: list[str], cwd: Path) -> None:
    """Start `argv` as the only process of a new detached session `name`."""
    server.new_session(session_name=name, window_name=name, window_command=shlex.join(argv),
                       start_directory=str(cwd), attach=False, x=200, y=50)


def supervised_alive(slot: Slot) -> bool:
    """True while the supervisor (or the command it started) of `slot` still runs."""
    status = read_json(slot.status)
    if not status or status.get("exit_code") is not None:
        return False
    if status.get("host") not in (None, socket.gethostname()):
        return False  # another machine (Slurm); its state comes from the scheduler
    for key in ("supervisor_pid", "pid"):
        pid = status.get(key)
        if pid and _pid_runs(pid, status):
            return True
    return False


def _pid_runs(pid: int, status: dict) -> bool:
    """`pid` exists and still is the process we started (guards against pid reuse)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    argv = status.get("argv") or []
    text = b" ".join(cmdline).decode(errors="replace")
    return any(a in text for a in argv[-3:]) if argv else True


def stop_slots(server, slots: list[Slot], grace: float, progress=print) -> list[str]:
    """Stop the given slots (SIGTERM to each supervisor, SIGKILL after `grace`), then kill their sessions.

    Returns the names of the sessions that were running. Processes whose session is already gone but
    that still run (e.g. a killed supervisor's command) are killed through the status file's process group.
    """
    names = alive_sessions(server)
    stopped = []
    for slot in slots:
        status = read_json(slot.status)
        if slot.session in names:
            stopped.append(slot.session)
            pid = status.get("supervisor_pid") if status.get("exit_code") is None else None
            if pid and _pid_runs(pid, status):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
    deadline = time.time() + grace + 5
    while time.time() < deadline and any(s.session in alive_sessions(server) for s in slots):
        time.sleep(0.3)
    for slot in slots:
        if slot.session in alive_sessions(server):
            try:
                server.kill_session(slot.session)
            except Exception:  # noqa: BLE001 - the session ended meanwhile (libtmux: various errors)
                pass
        status = read_json(slot.status)
        pgid = status.get("pgid")
        if pgid and status.get("exit_code") is None and _pid_runs(pgid, status) and group_alive(pgid):
            progress(f"killing leftover processes of {slot.session} (process group {pgid})")
            kill_group(pgid, grace)
    return stopped


def kill_server_if_empty(server) -> None:
    """Shut the tmux server of our socket down once it has no sessions left."""
    try:
        if server.is_alive() and not server.sessions:
            server.kill()
    except Exception:  # noqa: BLE001 - the server ended meanwhile (libtmux: various errors)
        pass
