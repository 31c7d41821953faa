"""Warm start: behaviour cloning (SFT) on expert trajectories before tree sampling, built once and cached.

    model_dir = ensure_warm_start()        # models/SmolLM2-135M-Instruct-warmstart/, built when absent or stale

Building = the expert SFT dataset (`densepolicy.training.expert_data.build_expert_dataset`) then SFT of the
base model with `densepolicy.training.train.train` (TreeDPO/configs/cpu_sft.yaml by default). Settings live
in configs/warm_start.yaml (``key=value`` overrides). The result is a servable model directory, registered in
configs/models.yaml (SmolLM2-135M-Warmstart), holding a stamp: a hash of every input (expert-data config,
SFT config file + overrides, base model fingerprint, `VERSION`). A later call whose inputs hash the same
returns at once; a changed input rebuilds it. Layout of the directory::

    config.json model.safetensors tokenizer* chat_template.jinja   the servable model
    train_config.yaml train.log trainer_state.json sft_loss.png     SFT run (see densepolicy.training.train)
    sft_data/                                                      the expert dataset it was trained on
    warm_start.json                                                inputs, counts, timings
    .densepolicy-stamp                                             hash of the inputs
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from densepolicy.config import ConfigError, help_field, load_config, read_yaml, to_dict
from densepolicy.file_lock import LockLostError, OutputLock, lock_path
from densepolicy.paths import PROJECT_ROOT, resolve
from densepolicy.provenance.hashing import digest

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "warm_start.yaml"
STAMP_FILE = ".densepolicy-stamp"
INFO_FILE = "warm_start.json"
# Bump when the build changes meaning in a way the hashed inputs do not show (e.g. the dataset layout).
VERSION = 1


@dataclasses.dataclass
class WarmStartConfig:
    """configs/warm_start.yaml: what the warm-started model is built from and where it goes."""

    base_model: str = help_field("SmolLM2-135M-Instruct",
                                 help="Model to fine-tune (name in configs/models.yaml or a directory).")
    sft_config: str = help_field("cpu_sft", help="TreeDPO/configs/<name>.yaml (stage: sft) used for the SFT.")
    sft_overrides: dict[str, Any] = help_field(
        {}, help="LLaMA-Factory key overrides of the SFT config, e.g. sft_overrides.num_train_epochs=1.")
    expert_data: dict[str, Any] = help_field(
        {}, help="Overrides of configs/expert_data.yaml (nested keys as in that file), e.g. expert_data.seed=1.")
    output_dir: str = help_field("models/SmolLM2-135M-Instruct-warmstart",
                                 help="Cached model directory (git-ignored); rebuilt when its stamp is stale.")
    expected_minutes: float = help_field(30.0, help="Build time announced before a build without an earlier one.")


def load_warm_start_config(overrides: Sequence[str] = (), path: str | Path | None = None) -> WarmStartConfig:
    """Read configs/warm_start.yaml (or `path`) and apply ``key=value`` overrides."""
    return load_config(WarmStartConfig, path or DEFAULT_CONFIG, list(overrides))


def flatten_overrides(values: dict[str, Any], prefix: str = "") -> list[str]:
    """{"a": {"b": 1}, "c": "x"} -> ["a.b=1", "c=x"]: each value written so that the YAML override parser
    reads it back as the same value (a string as it is when that round-trips, e.g. 5e-5; else JSON)."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += flatten_overrides(value, f"{prefix}{key}.")
            continue
        text = json.dumps(value)
        mantissa, _, exponent = text.partition("e")
        if isinstance(value, float) and exponent and "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"  # YAML 1.1 reads 5e-05 as a string, 5.0e-05 as a float
        elif isinstance(value, str) and value.strip() and _yaml_scalar(value) == value:
            text = value
        out.append(f"{prefix}{key}={text}")
    return out


def _yaml_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return None


def base_model_fingerprint(model_dir: Path) -> str:
    """A content hash of a model directory that is cheap for large models: the small JSON/tokenizer files
    whole, and for every weight file its size plus its first and last MiB."""
    hasher = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        hasher.update(path.name.encode() + b"\0")
        if path.suffix in (".safetensors", ".bin", ".pt"):
            size = path.stat().st_size
            hasher.update(str(size).encode())
            with open(path, "rb") as fh:
                hasher.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                hasher.update(fh.read(1 << 20))
        elif path.suffix in (".json", ".jinja", ".model", ".txt"):
            hasher.update(path.read_bytes())
    return hasher.hexdigest()[:16]


