"""The identity of a shard lives with its results: `<output_dir>/<stem>.settings.json` next to the CSV.

    lock = lock_shard(output_dir, stem, cfg.lock_stale_s)      # one writer per shard (densepolicy.file_lock)
    new = check_shard_settings(output_dir, stem, cfg, model_name)   # refuse to mix settings
    ...                                                        # create the shard CSV (ShardWriter.open)
    if new: record_shard_settings(output_dir, stem, new)       # before the first row

The sidecar holds every setting that shapes the results (all but `RUNTIME_ONLY_KEYS`) and the model, each
under its flat key (`base`, not `tree.base`: `densepolicy.sampling.config.sampler_settings`), the form the
sidecars had before the config grew its `tree` and `agent` sections, so those shards still resume.
It is written atomically after the shard CSV exists and before its first row (so a sidecar without its
CSV can only be left by an interrupted merge), and checked on every start, so deleting `state/`
(resume journals) cannot let a run with other settings append to the shard. A shard that has results
but no sidecar is refused rather than guessed at. The merge moves the sidecar with its shard and
refuses to merge shards whose sidecars differ (densepolicy.postprocess.merge).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from densepolicy.config import ConfigError
from densepolicy.file_lock import OutputLock, lock_path
from densepolicy.results_io import write_json_atomic
from densepolicy.sampling.config import SamplerConfig, sampler_settings, setting_defaults

# Settings that change how fast or how robustly a shard runs, not what it produces: free to change on resume.
RUNTIME_ONLY_KEYS = {"progress", "task_concurrency", "env_threads", "max_concurrency", "request_timeout_s",
                     "max_retries", "backoff_s", "retry_window_s", "lock_stale_s", "on_task_error",
                     "max_live_episodes", "execution"}
SETTINGS_SUFFIX = ".settings.json"
# Settings added with a default that differs from what shards made before them did: a record without the key
# was made with this value, not with today's default.
FORMER_VALUES = {"prompt_style": "original"}
# Settings removed since (they did not change results): a record that has one still matches.
REMOVED_KEYS = set(SamplerConfig.REMOVED_KEYS)


def settings_path(csv_path: str | os.PathLike) -> Path:
    """`<dir>/gsm8k.train.0.csv` -> `<dir>/gsm8k.train.0.settings.json`."""
    csv_path = Path(csv_path)
    stem = csv_path.name[: -len(".csv")] if csv_path.name.endswith(".csv") else csv_path.name
    return csv_path.with_name(stem + SETTINGS_SUFFIX)


def lock_shard(output_dir: str | os.PathLike, stem: str, stale_after_s: float) -> OutputLock:
    """Take the lock of shard `stem` for this worker; `LockHeldError` names a live holder."""
    return OutputLock(lock_path(Path(output_dir) / f"{stem}.csv"), "sample_tree.py worker", stale_after_s).acquire()


def shard_settings(cfg: SamplerConfig, model: str) -> dict[str, Any]:
    """What the sidecar records: the result-shaping settings and the model."""
    current = {k: v for k, v in sampler_settings(cfg).items() if k not in RUNTIME_ONLY_KEYS}
    current["model"] = model
    return current


def settings_diffs(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every result-shaping key that differs (runtime-only keys are ignored).
    A key the older record lacks (a setting added since) counts as its default value (or its former
    behaviour, `FORMER_VALUES`)."""
    defaults = {**setting_defaults(), **FORMER_VALUES}
    keys = sorted((set(previous) | set(current)) - RUNTIME_ONLY_KEYS - REMOVED_KEYS)
    old = {k: previous[k] if k in previous else defaults.get(k) for k in keys}
    new = {k: current[k] if k in current else defaults.get(k) for k in keys}
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in keys if old[k] != new[k]]


def read_settings(path: Path) -> dict[str, Any]:
    """A sidecar's settings; a damaged sidecar is a `ConfigError` naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable settings record ({exc}); restore it or move the shard away") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: settings record is not a JSON object; restore it or move the shard away")
    return data


def _has_results(output_dir: Path, stem: str) -> bool:
    """True if the shard has a data row, a tree line or a journal (anything a new run could mix with)."""
    csv_path = output_dir / f"{stem}.csv"
    if csv_path.is_file():
        with csv_path.open("rb") as fh:
            fh.readline()
            if fh.readline().strip():
                return True
    tree = output_dir / "trees" / f"{stem}.jsonl"
    if tree.is_file() and tree.stat().st_size > 0:
        return True
    journals = output_dir / "state" / stem
    return journals.is_dir() and any(p.stat().st_size > 0 for p in journals.glob("*.jsonl"))


def check_shard_settings(output_dir: str | os.PathLike, stem: str, cfg: SamplerConfig,
                         model: str) -> dict[str, Any] | None:
    """Refuse (`ConfigError`) to continue shard `stem` with other settings than it was made with.

    Call with the shard's lock held; nothing is written. Returns the record to write with
    `record_shard_settings` once the shard CSV exists, or None if the sidecar is already there. A
    sidecar from before this module (`state/<stem>.settings.json`) is honoured (and then copied).
    """
    output_dir = Path(output_dir)
    csv_path = output_dir / f"{stem}.csv"
    path = settings_path(csv_path)
    legacy = output_dir / "state" / f"{stem}.settings.json"
    current = shard_settings(cfg, model)
    source = path if path.is_file() else legacy if legacy.is_file() else None
    if source is not None:
        diffs = settings_diffs(read_settings(source), current)
        if diffs:
            what = f"{csv_path} was made" if csv_path.exists() else f"{source} records shard {stem} as made"
            raise ConfigError(f"{what} with other settings ({'; '.join(diffs)}); rerun with the same settings "
                              f"to resume it, or choose another --output_dir")
        if source == path:
            return None
    elif _has_results(output_dir, stem):
        raise ConfigError(f"{csv_path} holds results but its settings record {path.name} is missing, so they "
                          f"cannot be checked; restore the record, or move the shard's files away")
    return current


def record_shard_settings(output_dir: str | os.PathLike, stem: str, settings: dict[str, Any]) -> None:
    """Write the sidecar of shard `stem` atomically (after its CSV exists, before its first row)."""
    write_json_atomic(settings_path(Path(output_dir) / f"{stem}.csv"), settings, indent=1)
