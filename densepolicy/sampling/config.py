"""Typed settings of `sample_tree.py` (both methods) and the output naming of the original.

Resolution order (later wins): `configs/sampler.yaml` -> `configs/tasks/<dataset>.yaml` (its top-level
keys, then its `<method>:` section) -> the settings of `preset` (densepolicy.presets) -> `key=value`
overrides on the command line.

    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", ["base=3", "max_steps=4"])
    cfg.tree.base, cfg.max_steps, cfg.agent.max_turn    # 3, 4, None
    out = default_output_dir(cfg, "SmolLM2-135M-Instruct")   # eval_results/codeact_agent_tree.<m>/temperature_256_3_4

Settings of one method only are sections, each defined once where that method lives: `tree`
(`agents.tree.TreeSettings`: base, window_size, the pair rule, the selection weights, the original's
quirks; ignored by `codeact_agent`) and `agent` (`agents.codeact_agent.AgentSettings`: max_turn,
temperature; ignored by the tree). Everything else (max_steps, max_tokens, prompt_style, execution, ...)
serves both. A section's keys can be written with or without the section name (`tree.base=3` or
`base=3`, in YAML `tree: {base: 3}` or `base: 3`): the flat names are derived from the section's fields
(`flatten_settings`), never listed by hand, and are the names the shard sidecars and provenance records
store (`sampler_settings`), so run directories made before the sections existed still resume. A setting
of the other method given on the command line is logged as a warning naming the key and the method (the
loop and the launcher forward shared key lists to both methods); in a task YAML's `<method>:` section it
is an error.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from agents.codeact_agent import AgentSettings
from agents.tree import TreeSettings
from densepolicy.config import (ConfigError, Range, check_ranges, from_dict, help_field, merge_dicts, parse_overrides,
                                read_yaml, to_dict)
from densepolicy.paths import PROJECT_ROOT
from densepolicy.presets import with_preset

log = logging.getLogger(__name__)

METHODS = ("codeact_agent", "codeact_agent_tree")
CONFIG_DIR = PROJECT_ROOT / "configs"


@dataclass
class SamplerConfig:
    """Everything one worker needs. Defaults are the original's values where it had one."""

    # Keys of earlier versions: a config that names one is refused with the reason (not "unknown key").
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "gap_refresh": "both of its modes grew the same trees: the original's stored sibling gaps are refreshed "
                       "on the updated path, the only place values change (docs/deviations.md)",
    }

    # -- what to run -------------------------------------------------------------------------------
    method: Literal["codeact_agent", "codeact_agent_tree"] = help_field(
        "codeact_agent_tree", help="codeact_agent: greedy evaluation; codeact_agent_tree: tree sampling.")
    dataset: str = help_field("gsm8k", help="Dataset name (configs/tasks/<dataset>.yaml).")
    env: str = help_field("gsm8k", help="Env registry name (envs.load_env) or 'module:Factory' for a custom env.")
    split: str = help_field("train", help="Env split (tree: train splits; evaluation: test splits).")
    task_type: str | None = help_field(
        None, help="Keep only tasks whose task_info()['task_type'] equals this (alfworld_put: 'put').")
    data_dir: str | None = help_field(None, help="Data directory for the env (null = densepolicy.paths.data_dir()).")
    max_tasks: int | None = help_field(None, help="Use only the first N tasks of the split (before sharding).")
    task_ids: list[str] = help_field([], help="Explicit task ids (before sharding); empty = the whole split.")
    seed: int = help_field(62471893, help="Seed of everything: per-task RNGs and per-request seeds derive from it.")
    # -- agent (docs/original.md §2) ----------------------------------------------------------
    in_context_number: int = help_field(0, help="In-context examples in the prompt (GSM8K 8, MATH 1, else 0).")
    incontext_draw: Literal["task", "first_step"] = help_field(
        "task", help="Which in-context examples, in which order: one seeded draw per task (every node of a tree "
                     "shares the prompt prefix), or first_step = a fresh draw for every first-step node, as the "
                     "original (preset=paper; the server's prefix cache is then shared only below each first step).")
    prompt_style: Literal["compact", "original"] = help_field(
        "compact", help="compact: a short instruction, one line per tool, BabyAI observations in fewer tokens "
                        "(same information); original: the original's wording (preset=paper; docs/deviations.md). "
                        "The warm start's expert data must use the same style (configs/expert_data.yaml).")
    max_steps: int | None = help_field(
        None, help="Agent: step limit (ALFWorld/BabyAI 30). Tree: the tree depth (required).")
    max_tokens: int = help_field(512, help="Completion cap per step (the original had none; the fork 1024).")
    stop: list[str] = help_field(
        ["End Action"], help="Stop strings added to the model's own (one action per message); "
                             "a cut 'End Action' is restored in the stored message.")
    top_p: float = help_field(1.0, help="top_p of every request.")
    context_length: int | None = help_field(
        None, help="Model context in tokens; null = read from the model's config (densepolicy.serving.models).")
    min_completion_tokens: int = help_field(
        120, help="A step whose prompt leaves fewer free context tokens ends the run as context_overflow.")
    agent: AgentSettings = help_field(
        default_factory=AgentSettings, help="Settings of codeact_agent only (agents.codeact_agent.AgentSettings).")
    # -- tree (docs/original.md §3) -----------------------------------------------------------
    tree: TreeSettings = help_field(
        default_factory=TreeSettings, help="Settings of codeact_agent_tree only (agents.tree.TreeSettings).")
    preset: Literal["none", "paper"] = help_field(
        "none", help="paper: every quirk of the original set to its original value (tree.visit_counting, "
                     "select_leaves, dedup, update_rows, overflow_counts_as_failure, arithmetic, prompt_style, ...); "
                     "keys given on the command line win over the preset (docs/deviations.md).")
    # -- execution ---------------------------------------------------------------------------------
    execution: Literal["concurrent", "sequential"] = help_field(
        "concurrent", help="concurrent: leaves of a window and several tasks in flight, forked episodes; "
                           "sequential: the original (one request at a time, replay from reset per leaf).")
    task_concurrency: int = help_field(4, help="Tasks processed at once by one worker (concurrent mode).")
    batch_siblings: bool = help_field(
        False, help="Ask for all same-temperature siblings of a parent in one request (n>1).")
    max_live_episodes: int = help_field(
        256, help="Live forked episodes kept per worker; the least recently used are closed (and recreated by "
                  "forking the nearest live ancestor + replay when needed).")
    env_threads: int = help_field(16, help="Threads running blocking env calls (act/fork/close).")
    max_concurrency: int = help_field(64, help="LLM requests in flight per worker.")
    request_timeout_s: float = help_field(
        300.0, help="Per-attempt timeout of one LLM request (a CPU server can need minutes for 512 tokens; "
                    "a hung server is retried, then reported, after this long).")
    max_retries: int | None = help_field(
        None, help="Most retries of one failed LLM request (null = as many as retry_window_s allows).")
    backoff_s: float = help_field(0.5, help="First retry delay of the LLM client (doubles per retry, at most 10 s).")
    retry_window_s: float = help_field(
        300.0, help="Connection errors, HTTP 5xx and timeouts are retried until this long after a request's "
                    "first failure (longer than a server restart), then the worker stops with exit code 3.")
    lock_stale_s: float = help_field(
        300.0, help="A shard lock of a worker on another host is taken over after this long without heartbeat.")
    on_task_error: Literal["record", "raise"] = help_field(
        "record", help="A task that raises (not a server fault): record a row with status=error, or stop the run.")
    progress: bool = help_field(True, help="Show a tqdm progress bar.")

    def __post_init__(self) -> None:
        check_ranges(self, RANGES)
        if self.method == "codeact_agent_tree":
            if self.max_steps is None or self.max_steps < 1:
                raise ConfigError("key 'max_steps' must be a positive integer for codeact_agent_tree")
        elif self.max_steps is None and self.agent.max_turn is None:
            raise ConfigError("codeact_agent needs 'max_steps' or 'max_turn'")


