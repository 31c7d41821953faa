"""The run manifest: what an output directory was started with, so two runs never mix their files.

`<output_dir>/run_manifest.json` records model, dataset, method, number of shards and a hash of the
worker settings. Re-running into the same directory with anything different is an error.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from densepolicy.launcher.files import write_json_atomic

MANIFEST_NAME = "run_manifest.json"
IDENTITY_KEYS = ("model", "dataset", "method", "num_shards", "config_hash")


class ManifestMismatch(RuntimeError):
    """The output directory belongs to a different run."""


def config_hash(settings: dict[str, Any]) -> str:
    """Short stable hash of the settings that decide what the workers produce."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_manifest(model: str, dataset: str, method: str, num_shards: int, sampler_args: list[str]) -> dict[str, Any]:
    """A new manifest for these run settings."""
    settings = {"model": model, "dataset": dataset, "method": method, "num_shards": num_shards,
                "sampler_args": sorted(sampler_args)}
    return {**settings, "config_hash": config_hash(settings), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def check_or_write_manifest(output_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest into a fresh output dir, or verify that an existing one matches.

    Raises `ManifestMismatch` naming every differing key (and both values) when it does not.
    """
    path = output_dir / MANIFEST_NAME
    if path.is_file():
        existing = json.loads(path.read_text())
        diffs = [f"{k}: {existing.get(k)!r} (existing) vs {manifest.get(k)!r} (now)"
                 for k in IDENTITY_KEYS if existing.get(k) != manifest.get(k)]
        if "sampler_args" in existing and existing["sampler_args"] != manifest["sampler_args"]:
            diffs.append(f"sampler args: {existing['sampler_args']} vs {manifest['sampler_args']}")
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
