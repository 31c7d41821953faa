"""A throw-away single-node Slurm cluster for tests (Debian's slurm-wlm + munge), all state in a temp dir.

`start_local_slurm(tmp)` installs the packages with apt-get when they are missing (root only),
starts munged (own key and socket), slurmctld and slurmd in the foreground as child processes with a
minimal slurm.conf (`SLURM_CONF`), and waits for the node to be idle. `LocalSlurm.stop()` cancels
remaining jobs and stops the three daemons by their PIDs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


class SlurmUnavailable(RuntimeError):
    """Slurm could not be installed or started here; the message says which step failed."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.exists()), None)


def ensure_packages() -> None:
    """apt-get install slurm-wlm munge unless every binary is already there."""
    if all(_which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurm-wlm/munge are not installed and installing them needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {out.stderr.strip()[-500:]}")


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
    """Install if needed, configure under `root`, start the daemons, wait for an idle node."""
    ensure_packages()
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
