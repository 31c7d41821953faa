"""The settings of a loop run (`make demo`, `make experiment`): loaded for the device the loop runs on.

    cfg = load_loop_config(DemoConfig, "configs/demo.yaml", ["evaluate_base=true"])

The file's `gpu:` keys replace its values on a GPU (`loop_device`); command-line ``key=value`` overrides win.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from densepolicy.config import (ConfigError, from_dict, load_config, merge_dicts, parse_overrides, read_yaml,
                                to_dict, update_only_keys)

T = TypeVar("T")


def loop_device(device: str, serving: Mapping[str, object]) -> str:
    """'cpu' or 'gpu' for a demo / experiment: `device`, where 'auto' is the device configs/serving.yaml (with
    the loop's `serving` overrides) resolves to, i.e. its own `device`, whose 'auto' is the serving venv's
    flavour (`make setup SERVE=cpu|gpu`)."""
    if device in ("cpu", "gpu"):
        return device
    from densepolicy.serving.server import load_serving_config
    return load_serving_config(None, [f"{k}={v}" for k, v in serving.items()]).resolved_device


def load_loop_config(cls: type[T], path: str | Path, overrides: Sequence[str]) -> T:
    """A demo / experiment config (a dataclass with `device`, `gpu` and `serving` keys) for the device it runs on.

    The file's `gpu:` mapping holds keys of the same config that replace the file's values when the device
    (`loop_device`) is gpu; command-line ``key=value`` overrides win over both. The `gpu:` keys are checked on
    every device, so a typo fails on a CPU machine too. The returned config's `device` is 'cpu' or 'gpu' and
    its `serving` overrides carry that device, so the servers of every stage run where the training does.
    """
    data = read_yaml(path)
    cli = parse_overrides(list(overrides))
    section = data.get("gpu") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: key 'gpu' expects a mapping of this file's keys, got {section!r}")
    if "gpu" in section or "device" in section:
        raise ConfigError(f"{path}: key 'gpu' cannot set 'gpu' or 'device'")
    update_only_keys(cls, section, f"{path}: key 'gpu'")
    from_dict(cls, merge_dicts(data, section), f"{path} (with its 'gpu' keys)")  # types of the gpu keys
    base = load_config(cls, path, list(overrides))
    device = loop_device(base.device, base.serving)
    if device == "gpu":
        base = from_dict(cls, merge_dicts(merge_dicts(data, section), cli), f"{path} (gpu) + command line")
    result = from_dict(cls, {**to_dict(base), "device": device,
                             "serving": {**base.serving, "device": device}}, str(path))
    return result
