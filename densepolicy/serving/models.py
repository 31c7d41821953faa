"""Model registry: MODEL on the command line is a registered name (configs/models.yaml) or a directory.

    spec = resolve_model("SmolLM2-135M-Instruct")          # or resolve_model("TreeDPO/saves/.../full/run")
    spec.path, spec.served_name, spec.context_length, spec.stop

The context length is never hard-coded: it is the model's own limit (``max_position_embeddings`` in
config.json, ``model_max_length`` in tokenizer_config.json) capped by the served ``max_model_len``
(registry entry, or the serving config's override).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densepolicy.config import ConfigError, help_field, load_config
from densepolicy.paths import PROJECT_ROOT, models_dir, resolve

DEFAULT_REGISTRY = PROJECT_ROOT / "configs" / "models.yaml"
# tokenizer_config.json uses ~1e30 for "no limit"; anything above this is treated as unset.
_UNSET_LENGTH = 10_000_000


class ModelError(ValueError):
    """A model name or directory cannot be used; the message names it."""


@dataclass
class ModelEntry:
    """One model of the registry (configs/models.yaml)."""

    path: str = help_field(help="Model directory (safetensors + tokenizer), relative to the project root or absolute.")
    served_name: str | None = help_field(None, help="--served-model-name for vLLM; default: the registry name.")
    max_model_len: int | None = help_field(None, help="Context served by vLLM; default: the model's own limit.")
    stop: list[str] = help_field([], help="Extra chat stop strings sent with every request.")
    dtype: str = help_field("auto", help="vLLM --dtype: auto, bfloat16, float16 or float32.")


@dataclass
class ModelRegistry:
    """configs/models.yaml: the known models and the default one."""

    default: str = help_field("SmolLM2-135M-Instruct", help="Model used when none is given.")
    models: dict[str, ModelEntry] = help_field({}, help="Registry name -> model entry.")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved, existing model: what the server serves and what the client asks for."""

    name: str
    """Registry name, or the directory's last path component (used in output directory names)."""
    path: Path
    """Absolute model directory."""
    served_name: str
    """Model name in API requests (vLLM --served-model-name)."""
    context_length: int
    """Usable context in tokens: min(model limit, served max_model_len)."""
    stop: tuple[str, ...] = ()
    """Chat stop strings to send with every request."""
    dtype: str = "auto"
    """vLLM --dtype."""


def load_registry(path: str | Path | None = None) -> ModelRegistry:
    """Read the model registry (default configs/models.yaml)."""
    return load_config(ModelRegistry, path or DEFAULT_REGISTRY)


def model_context_limit(model_dir: str | Path) -> int | None:
    """The model's own context limit from config.json / tokenizer_config.json (smallest given), or None."""
    model_dir = Path(model_dir)
    limits = []
    config = _read_json(model_dir / "config.json")
    for section in (config, config.get("text_config") or {}):  # multimodal configs nest the LM
        value = section.get("max_position_embeddings")
        if isinstance(value, int) and 0 < value < _UNSET_LENGTH:
            limits.append(value)
    value = _read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    if isinstance(value, (int, float)) and 0 < value < _UNSET_LENGTH:
        limits.append(int(value))
    return min(limits) if limits else None


def resolve_model(name_or_path: str | None = None, max_model_len: int | None = None,
                  registry: ModelRegistry | str | Path | None = None) -> ModelSpec:
    """Turn a registry name or a model directory into a `ModelSpec`.

    `max_model_len` (e.g. from configs/serving.yaml) overrides the registry's served context.
    A directory that is a registered model's path gets that entry's settings. Raises `ModelError`
    naming the missing directory or the unknown name.
    """
    reg = registry if isinstance(registry, ModelRegistry) else load_registry(registry)
    name_or_path = name_or_path or reg.default
    entry, name = reg.models.get(name_or_path), name_or_path
    if entry is None:
        candidate = resolve(name_or_path)
        if not candidate.is_dir():
            raise ModelError(
                f"model {name_or_path!r} is neither a registered name ({', '.join(sorted(reg.models))}) "
                f"nor an existing directory ({candidate})")
        name, entry = _entry_for_dir(reg, candidate)
    model_dir = resolve(entry.path)
    if not model_dir.is_dir():
        hint = "make warm-start" if model_dir.name.endswith("-warmstart") else "make setup"
        raise ModelError(f"model directory of {name!r} not found: {model_dir}"
                         + (f" (run `{hint}`)" if model_dir.parent == models_dir() else ""))
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a model directory: no config.json")
    native = model_context_limit(model_dir)
    served = max_model_len or entry.max_model_len
    lengths = [x for x in (native, served) if x]
    if not lengths:
        raise ModelError(f"context length of {model_dir} unknown: config.json has no max_position_embeddings; "
                         f"set max_model_len in configs/models.yaml or configs/serving.yaml")
    return ModelSpec(name=name, path=model_dir.resolve(), served_name=entry.served_name or name,
                     context_length=min(lengths), stop=tuple(entry.stop), dtype=entry.dtype)


def _entry_for_dir(reg: ModelRegistry, model_dir: Path) -> tuple[str, ModelEntry]:
    """A registered entry whose path is `model_dir`, else a plain entry named after the directory."""
    for name, entry in reg.models.items():
        if resolve(entry.path).resolve() == model_dir.resolve():
            return name, entry
    return model_dir.resolve().name, ModelEntry(path=str(model_dir))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


__all__ = ["ConfigError", "ModelEntry", "ModelError", "ModelRegistry", "ModelSpec", "load_registry",
           "model_context_limit", "resolve_model"]
