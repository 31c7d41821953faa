"""Run one command under supervision: output to the terminal *and* a log file, exit code to a status file.

    python -m densepolicy.launcher.supervise --log L --status S [--env K=V ...] -- ARGV...

This is the process a launcher tmux session (or Slurm array task) runs. The command gets its own
process group, so SIGTERM/SIGINT/SIGHUP to the supervisor (e.g. `tmux kill-session`) reach every
process it started (vLLM spawns engine processes); after `--grace` seconds they are SIGKILLed.
The status file (JSON) holds `pid`, `pgid`, `started`, and once the command ends `exit_code`
(negative = killed by that signal) and `ended`. It is what `distributed_test.sh status` reads.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from densepolicy.results_io import write_json_atomic


def kill_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it if still there after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` exists (zombies of our own children excluded)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(…, 0) also succeeds for zombies; check the members' states via /proc when possible.
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _pump(stream, log, out) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        log.write(chunk)
        log.flush()
        try:
            out.write(chunk)
            out.flush()
        except (OSError, ValueError):  # terminal gone (tmux session killed); keep logging
            pass


def supervise(argv: list[str], log_path: Path, status_path: Path, env: dict[str, str], grace: float) -> int:
    """Run `argv`, tee its output to `log_path`, record its exit code in `status_path`; return it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    status_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **env},
                                     start_new_session=True)
        except OSError as exc:
            log.write(f"cannot start {argv[0]}: {exc}\n".encode())
            write_json_atomic(status_path, {"pid": None, "pgid": None, "started": time.time(),
                                       "exit_code": 127, "ended": time.time(), "argv": argv})
            return 127
        status = {"pid": child.pid, "pgid": child.pid, "supervisor_pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.time(), "exit_code": None, "argv": argv}
        write_json_atomic(status_path, status)

        def forward(signum, _frame) -> None:
            threading.Thread(target=kill_group, args=(child.pid, grace), daemon=True).start()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        pump = threading.Thread(target=_pump, args=(child.stdout, log, sys.stdout.buffer), daemon=True)
        pump.start()
        code = child.wait()
        pump.join(timeout=5)
        # Whatever the command left behind in its group (e.g. vLLM engine processes) goes too.
        if group_alive(child.pid):
            kill_group(child.pid, grace)
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} exit code {code}\n".encode())
    write_json_atomic(status_path, {**status, "exit_code": code, "ended": time.time()})
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, type=Path, help="log file (appended)")
    parser.add_argument("--status", required=True, type=Path, help="JSON status file (replaced)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE added to the environment")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- ARGV...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    env = dict(item.split("=", 1) for item in args.env)
    code = supervise(command, args.log, args.status, env, args.grace)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
