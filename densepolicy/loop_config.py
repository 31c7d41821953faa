"""The settings `make demo` and `make experiment` share: one definition, one validation, one help per key.

    cfg = load_loop_config(DemoConfig, "configs/demo.yaml", ["evaluate_base=true"])   # DemoConfig(LoopConfig)
    warm = cfg.warm_start_model(log=print)      # warm_model, or the cached warm start (built when absent)

`LoopConfig` holds every key both loops have (the base model, the warm start, evaluation of the base model,
workers, tmux ids, device, serving and sampler overrides, the DPO training and dataset name); `DemoConfig`
(densepolicy/demo.py) and `ExperimentConfig` (densepolicy/experiment.py) subclass it and add their own keys.
Each loop's YAML (configs/demo.yaml, configs/experiment.yaml) sets the values it chooses; a shared key it leaves
out has LoopConfig's default. Each YAML sets its own output_dir, tmux_start_id, train_config and dataset_name:
two loops that shared them would overwrite each other's outputs (the defaults here are for other config files).

The demo's former name of the base model, `model`, is still read (file or command line) as `base_model`, with a
note (`LoopConfig.ALIASES`). Loading (`load_loop_config`) is densepolicy.config's strict loading (an unknown key is
a `ConfigError` naming it) plus the device: the file's `gpu:` keys replace its values on a GPU (`loop_device`),
and command-line ``key=value`` overrides win over both.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from densepolicy.config import (ConfigError, apply_overrides, from_dict, help_field, merge_dicts, parse_overrides,
                                read_yaml, split_override, to_dict, update_only_keys)
from densepolicy.paths import shown
from densepolicy.training.warm_start import ensure_warm_start

T = TypeVar("T")

WarmStart = Callable[[list[str], Callable[[str], None]], Path]
"""A warm-start hook: (warm_start overrides, log) -> the warm-started model directory."""


def cached_warm_start(overrides: list[str], log: Callable[[str], None]) -> Path:
    """The loops' warm-start hook: `ensure_warm_start(overrides)`, the cached model, built first when absent or
    stale (densepolicy/training/warm_start.py; one build at a time, the others wait and reuse it)."""
    return ensure_warm_start(overrides, log=log)


@dataclasses.dataclass
class LoopConfig:
    """The keys `make demo` and `make experiment` share (their configs subclass this one)."""

    ALIASES: ClassVar[dict[str, str]] = {"model": "base_model"}
    """Former names still read, old -> new (`model` was the demo's name of the base model)."""

    output_dir: str = help_field("eval_results/loop", help="Where every artefact of the run goes; an older run "
                                                           "there is moved to <dir>.prev-<time>.")
    tmux_start_id: int = help_field(200, help="First TMUX_START_ID; each launcher run uses a block of 10 ids (keep "
                                              "the loops apart: demo 70.., experiment 150..).")
    train_config: str = help_field("cpu_tiny", help="TreeDPO/configs/<name>.yaml of the DPO training.")
    dataset_name: str = help_field("tree_dpo_loop", help="Name of the DPO dataset in TreeDPO/data/dataset_info.json.")
    base_model: str = help_field("SmolLM2-135M-Instruct", help="Base model (name in configs/models.yaml or a "
                                 "directory); `model` (the demo's former name) is read as base_model.")
    warm_model: str = help_field("", help="Warm-started model; empty = the cached warm start, "
                                          "ensure_warm_start(warm_start) (built once, then reused).")
    warm_start: list[str] = help_field([], help="key=value overrides of configs/warm_start.yaml.")
    evaluate_base: bool = help_field(False, help="Also evaluate the base model, with its usual prompt (the in-context "
                                                 "examples of configs/tasks/<dataset>.yaml; GSM8K 8: ~8 min per run "
                                                 "on 2 cores).")
    proc_per_server: int = help_field(2, help="Workers per dataset (PROC_PER_GPU of distributed_test.sh); vLLM "
                                              "batches their requests.")
    device: Literal["auto", "cpu", "gpu"] = help_field(
        "auto", help="Where the loop serves and trains: auto = the device configs/serving.yaml resolves to (its own "
                     "auto: the serving venv `make setup SERVE=cpu|gpu` built); gpu also applies the `gpu` keys.")
    gpu: dict[str, Any] = help_field({}, help="Keys of this config that replace the values above when device is "
                                              "gpu (key=value on the command line still wins).")
    serving: dict[str, str | int | float | bool] = help_field({}, help="Overrides of configs/serving.yaml.")
    sampler: dict[str, str | int | float | bool] = help_field({}, help="Settings forwarded to every worker.")
    train_overrides: list[str] = help_field([], help="LLaMA-Factory key=value overrides of the DPO training "
                                                     "(pref_beta, learning_rate, max_steps, ...).")

    def __post_init__(self) -> None:
        if self.proc_per_server < 1:
            raise ConfigError(f"key 'proc_per_server' must be >= 1, got {self.proc_per_server}")
        if self.tmux_start_id < 0:
            raise ConfigError(f"key 'tmux_start_id' must be >= 0, got {self.tmux_start_id}")

    def warm_start_model(self, log: Callable[[str], None], build: WarmStart = cached_warm_start) -> str:
        """The model the loop starts from: `warm_model`, or, when it is empty, `build(warm_start)` (the cached
        warm start); says which."""
        warm = self.warm_model or str(build(self.warm_start, log))
        log(f"warm-started model: {shown(warm)}")
        return warm

    def stage_settings(self) -> dict[str, Any]:
        """The keyword arguments of `loop_stages.LoopStages` these settings give (workers, tmux ids, overrides)."""
        return {"proc_per_server": self.proc_per_server, "tmux_start_id": self.tmux_start_id,
                "serving": self.serving, "sampler": self.sampler}


def _renamed(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """`data` with the former key names of `cls.ALIASES` renamed (a note for each; both names = ConfigError)."""
    aliases = getattr(cls, "ALIASES", {})
    out = dict(data)
    for old, new in aliases.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{source}: keys {old!r} and {new!r} name the same setting ({old!r} is its former "
                              f"name); keep {new!r}")
        print(f"note: {source}: key {old!r} is now called {new!r} (the same in every loop config); read as {new!r}",
              file=sys.stderr)
        out[new] = out.pop(old)
    return out


def _renamed_overrides(cls: type, overrides: Sequence[str]) -> list[str]:
    """Command-line ``key=value`` overrides with the former key names of `cls.ALIASES` renamed (a note each)."""
    aliases = getattr(cls, "ALIASES", {})
    out = []
    for item in overrides:
        key = split_override(item)[0]
        if key in aliases:
            print(f"note: command line: key {key!r} is now called {aliases[key]!r} (the same in every loop "
                  f"config); read as {aliases[key]!r}", file=sys.stderr)
            item = f"{aliases[key]}={item.split('=', 1)[1]}"
        out.append(item)
    return out


def loop_device(device: str, serving: Mapping[str, object]) -> str:
    """'cpu' or 'gpu' for a demo / experiment: `device`, where 'auto' is the device configs/serving.yaml (with
    the loop's `serving` overrides) resolves to, i.e. its own `device`, whose 'auto' is the serving venv's
    flavour (`make setup SERVE=cpu|gpu`)."""
    if device in ("cpu", "gpu"):
        return device
    from densepolicy.serving.server import load_serving_config
    return load_serving_config(None, [f"{k}={v}" for k, v in serving.items()]).resolved_device


def load_loop_config(cls: type[T], path: str | Path, overrides: Sequence[str]) -> T:
    """A demo / experiment config (a `LoopConfig`) from `path` and ``key=value`` overrides, for its device.

    The file's `gpu:` mapping holds keys of the same config that replace the file's values when the device
    (`loop_device`) is gpu; command-line ``key=value`` overrides win over both. The `gpu:` keys are checked on
    every device, so a typo fails on a CPU machine too. The returned config's `device` is 'cpu' or 'gpu' and
    its `serving` overrides carry that device, so the servers of every stage run where the training does.
    """
    data = _renamed(cls, read_yaml(path), str(path))
    from_file = from_dict(cls, data, str(path))  # the file's own keys first: their errors name the file alone
    overrides = _renamed_overrides(cls, overrides)
    cli = parse_overrides(list(overrides))
    section = data.get("gpu") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: key 'gpu' expects a mapping of this file's keys, got {section!r}")
    section = _renamed(cls, section, f"{path}: key 'gpu'")
    if section:
        data["gpu"] = section
    if "gpu" in section or "device" in section:
        raise ConfigError(f"{path}: key 'gpu' cannot set 'gpu' or 'device'")
    update_only_keys(cls, section, f"{path}: key 'gpu'")
    from_dict(cls, merge_dicts(data, section), f"{path} (with its 'gpu' keys)")  # types of the gpu keys
    base = apply_overrides(from_file, overrides)
    device = loop_device(base.device, base.serving)
    if device == "gpu":
        base = from_dict(cls, merge_dicts(merge_dicts(data, section), cli), f"{path} (gpu) + command line")
    result = from_dict(cls, {**to_dict(base), "device": device,
                             "serving": {**base.serving, "device": device}}, str(path))
    return result