def warm_start_inputs(cfg: WarmStartConfig) -> dict[str, Any]:
    """Everything the warm-started model depends on, as plain data (hashed into the stamp)."""
    from densepolicy.training.expert_data import load_expert_data_config
    from densepolicy.training.train import config_path, model_directory

    sft_path = config_path(cfg.sft_config)
    sft_yaml = read_yaml(sft_path)
    if sft_yaml.get("stage") != "sft":
        raise ConfigError(f"sft_config: {sft_path} has stage {sft_yaml.get('stage')!r}, expected 'sft'")
    base = model_directory(cfg.base_model)
    expert_cfg = load_expert_data_config(flatten_overrides(cfg.expert_data))
    return {
        "version": VERSION,
        "expert_data": to_dict(expert_cfg),
        "sft_config": sft_path.name,
        "sft_yaml": sft_yaml,
        "sft_overrides": flatten_overrides(cfg.sft_overrides),
        "base_model": str(base),
        "base_model_fingerprint": base_model_fingerprint(base),
    }


def stamp_of(inputs: dict[str, Any]) -> str:
    """Hash of the inputs; the base model enters by content, not by path."""
    hashed = {k: v for k, v in inputs.items() if k != "base_model"}
    return digest(hashed)[:16]


def read_stamp(model_dir: Path) -> str | None:
    """The stamp of a built warm-start directory, or None."""
    stamp = model_dir / STAMP_FILE
    return stamp.read_text().strip() if stamp.is_file() else None


@dataclasses.dataclass
class WarmStartState:
    """Whether the cached model is usable as it is."""

    model_dir: Path
    stamp: str
    current: bool
    reason: str
    """'up to date', 'absent', 'stale (...)' or 'foreign (...)' (a directory the warm start did not write)."""


def warm_start_state(overrides: Sequence[str] = ()) -> WarmStartState:
    """Check the cache without building anything."""
    cfg = load_warm_start_config(overrides)
    return _state(cfg, resolve(cfg.output_dir), stamp_of(warm_start_inputs(cfg)))


def _state(cfg: WarmStartConfig, out: Path, stamp: str) -> WarmStartState:
    from densepolicy.training.train import TrainingError, check_servable

    old = read_stamp(out)
    if not out.exists():
        return WarmStartState(out, stamp, False, "absent")
    if old is None:
        return WarmStartState(out, stamp, False, "foreign (exists without a warm-start stamp)")
    if old != stamp:
        return WarmStartState(out, stamp, False, "stale (its inputs changed)")
    try:
        check_servable(out)
    except TrainingError as exc:
        return WarmStartState(out, stamp, False, f"stale ({exc})")
    return WarmStartState(out, stamp, True, "up to date")


@contextlib.contextmanager
def _build_lock(out: Path, log: Callable[[str], None]) -> Iterator[OutputLock]:
    """One build at a time per output directory, on every host that shares it (the lock policy of
    densepolicy.file_lock: `<out>.lock` next to it, safe on NFS). The demo, the experiment or jobs on several
    nodes may ask at once: one builds, the others wait here and then find its model up to date. A build is never
    taken over while its process lives (on this host: checked by pid; on another: its lock's heartbeat)."""
    lock = OutputLock(lock_path(out), "warm-start build")
    lock.acquire_waiting(on_wait=lambda holder: log(f"[warm-start] {out} is being built by {holder}; waiting "
                                                    f"for it to finish"))
    try:
        yield lock
    finally:
        lock.release()


