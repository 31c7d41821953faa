"""How `llamafactory-cli train` is launched: one process, or torchrun over the visible GPUs.

LLaMA-Factory starts torchrun itself only when it sees more than one GPU; DeepSpeed on one GPU needs
``FORCE_TORCHRUN=1`` or it stops with "Please use FORCE_TORCHRUN=1 to launch DeepSpeed training".
`distributed_env` sets what LLaMA-Factory's launcher reads whenever the run is distributed (a
``deepspeed`` config, or more than one GPU visible):

    FORCE_TORCHRUN=1  NNODES  NODE_RANK  NPROC_PER_NODE  MASTER_ADDR  MASTER_PORT

Values already in the environment win (that is how a multi-node job passes them); otherwise one node,
one process per visible GPU ($CUDA_VISIBLE_DEVICES, else nvidia-smi) and a free port.

Several nodes (`node_placement`): one ``TreeDPO/train.py`` per node, each starting torchrun for its own GPUs.
The node count and this node's rank come from NNODES / NODE_RANK, or, inside a Slurm step (``srun``), from
SLURM_STEP_NUM_TASKS / SLURM_PROCID (one task per node: SLURM_NNODES / SLURM_NODEID), with MASTER_ADDR the first
host of SLURM_STEP_NODELIST. A multi-node run without a rank is refused; nothing defaults to rank 0.
Before torchrun starts, the nodes meet in `NodeGroup` (a TCPStore that node 0 hosts at MASTER_ADDR:MASTER_PORT):
every node sends a fingerprint of its effective arguments and node 0 refuses the run when they differ; only
node 0 then checks and writes the output directory, and it hands every node the port torchrun will use.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from densepolicy.config import ConfigError, flat_keys
from densepolicy.gpus import detect_gpus
from densepolicy.provenance.hashing import digest

TORCHRUN_KEYS = ("FORCE_TORCHRUN", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT")
NODE_TIMEOUT_ENV = "DENSEPOLICY_NODE_TIMEOUT"
"""Seconds the nodes of a multi-node run wait for each other before torchrun starts (default 1800)."""
DEFAULT_NODE_TIMEOUT_S = 1800.0


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """GPU ids this run may use: $CUDA_VISIBLE_DEVICES when set (empty or -1: none), else nvidia-smi."""
    return detect_gpus("auto", dict(os.environ if environ is None else environ))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class NodePlacement:
    """Where this process sits in a (possibly) multi-node run."""

    nnodes: int
    node_rank: int
    master_addr: str | None
    master_port: str | None
    source: str
    """Where the values came from: 'environment', 'Slurm step' or 'single node'."""


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[07-09,12],cpu1`` -> ``gpu07`` (what ``scontrol show
    hostnames`` prints first)."""
    depth, item = 0, ""
    for ch in nodelist.strip():
        if ch == "," and depth == 0:
            break
        depth += (ch == "[") - (ch == "]")
        item += ch
    match = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", item)
    if not match:
        return item
    prefix, ranges, suffix = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def node_placement(environ: Mapping[str, str] | None = None) -> NodePlacement:
    """This node's rank, the node count and the rendezvous address of a training run.

    NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT in the environment win. Without NNODES, inside a Slurm step
    (``srun``: SLURM_STEP_ID is set) of more than one task, each task is a node: SLURM_STEP_NUM_TASKS nodes,
    rank SLURM_PROCID, MASTER_ADDR the first host of SLURM_STEP_NODELIST (SLURM_JOB_NODELIST), MASTER_PORT
    derived from SLURM_JOB_ID when unset. Raises `ConfigError` for a multi-node run without NODE_RANK (no
    silent rank 0), a rank out of range, NODE_RANK without NNODES, or a multi-node Slurm job outside srun.
    """
    environ = os.environ if environ is None else environ
    addr, port = environ.get("MASTER_ADDR") or None, environ.get("MASTER_PORT") or None
    in_step = "SLURM_STEP_ID" in environ
    slurm_tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1"
    if environ.get("NNODES"):
        nnodes, source = _positive(environ["NNODES"], "NNODES"), "environment"
    elif in_step and _positive(slurm_tasks, "SLURM_STEP_NUM_TASKS") > 1:
        nnodes, source = int(slurm_tasks), "Slurm step"
        nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
        if addr is None and nodelist:
            addr = first_slurm_host(nodelist)
        if port is None and environ.get("SLURM_JOB_ID", "").isdigit():
            port = str(20000 + int(environ["SLURM_JOB_ID"]) % 20000)  # the same on every task of the job
    else:
        job_nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1"
        if not in_step and job_nodes.isdigit() and int(job_nodes) > 1:
            raise ConfigError(f"this Slurm job has {job_nodes} nodes (SLURM_JOB_NUM_NODES) but train.py runs outside "
                              f"srun, on one of them only: start it with `srun --ntasks-per-node=1 ...` (one "
                              f"train.py per node), use TreeDPO/train.py ... --slurm, or set NNODES=1 to train on "
                              f"this node alone")
        if environ.get("NODE_RANK", "0") not in ("", "0"):
            raise ConfigError(f"NODE_RANK={environ['NODE_RANK']} is set but NNODES is not: set NNODES to the "
                              f"number of nodes on every node")
        return NodePlacement(1, 0, addr, port, "single node")
    if nnodes == 1:
        if environ.get("NODE_RANK", "0") not in ("", "0"):
            raise ConfigError(f"NODE_RANK={environ['NODE_RANK']} but NNODES=1: a one-node run has rank 0 only")
        return NodePlacement(1, 0, addr, port, source)
    if not (addr and port):
        raise ConfigError(f"NNODES={nnodes}: a multi-node run needs MASTER_ADDR and MASTER_PORT set to the same "
                          f"values on every node (MASTER_ADDR = the host of node 0)")
    rank_text = environ.get("NODE_RANK")
    if not rank_text and in_step and int(slurm_tasks) == nnodes:
        rank_text = environ.get("SLURM_PROCID")
    if not rank_text:
        raise ConfigError(f"NNODES={nnodes} but NODE_RANK is not set: set NODE_RANK=0..{nnodes - 1} on each node "
                          f"(0 on MASTER_ADDR={addr}), or start the nodes with srun (SLURM_PROCID); every node "
                          f"defaulting to rank 0 would wait for the others forever")
    try:
        rank = int(rank_text)
    except ValueError:
        rank = -1
    if not 0 <= rank < nnodes:
        raise ConfigError(f"NODE_RANK={rank_text!r} is not in 0..{nnodes - 1} (NNODES={nnodes})")
    return NodePlacement(nnodes, rank, addr, port, source)