RANGES: dict[str, Range] = {
    "max_tasks": (1, None, False), "in_context_number": (0, None, False), "max_steps": (1, None, False),
    "max_tokens": (1, None, False), "top_p": (0, 1, True), "context_length": (1, None, False),
    "min_completion_tokens": (0, None, False), "task_concurrency": (1, None, False),
    "max_live_episodes": (1, None, False), "env_threads": (1, None, False), "max_concurrency": (1, None, False),
    "request_timeout_s": (0, None, True), "max_retries": (0, None, False), "backoff_s": (0, None, False),
    "retry_window_s": (0, None, False), "lock_stale_s": (0, None, True),
}
"""The range of every numeric setting outside the sections (theirs: agents.tree.TREE_RANGES,
agents.codeact_agent.AGENT_RANGES); seed is free."""

SECTIONS: dict[str, type] = {f.name: t for f in dataclasses.fields(SamplerConfig)
                             if dataclasses.is_dataclass(t := typing.get_type_hints(SamplerConfig)[f.name])}
"""The method-specific sections of `SamplerConfig` (name -> settings class)."""
SECTION_METHODS = {"agent": "codeact_agent", "tree": "codeact_agent_tree"}
"""The one method that reads each section (the other ignores it)."""


def other_method_keys(method: str, flat: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, method that reads it) for each key of `flat` that is a setting of a method other than `method`."""
    found = []
    for section, cls in SECTIONS.items():
        if SECTION_METHODS[section] != method:
            names = {f.name for f in dataclasses.fields(cls)}
            found += [(key, SECTION_METHODS[section]) for key in sorted(flat) if key in names]
    return found


def flatten_settings(data: dict[str, Any], source: str = "<dict>") -> dict[str, Any]:
    """Sampler settings with each section's keys at the top level (`{"tree": {"base": 3}}` -> `{"base": 3}`).

    The form shard sidecars, provenance records and presets use. Keys a section does not define stay in it
    (so the error names them as `tree.<key>`); a key given both ways with different values is refused.
    """
    out = dict(data)
    for section, cls in SECTIONS.items():
        inner = out.get(section)
        if not isinstance(inner, dict):
            continue
        names = {f.name for f in dataclasses.fields(cls)}
        for key in sorted(set(inner) & names):
            if key in out and out[key] != inner[key]:
                raise ConfigError(f"{source}: key {key!r} is given twice, as {key} ({out[key]!r}) and as "
                                  f"{section}.{key} ({inner[key]!r}); give one of them")
            out[key] = inner[key]
        rest = {k: v for k, v in inner.items() if k not in names}
        if rest:
            out[section] = rest
        else:
            del out[section]
    return out


def nest_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten_settings`: each section's keys moved into it (the form of `SamplerConfig`)."""
    out = dict(flat)
    for section, cls in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        moved = {k: out.pop(k) for k in list(out) if k in names}
        if moved:
            given = out.get(section)
            out[section] = {**given, **moved} if isinstance(given, dict) else moved if given is None else given
    return out


