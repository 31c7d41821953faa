"""Model registry: MODEL on the command line is a registered name (configs/models.yaml) or a directory.

    spec = resolve_model("SmolLM2-135M-Instruct")          # or resolve_model("TreeDPO/saves/.../full/run")
    spec.path, spec.served_name, spec.context_length, spec.stop, spec.stop_token_ids

The context length is never hard-coded: it is the model's own limit (``max_position_embeddings`` in
config.json, ``model_max_length`` in tokenizer_config.json) capped by the served ``max_model_len``
(registry entry, or the serving config's override).

A directory that is not a registered path is named after the model, not the folder: a Hugging Face cache
snapshot ``.../models--Qwen--Qwen2.5-7B-Instruct/snapshots/<hash>`` is ``Qwen2.5-7B-Instruct``. When that name
(or the folder's) is a registered one, case aside, the directory gets that entry's settings. Its LLaMA-Factory
chat template (`spec.template`, what ``template: auto`` in TreeDPO/configs resolves to) is the entry's
``template``, else detected from the model's own chat template and config.json (`detect_template`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
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
    stop_token_ids: list[int] = help_field(
        [], help="Token ids that end a generation, sent with every request (vLLM's stop_token_ids), so a checkpoint "
                 "whose generation_config.json lacks its end-of-turn token still stops there; each must be a special "
                 "token of the model's tokenizer. Default for a directory without an entry: the end-of-turn token "
                 "of its detected chat family (llama3: <|eot_id|>, qwen/qwen3: <|im_end|>).")
    dtype: str = help_field("auto", help="vLLM --dtype: auto, bfloat16, float16 or float32.")
    template: str | None = help_field(
        None, help="LLaMA-Factory chat template for training (template: auto in TreeDPO/configs); default: "
                   "detected from the model's own chat template (detect_template).")


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
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a generation, sent with every request (`ModelEntry.stop_token_ids`)."""
    dtype: str = "auto"
    """vLLM --dtype."""
    template: str | None = None
    """LLaMA-Factory template name (registry entry, else `detect_template`; None: not recognised)."""


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
        candidates = model_dir_candidates(name_or_path, reg)
        candidate = next((c for c in candidates if c.is_dir()), None)
        if candidate is None:
            raise ModelError(
                f"model {name_or_path!r} is neither a registered name ({', '.join(sorted(reg.models))}) "
                f"nor an existing directory ({' or '.join(str(c) for c in candidates)})")
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
    template = entry.template or detect_template(model_dir)
    return ModelSpec(name=name, path=model_dir.resolve(), served_name=entry.served_name or name,
                     context_length=min(lengths), stop=tuple(entry.stop), dtype=entry.dtype, template=template,
                     stop_token_ids=stop_token_ids(name, entry, model_dir, template))


END_OF_TURN = {"llama3": "<|eot_id|>", "qwen": "<|im_end|>", "qwen3": "<|im_end|>"}
"""The end-of-turn token of each chat family (LLaMA-Factory template name), for directories without an entry."""


def special_tokens(model_dir: str | Path) -> dict[int, str]:
    """Id -> text of the tokenizer's added (special) tokens: tokenizer_config.json's added_tokens_decoder, else
    tokenizer.json's added_tokens; {} when neither file says."""
    model_dir = Path(model_dir)
    decoder = _read_json(model_dir / "tokenizer_config.json").get("added_tokens_decoder")
    if isinstance(decoder, dict) and decoder:
        return {int(i): str(t.get("content")) for i, t in decoder.items() if isinstance(t, dict) and str(i).isdigit()}
    added = _read_json(model_dir / "tokenizer.json").get("added_tokens") if (model_dir / "tokenizer.json").is_file() \
        else None
    if isinstance(added, list):
        return {int(t["id"]): str(t.get("content")) for t in added if isinstance(t, dict) and isinstance(t.get("id"), int)}
    return {}


def stop_token_ids(name: str, entry: ModelEntry, model_dir: Path, template: str | None) -> tuple[int, ...]:
    """The entry's `stop_token_ids`, each checked against the model's special tokens (a `ConfigError` naming the
    key for one that is not); an entry without any: the family's end-of-turn token (`END_OF_TURN`) when the
    tokenizer has it, else none."""
    wanted = END_OF_TURN.get(template or "")
    if not entry.stop_token_ids and not wanted:
        return ()
    tokens = special_tokens(model_dir)
    if entry.stop_token_ids:
        wrong = [i for i in entry.stop_token_ids if tokens and i not in tokens]
        if wrong:
            raise ConfigError(f"key 'models.{name}.stop_token_ids': {wrong} are not special tokens of {model_dir} "
                              f"(its end-of-turn tokens: {_named(tokens)})")
        return tuple(entry.stop_token_ids)
    return tuple(i for i, text in tokens.items() if text == wanted)


