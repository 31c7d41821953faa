"""A throw-away single-node Slurm cluster for tests (Debian's slurm-wlm + munge), all state in a temp dir.

The packages are installed by `make setup-slurm` (scripts/setup_slurm.sh, run by `make test`), never here.
`start_local_slurm(tmp)` raises `SlurmNotInstalled` when a binary is missing, then starts munged (own key and
socket), slurmctld and slurmd in the foreground as child processes with a minimal slurm.conf (`SLURM_CONF`),
and waits for the node to be idle. `LocalSlurm.stop()` cancels remaining jobs and stops the three daemons by their PIDs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "srun")
# Set by `make test` as root, where `make setup-slurm` has installed Slurm: a missing binary then fails.
REQUIRE_ENV = "DENSEPOLICY_REQUIRE_SLURM"


class SlurmUnavailable(RuntimeError):
    """Slurm could not be started here; the message says which step failed."""


class SlurmNotInstalled(SlurmUnavailable):
    """slurm-wlm/munge are not installed: `make setup-slurm` (root) installs them."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.exists()), None)


def check_installed() -> None:
    """Raise `SlurmNotInstalled` unless every binary is there (this module installs nothing)."""
    missing = [d for d in DAEMONS if not _which(d)]
    if missing:
        raise SlurmNotInstalled(f"slurm-wlm/munge are not installed (missing {', '.join(missing)}): "
                                "run `make setup-slurm` as root")


def start_or_skip(root: Path) -> LocalSlurm:
    """`start_local_slurm(root)` for a test fixture: skips when Slurm is not installed (fails instead when
    $DENSEPOLICY_REQUIRE_SLURM=1, as in `make test` run by root), fails when it is installed but does not start."""
    import pytest

    try:
        return start_local_slurm(root)
    except SlurmNotInstalled as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{exc} ({REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(str(exc))
    except SlurmUnavailable as exc:
        pytest.fail(f"could not start a local Slurm: {exc}", pytrace=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalSlurm:
    """A running single-node cluster; `env` holds SLURM_CONF for client commands."""

    root: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60)

    def stop(self) -> None:
        self.run("scancel", "--full", "--user", os.environ.get("USER", "root"))
        for proc in reversed(self.procs):  # slurmd, slurmctld, munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def start_local_slurm(root: Path) -> LocalSlurm:
    """Check the binaries, configure under `root`, start the daemons, wait for an idle node."""
    check_installed()
    host = socket.gethostname()
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = root / "munge" / "munge.sock"
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=dptest", f"SlurmctldHost={host}", "SlurmUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={sock}", "CredType=cred/munge", "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none", "SchedulerType=sched/backfill", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={max(1024, mem_mb - 1024)} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    cluster = LocalSlurm(root, {"SLURM_CONF": str(conf)})
    logs = root / "log"
    starts = [
        [_which("munged"), "-F", "--force", f"--key-file={key}", f"--socket={sock}",
         f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}",
         f"--log-file={logs / 'munged.log'}"],
        [_which("slurmctld"), "-D", "-f", str(conf)],
        [_which("slurmd"), "-D", "-f", str(conf)],
    ]
    try:
        for argv in starts:
            out = open(logs / f"{Path(argv[0]).name}.out", "w")
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **cluster.env})
            cluster.procs.append(proc)
            time.sleep(1.0)
            if proc.poll() is not None:
                raise SlurmUnavailable(f"{argv[0]} exited: {(logs / f'{Path(argv[0]).name}.out').read_text()[-800:]}")
        deadline = time.time() + 60
        while True:
            state = cluster.run("sinfo", "-h", "-o", "%T").stdout.strip()
            if state == "idle":
                return cluster
            if time.time() > deadline:
                raise SlurmUnavailable(f"node not idle after 60 s (sinfo: {state!r}); see {logs}")
            time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise
