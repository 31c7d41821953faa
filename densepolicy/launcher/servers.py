"""The launcher's view of model serving: resolve the model, build one server's command, pick ports.

Everything vLLM-specific comes from `densepolicy.serving.server` (VLLMServer, ServingConfig, find_free_port)
and `densepolicy.serving.models.resolve_model`; this module only adapts them to processes the launcher
runs itself inside tmux or a Slurm task.
"""
from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class ModelNotFound(RuntimeError):
    """MODEL is neither a directory nor a name configured in configs/."""


@dataclass
class ServerProcess:
    """What it takes to run one server: argv and extra environment."""

    argv: list[str]
    env: dict[str, str]


def served_model_directory(name_or_path: str) -> str:
    """The model directory of MODEL (a name from configs/models.yaml or a directory), as
    `densepolicy.serving.models.resolve_model` finds it; `ModelNotFound` with its message otherwise."""
    from densepolicy.serving.models import resolve_model

    try:
        return str(resolve_model(name_or_path).path)
    except ValueError as exc:  # ModelError / ConfigError name the model and what is missing
        raise ModelNotFound(str(exc)) from None


def load_serving_config(device: str, overrides: list[str], tensor_parallel_size: int | None = None):
    """configs/serving.yaml with `device` (cpu/gpu, from GPU detection) and the user's `serving.*` overrides."""
    from densepolicy.serving.server import load_serving_config as _load

    base = [f"device={device}"] + ([f"tensor_parallel_size={tensor_parallel_size}"] if tensor_parallel_size else [])
    return _load(None, base + list(overrides))


def server_process(model: str, serving_cfg, log_file: Path, port: int, gpus: list[str]) -> ServerProcess:
    """argv + environment of one vLLM server for `model` on `port` using `gpus` ([] = as the environment says,
    e.g. Slurm's CUDA_VISIBLE_DEVICES). A server given `gpus` spans exactly them when the serving config's
    tensor_parallel_size is null."""
    from densepolicy.serving.server import VLLMServer

    server = VLLMServer(model, serving_cfg, log_file, port=port, gpus=list(gpus) or None)
    env = {k: str(v) for k, v in server.environment().items()}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return ServerProcess(argv=[str(a) for a in server.command()], env=env)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on `port` and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class NoFreePort(RuntimeError):
    """No free TCP port in the searched range."""


def find_free_ports(start: int, count: int, taken: set[int] = frozenset(), span: int = 2000) -> list[int]:
    """`count` distinct free ports at or above `start`, skipping `taken` (ports of live runs)."""
    ports: list[int] = []
    port = start
    while len(ports) < count:
        if port > min(65535, start + span):
            raise NoFreePort(f"no free port in {start}..{min(65535, start + span)} "
                             f"(needed {count}); set base_port=... or stop other servers")
        if port not in taken and port_is_free(port):
            ports.append(port)
        port += 1
    return ports


PORT_LOCK_ENV = "DENSEPOLICY_PORT_LOCK_DIR"
"""Folder of the per-port claim files (default <tmp>/densepolicy-ports: node-local, like the ports)."""


def port_lock_dir() -> Path:
    """Where port claims live: $DENSEPOLICY_PORT_LOCK_DIR, else <tmp>/densepolicy-ports (created on demand)."""
    path = Path(os.environ.get(PORT_LOCK_ENV) or Path(tempfile.gettempdir()) / "densepolicy-ports")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class PortClaim:
    """A port this process has claimed: the flock on `<port_lock_dir>/<port>.lock` is held while `handle` is
    open (the OS drops it when the process ends, even on SIGKILL), so no other claimant on this node takes it."""

    port: int
    handle: IO[str]

    def release(self) -> None:
        self.handle.close()


def claim_free_port(start: int, span: int = 2000, host: str = "127.0.0.1") -> PortClaim:
    """The first port >= `start` that nothing listens on and no other process of this node has claimed, claimed.

    Array tasks of one Slurm job (or of several jobs) that share a node each start a vLLM server, which binds its
    port only tens of seconds later; a bind test alone lets two tasks pick the same free port in that window.
    The claim closes it: a task skips ports another task holds. Raises `NoFreePort`.
    """
    folder = port_lock_dir()
    last = min(65535, start + span)
    for port in range(start, last + 1):
        handle = open(folder / f"{port}.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # claimed by another process (or another claim of this one)
            handle.close()
            continue
        if port_is_free(port, host):
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return PortClaim(port, handle)
        handle.close()
    raise NoFreePort(f"no free unclaimed port in {start}..{last} (claims in {folder}); set base_port=... "
                     f"or stop other servers")


def base_url(port: int, host: str = "127.0.0.1") -> str:
    """OpenAI-compatible base URL of a server on `port`."""
    return f"http://{host}:{port}/v1"