def ensure_warm_start(overrides: Sequence[str] = (), *, rebuild: bool = False,
                      log: Callable[[str], None] = print) -> Path:
    """The directory of the warm-started model, built first when it is absent or stale (or `rebuild`).

    `overrides` are ``key=value`` settings of configs/warm_start.yaml. A build says so, with the expected
    time, and reports how long it took. Raises `ConfigError` for bad settings and
    `densepolicy.training.train.TrainingError` when training fails (the cached model is then unchanged).
    """
    cfg = load_warm_start_config(overrides)
    out = resolve(cfg.output_dir)
    inputs = warm_start_inputs(cfg)
    stamp = stamp_of(inputs)
    with _build_lock(out, log) as lock:
        state = _state(cfg, out, stamp)
        if state.current and not rebuild:
            return out
        if state.reason.startswith("foreign") and not rebuild:
            raise ConfigError(f"output_dir: {out} exists but was not built by the warm start (no {STAMP_FILE}); "
                              f"move it away, choose another output_dir, or rebuild (--rebuild) to replace it")
        reason = "rebuild requested" if rebuild and state.current else state.reason
        log(f"[warm-start] building {out} ({reason}): expert trajectories, then SFT of {cfg.base_model} "
            f"with {cfg.sft_config}; this takes about {_expected_minutes(cfg, out):.0f} min")
        _build(cfg, inputs, stamp, out, log, lock)
    return out


def _expected_minutes(cfg: WarmStartConfig, out: Path) -> float:
    info = out / INFO_FILE
    if info.is_file():
        try:
            return float(json.loads(info.read_text())["timings"]["total_s"]) / 60
        except (KeyError, ValueError, TypeError):
            pass
    return cfg.expected_minutes


def _build(cfg: WarmStartConfig, inputs: dict[str, Any], stamp: str, out: Path,
           log: Callable[[str], None], lock: OutputLock) -> None:
    """Dataset, then SFT, in a scratch directory next to `out`; `out` is replaced only at the end, and only
    while this process still holds the build lock (else `TrainingError`: another build took over)."""
    from densepolicy.training.expert_data import build_expert_dataset, load_expert_data_config
    from densepolicy.training.launch import node_placement
    from densepolicy.training.train import TrainingError, train

    if node_placement().nnodes > 1:  # every node would rebuild (and delete) the same scratch directory
        raise ConfigError("the warm start builds on one machine; for a multi-node SFT build the expert data with "
                          "scripts/build_expert_data.py, then run TreeDPO/train.py <sft config> --dataset <name> on "
                          "every node (NNODES/NODE_RANK, srun, or --slurm)")
    work = out.parent / f".{out.name}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.monotonic()
    expert_cfg = load_expert_data_config(flatten_overrides(cfg.expert_data))
    summary = build_expert_dataset(expert_cfg, dataset_dir=work / "data", overwrite=True)
    data_s = time.monotonic() - start
    counts = dict(summary.counts)
    log(f"[warm-start] expert dataset {summary.name}: {sum(counts.values())} trajectories "
        f"({', '.join(f'{env} {n}' for env, n in counts.items())}) in {data_s:.0f} s")
    if not sum(counts.values()):
        raise ConfigError("expert_data: the expert dataset is empty; nothing to train on")

    result = train(cfg.sft_config, dataset=summary.name, dataset_dir=work / "data", model=inputs["base_model"],
                   output_dir=work / "model", overrides=inputs["sft_overrides"])
    total_s = time.monotonic() - start
    shutil.move(str(work / "data"), str(work / "model" / "sft_data"))
    (work / "model" / INFO_FILE).write_text(json.dumps({
        "stamp": stamp,
        "inputs": inputs,
        "expert_data": {"name": summary.name, "counts": counts, "attempted": dict(summary.attempted),
                        "token_stats": summary.token_stats},
        "train_metrics": result.metrics,
        "timings": {"expert_data_s": round(data_s, 1), "sft_s": round(result.train_seconds, 1),
                    "total_s": round(total_s, 1)},
    }, indent=2, default=str) + "\n")
    (work / "model" / STAMP_FILE).write_text(stamp + "\n")
    try:
        lock.check()
    except LockLostError as exc:
        raise TrainingError(f"warm start: {exc}; {out} is left to the build that took over") from None
    if out.exists():
        shutil.rmtree(out)
    (work / "model").rename(out)
    shutil.rmtree(work, ignore_errors=True)
    log(f"[warm-start] built {out} in {total_s / 60:.1f} min (expert data {data_s:.0f} s, "
        f"SFT {result.train_seconds:.0f} s, train loss {result.metrics.get('train_loss', float('nan')):.3f})")
