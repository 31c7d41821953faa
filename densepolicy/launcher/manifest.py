"""The run manifest: what an output directory was started with, so two runs never mix their files.

`<output_dir>/run_manifest.json` records model, dataset, method, number of shards and the worker's
effective settings (configs/sampler.yaml + configs/tasks/<dataset>.yaml + sampler.* overrides, so an
edited config file counts too), with a hash of them. Re-running into the same directory with anything
different is an error; settings that only change how fast the worker runs (`EXECUTION_KEYS`) may change.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from densepolicy.results_io import write_json_atomic

MANIFEST_NAME = "run_manifest.json"
IDENTITY_KEYS = ("model", "dataset", "method", "num_shards")
EXECUTION_KEYS = frozenset({"task_concurrency", "max_concurrency", "env_threads", "max_live_episodes",
                            "request_timeout_s", "max_retries", "backoff_s", "retry_window_s", "lock_stale_s",
                            "progress", "on_task_error"})


class ManifestMismatch(RuntimeError):
    """The output directory belongs to a different run."""


def config_hash(settings: dict[str, Any]) -> str:
    """Short stable hash of the settings that decide what the workers produce."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_manifest(model: str, dataset: str, method: str, num_shards: int, worker_settings: dict[str, Any],
                  sampler_args: list[str]) -> dict[str, Any]:
    """A new manifest: identity, the worker settings that shape the results, and their hash."""
    settings = {k: v for k, v in sorted(worker_settings.items()) if k not in EXECUTION_KEYS}
    identity = {"model": model, "dataset": dataset, "method": method, "num_shards": num_shards}
    return {**identity, "settings": settings, "sampler_args": sorted(sampler_args),
            "config_hash": config_hash({**identity, "settings": settings}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def check_or_write_manifest(output_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest into a fresh output dir, or verify that an existing one matches.

    Raises `ManifestMismatch` naming every differing key (and both values) when it does not.
    """
    path = output_dir / MANIFEST_NAME
    if path.is_file():
        existing = json.loads(path.read_text())
        diffs = [f"{k}: {existing.get(k)!r} (existing) vs {manifest.get(k)!r} (now)"
                 for k in IDENTITY_KEYS if existing.get(k) != manifest.get(k)]
        old, new = existing.get("settings", {}), manifest["settings"]
        diffs += [f"{k}: {old.get(k)!r} (existing) vs {new.get(k)!r} (now)"
                  for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if existing.get("config_hash") != manifest["config_hash"] and not diffs:
            diffs.append("config_hash differs")
        if diffs:
            raise ManifestMismatch(
                f"{output_dir} holds a different run ({'; '.join(diffs)}). Re-run with the original "
                f"settings to resume it, or choose another output_dir=...")
        return existing
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, manifest)
    return manifest


def read_manifest(output_dir: Path) -> dict[str, Any] | None:
    """The manifest of `output_dir`, or None."""
    path = Path(output_dir) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.is_file() else None
