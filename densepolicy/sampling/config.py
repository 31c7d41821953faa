"""Typed settings of `sample_tree.py` (both methods) and the output naming of the original.

Resolution order (later wins): `configs/sampler.yaml` -> `configs/tasks/<dataset>.yaml` (its top-level
keys, then its `<method>:` section) -> the settings of `preset` (densepolicy.presets) -> `key=value`
overrides on the command line.

    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", ["base=3", "max_steps=4"])
    out = default_output_dir(cfg, "SmolLM2-135M-Instruct")   # eval_results/codeact_agent_tree.<m>/temperature_256_3_4
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from densepolicy.config import ConfigError, from_dict, help_field, merge_dicts, parse_overrides, read_yaml, to_dict
from densepolicy.paths import PROJECT_ROOT
from densepolicy.presets import with_preset

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
    max_turn: int | None = help_field(None, help="Agent: answer-attempt limit (math 10); the tree ignores it.")
    max_tokens: int = help_field(512, help="Completion cap per step (the original had none; the fork 1024).")
    stop: list[str] = help_field(
        ["End Action"], help="Stop strings added to the model's own (one action per message); "
                             "a cut 'End Action' is restored in the stored message.")
    temperature: float = help_field(0.0, help="Agent: sampling temperature (greedy evaluation).")
    top_p: float = help_field(1.0, help="top_p of every request.")
    context_length: int | None = help_field(
        None, help="Model context in tokens; null = read from the model's config (densepolicy.serving.models).")
    min_completion_tokens: int = help_field(
        120, help="A step whose prompt leaves fewer free context tokens ends the run as context_overflow.")
    # -- tree (docs/original.md §3) -----------------------------------------------------------
    base: int = help_field(10, help="Branch labels per step (labels 0..base-1).")
    max_sample_number: int = help_field(512, help="Stop a task after this many qualifying sibling pairs.")
    window_size: int = help_field(8, help="Leaves run per iteration (all in flight together).")
    contrastive_method: Literal["temperature", "sampling"] = help_field(
        "temperature", help="temperature: label -> temperature map; sampling: T=1.0 for every label.")
    temperature_cycle: list[float] = help_field(
        [0.7, 1.0, 0.5], help="Temperature of label k>=1 is temperature_cycle[k % 3] (label 0 is greedy).")
    max_runs: int = help_field(1000, help="Run cap per task (finished leaves).")
    max_empty_iterations: int = help_field(1000, help="Cap on iterations that produced no proposal.")
    proposal_factor: int = help_field(3, help="Random suffix draws = proposal_factor * proposals_per_window * window.")
    proposals_per_window: int = help_field(2, help="Distinct proposals kept before de-dup = this * window_size.")
    thre_value: float = help_field(0.5, help="Pair rule: minimum value gap.")
    thre_max: int = help_field(8, help="Pair rule: visits >= min(floor(2**avg remaining depth), thre_max).")
    gap_weight: float = help_field(0.8, help="Selection: weight of max sibling gap ** gap_power.")
    gap_power: float = help_field(0.25, help="Selection: exponent of the sibling gap.")
    depth_weight: float = help_field(0.2, help="Selection: weight of avg remaining depth / max_steps.")
    explore_weight: float = help_field(2.0, help="Selection: weight of sqrt(1+v)/(2+v).")
    preset: Literal["none", "paper"] = help_field(
        "none", help="paper: every quirk of the original below set to its original value (visit_counting, "
                     "select_leaves, dedup, update_rows, overflow_counts_as_failure, arithmetic, ...); "
                     "keys given on the command line win over the preset (docs/deviations.md).")
    visit_counting: Literal["fixed", "faithful"] = help_field(
        "fixed", help="fixed: visits = finished runs; faithful: the original's +2 per revisit, +1 per selection.")
    select_leaves: bool = help_field(False, help="True = the original: selection may pick nodes that cannot expand.")
    dedup: Literal["fixed", "faithful"] = help_field(
        "fixed", help="fixed: every finished run blocks its extensions; faithful: only successful runs.")
    update_rows: Literal["fixed", "faithful"] = help_field(
        "fixed", help="fixed: update stats with the new runs; faithful: the original's update with the last "
                      "len(queue) rows, which ends the task with an error after a duplicate run (as the original crashed).")
    overflow_counts_as_failure: bool = help_field(
        False, help="True = the original: a context-overflow run is a failed leaf in the value tree.")
    arithmetic: Literal["fixed", "faithful"] = help_field(
        "fixed", help="fixed: node value = plain mean of the children, values within 1e-9 are equal (also in the "
                      "pair gap test); faithful: the original's floats (np.mean in label order, exact comparisons, "
                      "its rounding of the selection score).")
    stop_if_uniform_after: int = help_field(
        0, help="> 0: stop a tree once this many runs finished all with the same outcome (all solved or all "
                "failed: no sibling pair possible), so its budget goes to other tasks; 0 = never (the original).")
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
        for key, (low, high, low_open) in RANGES.items():
            value = getattr(self, key)
            for item in (value if isinstance(value, list) else [value]):
                if item is None:
                    continue
                if isinstance(item, float) and not math.isfinite(item):
                    raise ConfigError(f"key {key!r} must be a finite number, got {item!r}")
                if (item <= low if low_open else item < low) or (high is not None and item > high):
                    bounds = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
                    raise ConfigError(f"key {key!r} must be {bounds}, got {item!r}")
        if self.method == "codeact_agent_tree":
            if self.max_steps is None or self.max_steps < 1:
                raise ConfigError("key 'max_steps' must be a positive integer for codeact_agent_tree")
        elif self.max_steps is None and self.max_turn is None:
            raise ConfigError("codeact_agent needs 'max_steps' or 'max_turn'")
        if not self.temperature_cycle:
            raise ConfigError("key 'temperature_cycle' must not be empty")


# (lowest, highest or None, lowest excluded) of every numeric setting (lists: of each item); seed is free.
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "max_tasks": (1, None, False), "in_context_number": (0, None, False), "max_steps": (1, None, False),
    "max_turn": (1, None, False), "max_tokens": (1, None, False), "temperature": (0, None, False),
    "top_p": (0, 1, True), "context_length": (1, None, False), "min_completion_tokens": (0, None, False),
    "base": (1, None, False), "max_sample_number": (1, None, False), "window_size": (1, None, False),
    "temperature_cycle": (0, None, False), "max_runs": (1, None, False), "max_empty_iterations": (1, None, False),
    "proposal_factor": (1, None, False), "proposals_per_window": (1, None, False), "thre_value": (0, 1, False),
    "thre_max": (1, None, False), "gap_weight": (0, None, False), "gap_power": (0, None, True),
    "depth_weight": (0, None, False), "explore_weight": (0, None, False), "task_concurrency": (1, None, False),
    "max_live_episodes": (1, None, False), "env_threads": (1, None, False), "max_concurrency": (1, None, False),
    "request_timeout_s": (0, None, True), "max_retries": (0, None, False), "backoff_s": (0, None, False),
    "retry_window_s": (0, None, False), "lock_stale_s": (0, None, True), "stop_if_uniform_after": (0, None, False),
}


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
    data = read_yaml(base_path) if base_path.is_file() else {}
    task_path = task_config_path(dataset, cdir)
    task = read_yaml(task_path)
    sections = {m: task.pop(m, None) or {} for m in METHODS}
    data = merge_dicts(data, task)
    data = merge_dicts(data, sections[method])
    data.update(method=method, dataset=dataset)
    cfg = from_dict(SamplerConfig, data, f"{base_path} + {task_path}")
    update = parse_overrides(overrides) if overrides else {}
    for key in ("method", "dataset"):
        if key in update:
            raise ConfigError(f"command line: {key!r} is given as a positional argument, not key=value")
    if update or cfg.preset != "none":
        cfg = from_dict(SamplerConfig, with_preset("sampler", to_dict(cfg), update), "command line")
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
        return f"{cfg.contrastive_method}_{cfg.max_sample_number}_{cfg.base}_{cfg.max_steps}"
    return f"{cfg.max_steps}.{cfg.max_turn}.{cfg.in_context_number}"


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