def sampler_settings(cfg: SamplerConfig) -> dict[str, Any]:
    """Every setting of `cfg` under its flat key (`flatten_settings`), as sidecars and provenance record them."""
    return flatten_settings(to_dict(cfg))


def setting_fields() -> dict[str, tuple[dataclasses.Field, Any]]:
    """Flat key -> (field, type) of every setting, the sections' included."""
    out = {}
    for cls in (SamplerConfig, *SECTIONS.values()):
        hints = typing.get_type_hints(cls)
        out.update({f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in SECTIONS})
    return out


def setting_defaults() -> dict[str, Any]:
    """Flat key -> default of every setting that has one."""
    return {name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for name, (f, _) in setting_fields().items()
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def task_config_path(dataset: str, config_dir: Path = CONFIG_DIR) -> Path:
    """configs/tasks/<dataset>.yaml (a clear error lists the known datasets)."""
    path = config_dir / "tasks" / f"{dataset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir / "tasks").glob("*.yaml"))
        raise ConfigError(f"unknown dataset {dataset!r}: no {path} (known: {', '.join(known)})")
    return path


def resolve_sampler_config(method: str, dataset: str, overrides: list[str] | None = None,
                           config_dir: str | os.PathLike | None = None) -> SamplerConfig:
    """Merge sampler.yaml, the dataset's task YAML (common keys + `<method>` section) and overrides."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    cdir = Path(config_dir) if config_dir else CONFIG_DIR
    base_path = cdir / "sampler.yaml"
    data = flatten_settings(read_yaml(base_path), str(base_path)) if base_path.is_file() else {}
    task_path = task_config_path(dataset, cdir)
    task = read_yaml(task_path)
    sections = {m: flatten_settings(task.pop(m, None) or {}, f"{task_path}: {m}") for m in METHODS}
    for m, section in sections.items():
        for key, reader in other_method_keys(m, section)[:1]:
            raise ConfigError(f"{task_path}: key {key!r} in section {m!r} is a setting of {reader} only; "
                              f"move it to section {reader!r}")
    data = merge_dicts(data, flatten_settings(task, str(task_path)))
    data = merge_dicts(data, sections[method])
    data.update(method=method, dataset=dataset)
    cfg = from_dict(SamplerConfig, nest_settings(data), f"{base_path} + {task_path}")
    update = flatten_settings(parse_overrides(overrides), "command line") if overrides else {}
    for key in ("method", "dataset"):
        if key in update:
            raise ConfigError(f"command line: {key!r} is given as a positional argument, not key=value")
    for key, reader in other_method_keys(method, update):
        log.warning("command line: key %r is a setting of %s only; method %s ignores it", key, reader, method)
    if update or cfg.preset != "none":
        merged = with_preset("sampler", sampler_settings(cfg), update)
        cfg = from_dict(SamplerConfig, nest_settings(merged), "command line")
    return cfg


def sanitize_model_name(model: str) -> str:
    """A model name or path as one directory component (the last path part; '/' never nests dirs)."""
    name = str(model).rstrip("/")
    if os.sep in name or "/" in name:
        name = Path(name).name if Path(name).exists() else name.replace("/", "_")
    return name


def run_name(cfg: SamplerConfig) -> str:
    """`temperature_<pairs>_<base>_<steps>` (tree) or `<max_steps>.<max_turn>.<in_context>` (agent)."""
    if cfg.method == "codeact_agent_tree":
        return f"{cfg.tree.contrastive_method}_{cfg.tree.max_sample_number}_{cfg.tree.base}_{cfg.max_steps}"
    return f"{cfg.max_steps}.{cfg.agent.max_turn}.{cfg.in_context_number}"


def default_output_dir(cfg: SamplerConfig, model: str, root: str | os.PathLike | None = None) -> Path:
    """eval_results/<method>.<model>/<run_name>/ (the original's naming), under `root` (default project)."""
    base = Path(root) if root is not None else PROJECT_ROOT / "eval_results"
    return base / f"{cfg.method}.{sanitize_model_name(model)}" / run_name(cfg)


def shard_file_stem(cfg: SamplerConfig, shard: int | str) -> str:
    """`<dataset>.<split>.<K>` (K = shard index, or "None" for merged files)."""
    return f"{cfg.dataset}.{cfg.split}.{shard}"


def shard_slice(items: Sequence[str], shard: int, num_shards: int) -> list[str]:
    """Contiguous shard `shard` of `num_shards` (size ceil(len/N); the last one gets the tail)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(f"--shard must be in [0, --num_shards), got shard={shard} num_shards={num_shards}")
    size = math.ceil(len(items) / num_shards) if items else 0
    return list(items[shard * size:(shard + 1) * size])
