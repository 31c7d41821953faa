"""Run records: which sessions, ports, logs and output dir belong to the run of one TMUX_START_ID.

One JSON file per run, `<state_dir>/<tmux_socket>/run-<start_id>.json`, written at launch and read
by `status` and `stop` (which therefore need only the TMUX_START_ID, not the whole command).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from densepolicy.launcher.files import read_json
from densepolicy.results_io import write_json_atomic
from densepolicy.paths import resolve


@dataclass
class Slot:
    """One supervised process of a run: a server or a worker."""

    role: str                     # "server" | "worker"
    index: int                    # server index, or shard number for workers
    session: str                  # tmux session name (also used as the Slurm-side label)
    log: str                      # log file
    status: str                   # supervisor status file (JSON)
    gpus: list[str] = field(default_factory=list)
    port: int | None = None    # servers
    url: str | None = None     # servers: OpenAI base URL; workers: the URL they use
    server_index: int | None = None  # workers: which server they talk to


@dataclass
class RunRecord:
    """Everything `status`/`stop` need to know about one launched run."""

    start_id: int
    backend: str
    socket: str
    output_dir: str
    model: str
    dataset: str
    method: str
    num_shards: int
    servers: list[Slot] = field(default_factory=list)
    workers: list[Slot] = field(default_factory=list)
    slurm_job_id: str | None = None
    external_server: bool = False

    def slots(self) -> list[Slot]:
        """Servers first, then workers."""
        return [*self.servers, *self.workers]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        data = dict(data)
        data["servers"] = [Slot(**s) for s in data.get("servers", [])]
        data["workers"] = [Slot(**s) for s in data.get("workers", [])]
        return cls(**data)


def registry_dir(state_dir: str, socket: str) -> Path:
    """Directory of the run records of one tmux socket."""
    return resolve(state_dir) / socket


def record_path(state_dir: str, socket: str, start_id: int) -> Path:
    return registry_dir(state_dir, socket) / f"run-{start_id}.json"


def save_record(state_dir: str, record: RunRecord) -> Path:
    """Write (replace) the record of `record.start_id`."""
    path = record_path(state_dir, record.socket, record.start_id)
    write_json_atomic(path, asdict(record))
    return path


def load_record(state_dir: str, socket: str, start_id: int) -> RunRecord | None:
    """The record of TMUX_START_ID `start_id`, or None."""
    data = read_json(record_path(state_dir, socket, start_id))
    return RunRecord.from_dict(data) if data else None


def all_records(state_dir: str, socket: str) -> list[RunRecord]:
    """Every run record of this socket, by TMUX_START_ID."""
    folder = registry_dir(state_dir, socket)
    records = [RunRecord.from_dict(d) for p in sorted(folder.glob("run-*.json")) if (d := read_json(p))]
    return sorted(records, key=lambda r: r.start_id)


def forget_record(state_dir: str, socket: str, start_id: int) -> None:
    """Delete the record (after `stop`)."""
    record_path(state_dir, socket, start_id).unlink(missing_ok=True)