def _named(tokens: dict[int, str]) -> str:
    ends = {i: t for i, t in tokens.items() if t in END_OF_TURN.values() or "end" in t or "eot" in t}
    return ", ".join(f"{i} {t}" for i, t in sorted(ends.items())[:8]) or "none found"


def model_template(model_dir: str | Path, registry: ModelRegistry | str | Path | None = None) -> str | None:
    """LLaMA-Factory template of a model directory: its registry entry's `template` (the entry listing this path,
    else the one of its model's name), else `detect_template`; None when neither knows."""
    reg = registry if isinstance(registry, ModelRegistry) else load_registry(registry)
    _, entry = _entry_for_dir(reg, resolve(model_dir))
    return entry.template or detect_template(resolve(model_dir))


_HF_CACHE_REPO = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def model_dir_name(model_dir: str | Path) -> str:
    """The model's name for a directory: a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/<hash>``,
    what ``huggingface-cli download`` and ``from_pretrained`` leave) is NAME; any other directory is itself."""
    path = Path(model_dir).resolve()
    if path.parent.name == "snapshots":
        match = _HF_CACHE_REPO.match(path.parent.parent.name)
        if match:
            return match.group("name")
    return path.name


def model_dir_candidates(name_or_path: str | Path, registry: ModelRegistry | None = None) -> list[Path]:
    """Where the model `name_or_path` may be, in the one search order that serving (`resolve_model`) and
    training (`densepolicy.training.train.model_directory`) share: a registered name's path first, then the
    argument as a path (relative to the project root), then models/<name> for a bare name."""
    raw = str(name_or_path)
    reg = registry or load_registry()
    candidates = []
    entry = reg.models.get(raw)
    if entry is not None:
        candidates.append(resolve(entry.path))
    candidates.append(resolve(raw))
    if "/" not in raw and not raw.startswith("."):
        candidates.append(models_dir() / raw)
    return list(dict.fromkeys(candidates))


def _entry_for_dir(reg: ModelRegistry, model_dir: Path) -> tuple[str, ModelEntry]:
    """A registered entry whose path is `model_dir`; else the entry registered under the model's name
    (`model_dir_name`, case aside) with this directory as its path; else a plain entry of that name."""
    for name, entry in reg.models.items():
        if resolve(entry.path).resolve() == model_dir.resolve():
            return name, entry
    own = model_dir_name(model_dir)
    for name, entry in reg.models.items():
        if own.lower() in (name.lower(), (entry.served_name or "").lower()):
            return name, replace(entry, path=str(model_dir))
    return own, ModelEntry(path=str(model_dir))


def _chat_template(model_dir: Path) -> str:
    """The model's own chat template: chat_template.jinja, else tokenizer_config.json's chat_template."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return ""
    value = _read_json(model_dir / "tokenizer_config.json").get("chat_template")
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) else ""


def detect_template(model_dir: str | Path) -> str | None:
    """LLaMA-Factory's template for a model directory, from its own chat template and config.json:

    ``<|start_header_id|>`` (Llama-3 / 3.1 Instruct) -> llama3; ``<|im_start|>`` with model_type qwen3 -> qwen3,
    with another Qwen model_type / architecture or Qwen's system prompt -> qwen (Qwen2 / 2.5); ``<|im_start|>``
    with SmolLM's system prompt -> smollm2; anything else -> None
    (set ``template`` in configs/models.yaml or on the training command line).
    """
    model_dir = Path(model_dir)
    text = _chat_template(model_dir)
    config = _read_json(model_dir / "config.json")
    model_type = str(config.get("model_type") or (config.get("text_config") or {}).get("model_type") or "").lower()
    architectures = " ".join(str(a) for a in config.get("architectures") or []).lower()
    if "<|start_header_id|>" in text:
        return "llama3"
    if "<|im_start|>" in text:
        if model_type.startswith("qwen3") or "qwen3" in architectures:
            return "qwen3"
        if model_type.startswith("qwen") or "qwen" in architectures or "You are Qwen" in text:
            return "qwen"
        if "SmolLM" in text:
            return "smollm2"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


__all__ = ["END_OF_TURN", "ConfigError", "ModelEntry", "ModelError", "ModelRegistry", "ModelSpec", "detect_template",
           "load_registry", "model_context_limit", "model_dir_name", "model_template", "resolve_model",
           "special_tokens", "stop_token_ids"]
