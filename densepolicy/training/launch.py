"""How `llamafactory-cli train` is launched: one process, or torchrun over the visible GPUs.

LLaMA-Factory starts torchrun itself only when it sees more than one GPU; DeepSpeed on one GPU needs
``FORCE_TORCHRUN=1`` or it stops with "Please use FORCE_TORCHRUN=1 to launch DeepSpeed training".
`distributed_env` sets what LLaMA-Factory's launcher reads whenever the run is distributed (a
``deepspeed`` config, or more than one GPU visible):

    FORCE_TORCHRUN=1  NNODES  NODE_RANK  NPROC_PER_NODE  MASTER_ADDR  MASTER_PORT

Values already in the environment win (that is how a multi-node job passes them); otherwise one node,
one process per visible GPU ($CUDA_VISIBLE_DEVICES, else nvidia-smi) and a free port.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Mapping

from densepolicy.config import ConfigError

TORCHRUN_KEYS = ("FORCE_TORCHRUN", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT")


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """GPU ids this run may use: $CUDA_VISIBLE_DEVICES when set (empty or -1: none), else nvidia-smi."""
    from densepolicy.launcher.gpus import detect_gpus

    return detect_gpus("auto", dict(os.environ if environ is None else environ))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def distributed_env(args: dict[str, Any], environ: Mapping[str, str] | None = None,
                    source: str = "config") -> dict[str, str]:
    """Environment variables to add for `llamafactory-cli train` ({} for a plain single-process run).

    Raises `ConfigError` when a ``deepspeed`` config meets a machine without a GPU, when a multi-node
    run (NNODES > 1) lacks MASTER_ADDR / MASTER_PORT, or when NPROC_PER_NODE is not a positive integer.
    """
    environ = os.environ if environ is None else environ
    gpus = visible_gpus(environ)
    deepspeed = bool(args.get("deepspeed"))
    forced = environ.get("FORCE_TORCHRUN", "").lower() in ("1", "true", "y", "yes")
    if not deepspeed and len(gpus) <= 1 and not forced:
        return {}
    if deepspeed and not gpus:
        raise ConfigError(f"{source}: key 'deepspeed' ({args['deepspeed']}) needs a GPU, and none is visible "
                          f"($CUDA_VISIBLE_DEVICES / nvidia-smi); on a CPU machine set deepspeed=null")
    nnodes = environ.get("NNODES", "1")
    if _positive(nnodes, "NNODES") > 1 and not (environ.get("MASTER_ADDR") and environ.get("MASTER_PORT")):
        raise ConfigError(f"NNODES={nnodes}: a multi-node run needs MASTER_ADDR and MASTER_PORT set to the same "
                          f"values on every node")
    nproc = environ.get("NPROC_PER_NODE") or str(max(len(gpus), 1))
    _positive(nproc, "NPROC_PER_NODE")
    return {
        "FORCE_TORCHRUN": "1",
        "NNODES": nnodes,
        "NODE_RANK": environ.get("NODE_RANK", "0"),
        "NPROC_PER_NODE": nproc,
        "MASTER_ADDR": environ.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(free_port()),
    }


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