def distributed_env(args: dict[str, Any], environ: Mapping[str, str] | None = None,
                    source: str = "config") -> dict[str, str]:
    """Environment variables to add for `llamafactory-cli train` ({} for a plain single-process run).

    A run is distributed with a ``deepspeed`` config, more than one visible GPU, FORCE_TORCHRUN, or more than
    one node (`node_placement`; then also without a GPU: gloo on CPU). Raises `ConfigError` when a
    ``deepspeed`` config meets a machine without a GPU, when a multi-node run lacks MASTER_ADDR / MASTER_PORT
    or its NODE_RANK, or when NPROC_PER_NODE is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    placement = node_placement(environ)
    gpus = visible_gpus(environ)
    deepspeed = bool(args.get("deepspeed"))
    forced = environ.get("FORCE_TORCHRUN", "").lower() in ("1", "true", "y", "yes")
    if not deepspeed and len(gpus) <= 1 and not forced and placement.nnodes == 1:
        return {}
    if deepspeed and not gpus:
        raise ConfigError(f"{source}: key 'deepspeed' ({args['deepspeed']}) needs a GPU, and none is visible "
                          f"($CUDA_VISIBLE_DEVICES / nvidia-smi); on a CPU machine set deepspeed=null")
    nproc = environ.get("NPROC_PER_NODE") or str(max(len(gpus), 1))
    _positive(nproc, "NPROC_PER_NODE")
    return {
        "FORCE_TORCHRUN": "1",
        "NNODES": str(placement.nnodes),
        "NODE_RANK": str(placement.node_rank),
        "NPROC_PER_NODE": nproc,
        "MASTER_ADDR": placement.master_addr or "127.0.0.1",
        "MASTER_PORT": placement.master_port or str(free_port()),
    }


def is_multinode(launch_env: Mapping[str, str]) -> bool:
    """True when `distributed_env` planned more than one node."""
    return int(launch_env.get("NNODES", "1")) > 1


def fingerprint_hash(fingerprint: Mapping[str, Any]) -> str:
    """sha256 of a JSON-able mapping with sorted keys (what the nodes of a run compare)."""
    return digest(fingerprint)


def fingerprint_differences(a: Mapping[str, Any], b: Mapping[str, Any], limit: int = 6) -> list[str]:
    """``key: A vs B`` for each (flattened) key whose value differs between two fingerprints."""
    fa, fb = flat_keys(a), flat_keys(b)
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k, "<unset>") != fb.get(k, "<unset>"))
    lines = [f"{k}: {fa.get(k, '<unset>')!r} vs {fb.get(k, '<unset>')!r}" for k in keys[:limit]]
    return lines + ([f"... and {len(keys) - limit} more"] if len(keys) > limit else [])


class NodeGroup:
    """The per-node train.py processes of one multi-node run, before torchrun starts.

    Node 0 hosts a TCPStore at MASTER_ADDR:MASTER_PORT; the others connect (retrying until the timeout,
    so the nodes may start in any order). `meet` compares every node's fingerprint, runs node 0's
    `prepare` (output-dir checks and writes) while the others wait, and gives every node node 0's answer.
    """

    def __init__(self, launch_env: Mapping[str, str], timeout_s: float | None = None):
        from torch.distributed import TCPStore

        self.rank, self.nnodes = int(launch_env["NODE_RANK"]), int(launch_env["NNODES"])
        self.addr, self.port = launch_env["MASTER_ADDR"], int(launch_env["MASTER_PORT"])
        if timeout_s is None:
            timeout_s = float(os.environ.get(NODE_TIMEOUT_ENV) or DEFAULT_NODE_TIMEOUT_S)
        self.timeout_s = timeout_s
        where = f"MASTER_ADDR={self.addr} MASTER_PORT={self.port}"
        try:
            self.store = TCPStore(self.addr, self.port, None, self.rank == 0,
                                  datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
        except (RuntimeError, OSError) as exc:
            if self.rank == 0:
                raise ConfigError(f"node 0 cannot listen on {where} for the other nodes: {exc}") from None
            raise ConfigError(f"node {self.rank} could not reach node 0 at {where} within {timeout_s:.0f} s "
                              f"({NODE_TIMEOUT_ENV}): is node 0 started, with the same MASTER_ADDR/MASTER_PORT? "
                              f"({str(exc).splitlines()[0]})") from None

    def close(self) -> None:
        """Stop talking to the other nodes (node 0: stop listening on MASTER_PORT)."""
        self.__dict__.pop("store", None)

    def _publish(self, key: str, value: Mapping[str, Any]) -> None:
        self.store.set(key, json.dumps(value, default=str))

    def _read(self, key: str) -> dict[str, Any]:
        return json.loads(self.store.get(key).decode())

    def meet(self, fingerprint: Mapping[str, Any], prepare: Callable[[], Mapping[str, Any]],
             host_gpus: list[str] | None = None) -> dict[str, Any]:
        """All nodes: send `fingerprint`; node 0 checks they are equal (and that nodes sharing a host do not
        share GPUs), then calls `prepare` and returns its result to every node.

        Raises `ConfigError` on every node when the fingerprints differ (naming the nodes and keys), when a
        node does not show up within the timeout, or when node 0's `prepare` fails (its message).
        """
        me = {"hash": fingerprint_hash(fingerprint), "fingerprint": fingerprint, "host": socket.gethostname(),
              "gpus": list(host_gpus or [])}
        try:
            self._publish(f"node/{self.rank}", me)
            if self.rank == 0:
                return self._lead(me, prepare)
            try:
                verdict = self._read("verdict")
            except (RuntimeError, OSError) as exc:
                raise ConfigError(f"node {self.rank}: no word from node 0 ({self.addr}:{self.port}) within "
                                  f"{self.timeout_s:.0f} s ({NODE_TIMEOUT_ENV}) or it went away: "
                                  f"{str(exc).splitlines()[0]}") from None
            self.store.set(f"ack/{self.rank}", "1")
            if not verdict.get("ok"):
                raise ConfigError(verdict.get("error", "node 0 refused the run"))
            return verdict["result"]
        finally:
            if self.rank != 0:
                self.close()

    def _lead(self, me: dict[str, Any], prepare: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        try:
            nodes = self._gather()
            nodes[0] = me
            problem = self._disagreement(nodes)
            if problem:
                raise ConfigError(problem)
            result = dict(prepare())
        except BaseException as exc:
            message = str(exc) if isinstance(exc, ConfigError) else f"node 0 failed: {type(exc).__name__}: {exc}"
            self._publish("verdict", {"ok": False, "error": f"node 0 refused the run: {message}"})
            self._wait_acks()
            raise
        self._publish("verdict", {"ok": True, "result": result})
        self._wait_acks()
        return result

    def _gather(self) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + self.timeout_s
        keys = [f"node/{r}" for r in range(1, self.nnodes)]
        while True:
            missing = [k for k in keys if not self.store.check([k])]
            if not missing:
                break
            if time.monotonic() > deadline:
                ranks = ", ".join(k.split("/")[1] for k in missing)
                raise ConfigError(f"node 0: node(s) {ranks} of NNODES={self.nnodes} did not join at "
                                  f"{self.addr}:{self.port} within {self.timeout_s:.0f} s ({NODE_TIMEOUT_ENV}); "
                                  f"start train.py on every node with the same MASTER_ADDR/MASTER_PORT")
            time.sleep(0.2)
        return {r: self._read(f"node/{r}") for r in range(1, self.nnodes)}

    def _disagreement(self, nodes: dict[int, dict[str, Any]]) -> str | None:
        lead = nodes[0]
        bad = [r for r in sorted(nodes) if nodes[r]["hash"] != lead["hash"]]
        if bad:
            r = bad[0]
            diff = "; ".join(fingerprint_differences(lead["fingerprint"], nodes[r]["fingerprint"]))
            return (f"the nodes disagree on the training run: node(s) {', '.join(map(str, bad))} differ from node 0 "
                    f"(node 0 on {lead['host']} vs node {r} on {nodes[r]['host']}: {diff}); start every node with "
                    f"the same command, checkout and environment")
        seen: dict[tuple[str, str], int] = {}
        for r in sorted(nodes):
            for gpu in nodes[r]["gpus"]:
                other = seen.setdefault((nodes[r]["host"], gpu), r)
                if other != r:
                    return (f"nodes {other} and {r} run on the same host {nodes[r]['host']} and both use GPU {gpu}: "
                            f"start one train.py per node (srun --ntasks-per-node=1), torchrun starts one process "
                            f"per GPU")
        return None

    def _wait_acks(self) -> None:
        deadline = time.monotonic() + min(self.timeout_s, 120.0)
        keys = [f"ack/{r}" for r in range(1, self.nnodes)]
        while time.monotonic() < deadline and not all(self.store.check([k]) for k in keys):
            time.sleep(0.1)


def _positive(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"environment variable {name} must be a positive integer, got {text!r}")
    return value


def venv_path(python: Path, environ: Mapping[str, str] | None = None) -> str:
    """$PATH with the directory of `python` first, so LLaMA-Factory's `torchrun` is the main venv's
    (a `.venv/bin/python` run does not activate the venv)."""
    environ = os.environ if environ is None else environ
    rest = environ.get("PATH", os.defpath)
    return f"{python.parent}{os.pathsep}{rest}" if rest else str(python.parent)


def check_launchable(args: dict[str, Any], env: Mapping[str, str], python: Path, yaml_path: Path) -> None:
    """Before a distributed run: torchrun is on PATH, DeepSpeed is importable by `python` when the config
    uses it, and the YAML path has no blanks (LLaMA-Factory re-splits torchrun's command line on them).

    Raises `ConfigError` naming what is missing.
    """
    if env.get("FORCE_TORCHRUN") != "1":
        return
    if shutil.which("torchrun", path=env.get("PATH")) is None:
        raise ConfigError(f"torchrun not found next to {python} or on PATH (it comes with PyTorch)")
    if any(ch.isspace() for ch in str(yaml_path)):
        raise ConfigError(f"distributed training cannot use a path with blanks: {yaml_path} "
                          f"(LLaMA-Factory splits torchrun's arguments on spaces); choose another --output-dir")
    if args.get("deepspeed"):
        probe = subprocess.run([str(python), "-c", "import importlib.util, sys; "
                                "sys.exit(importlib.util.find_spec('deepspeed') is None)"],
                               capture_output=True, timeout=120)
        if probe.returncode != 0:
            raise ConfigError(f"key 'deepspeed' is set but DeepSpeed is not installed for {python} "
                              f"(pip install -r requirements-train-gpu.txt)")
