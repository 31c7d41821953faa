"""Build the multi-turn SFT dataset of expert trajectories for the warm start.

    cfg = load_expert_data_config(["gsm8k=50", "babyai=50"])
    summary = build_expert_dataset(cfg)        # writes TreeDPO/data/expert_sft.json + .summary.json

For each env, the train tasks (minus any whose content is an evaluation task, see
`expert.splits`) are tried in a seeded order; the env's expert proposes messages, they are replayed
through `envs` with the agent's own prompt and step function (`expert.replay`; prompt and observations in
`cfg.prompt_style`, the sampler's style), and the trajectory is
kept if it ends in success and fits `max_tokens`, until `cfg.<env>` are kept. The output is a
LLaMA-Factory ShareGPT dataset (human/gpt turns, ending with the last assistant turn; assistant turns
are trained, the rest masked by `train_on_prompt: false`) registered in `dataset_info.json`.
Same config -> same file.
"""
from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from densepolicy.config import help_field, load_config
from densepolicy.paths import PROJECT_ROOT, resolve
from densepolicy.postprocess.lf_dataset import ROLE_TO_SHAREGPT, load_tokenizer, register_dataset
from densepolicy.serving.chat_template import content_rules, served_sharegpt
from densepolicy.results_io import ensure_new, write_json_atomic
from densepolicy.training.expert import (EXPERT_ENVS, ExpertOptions, ExpertPlan, accepted, expert_for, expert_plan,
                                         expert_plans, replay)
from densepolicy.training.expert.splits import evaluation_keys, task_key
from envs import env_spec, load_env

log = logging.getLogger(__name__)
CONFIG_PATH = PROJECT_ROOT / "configs" / "expert_data.yaml"
LOG_EVERY_S = 30.0


@dataclass
class ExpertDataConfig:
    """Settings of `build_expert_dataset` (configs/expert_data.yaml)."""

    name: str = help_field("expert_sft", help="Dataset name: <dataset_dir>/<name>.json, registered under it.")
    dataset_dir: str = help_field("TreeDPO/data", help="LLaMA-Factory dataset_dir (holds dataset_info.json).")
    seed: int = help_field(42, help="Seed of the order in which train tasks are tried.")
    gsm8k: int = help_field(300, help="GSM8K trajectories wanted.")
    babyai: int = help_field(300, help="BabyAI trajectories wanted.")
    alfworld: int = help_field(100, help="ALFWorld trajectories wanted.")
    math: int = help_field(0, help="MATH trajectories wanted.")
    max_tokens: int = help_field(2048, help="Drop trajectories longer than this many tokens (chat template).")
    prompt_style: Literal["compact", "original"] = help_field(
        "compact", help="Prompt and observation wording of the trajectories: the `prompt_style` the sampler uses "
                        "with the warm-started model (configs/sampler.yaml), so that it sees the prompts it was "
                        "trained on.")
    model: str = help_field("", help="Tokenizer (configs/models.yaml name or directory); '' = the embedded model.")
    env_threads: int = help_field(2, help="Tasks replayed in parallel.")
    data_dir: str | None = help_field(None, help="Offline data directory (null = densepolicy.paths.data_dir()).")
    babyai_train_seeds: int = help_field(25, help="BabyAI train split: seeds 1..N of each of the 40 levels.")
    babyai_search_budget: int = help_field(60, help="Game actions the high-level plan search may try per task.")
    babyai_max_high_level_actions: int = help_field(12, help="Longest high-level plan kept.")
    babyai_bot: bool = help_field(False, help="Fall back to BabyAIBot's primitive actions (slow; few fit max_tokens).")
    babyai_bot_timeout_s: float = help_field(10.0, help="Wall-clock limit of one BabyAIBot run (it can hang).")
    babyai_bot_max_actions: int = help_field(12, help="Longest BabyAIBot action list kept.")
    alfworld_max_steps: int = help_field(40, help="Longest ALFWorld expert plan kept.")

    def __post_init__(self) -> None:
        for env_name in EXPERT_ENVS:
            if getattr(self, env_name) < 0:
                raise ValueError(f"key {env_name!r} must be >= 0, got {getattr(self, env_name)}")
        for key in ("max_tokens", "env_threads", "babyai_train_seeds", "babyai_search_budget",
                    "babyai_max_high_level_actions", "babyai_bot_max_actions", "alfworld_max_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.babyai_bot_timeout_s <= 0:
            raise ValueError(f"key 'babyai_bot_timeout_s' must be > 0, got {self.babyai_bot_timeout_s}")
        if not self.name or "/" in self.name:
            raise ValueError(f"key 'name' must be a plain file stem, got {self.name!r}")

    def wanted(self) -> dict[str, int]:
        """env -> trajectories wanted (envs with 0 left out)."""
        return {e: getattr(self, e) for e in EXPERT_ENVS if getattr(self, e) > 0}

    def options(self) -> ExpertOptions:
        """The experts' knobs: this config's fields named as ExpertOptions' fields."""
        return ExpertOptions(**{f.name: getattr(self, f.name) for f in fields(ExpertOptions)})


@dataclass
class ExpertDataSummary:
    """What `build_expert_dataset` wrote; `counts`/`attempted` per env, `token_stats` env -> mean/median/max."""

    name: str
    path: Path
    counts: dict[str, int] = field(default_factory=dict)
    attempted: dict[str, int] = field(default_factory=dict)
    token_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)  # env -> expert source -> kept
    dropped_long: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # env errors during a replay (counted as failures)
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """Per-env counts and token lengths, one line per env."""
        lines = [f"{'env':9s} {'kept':>5s} {'tried':>6s} {'rate':>5s} {'long':>5s} {'tok mean':>8s} "
                 f"{'median':>6s} {'max':>5s} {'asst':>5s} {'time s':>7s}  sources"]
        for env_name in self.attempted:
            n, tried, stats = self.counts.get(env_name, 0), self.attempted[env_name], self.token_stats.get(env_name, {})
            rate = f"{n / tried:.2f}" if tried else "-"
            lines.append(f"{env_name:9s} {n:5d} {tried:6d} {rate:>5s} {self.dropped_long.get(env_name, 0):5d} "
                         f"{stats.get('mean', 0):8.0f} {stats.get('median', 0):6.0f} {stats.get('max', 0):5.0f} "
                         f"{stats.get('assistant_mean', 0):5.0f} {self.seconds.get(env_name, 0):7.1f}  "
                         + ", ".join(f"{k} {v}" for k, v in self.sources.get(env_name, {}).items()))
        return "\n".join(lines)


def load_expert_data_config(overrides: Sequence[str] = ()) -> ExpertDataConfig:
    """configs/expert_data.yaml with `key=value` overrides."""
    return load_config(ExpertDataConfig, CONFIG_PATH, list(overrides))


def chat_tokens(tokenizer: Any, messages: list[dict]) -> int:
    """Tokens of a whole chat with the model's chat template."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def to_sharegpt(messages: list[dict]) -> list[dict[str, str]]:
    """User/assistant messages -> ShareGPT turns (must alternate, start with user, end with assistant)."""
    turns = []
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"message {i} has role {message['role']!r}, expected {expected!r}")
        turns.append({"from": ROLE_TO_SHAREGPT[expected], "value": message["content"]})
    if not turns or turns[-1]["from"] != "gpt":
        raise ValueError("a trajectory must end with an assistant message")
    return turns


def dataset_info_entry(name: str) -> dict[str, Any]:
    """The `dataset_info.json` entry of a ShareGPT multi-turn SFT file `<name>.json`."""
    return {"file_name": f"{name}.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}}


def candidate_tasks(env: Any, seed: int, excluded: set[str]) -> list[str]:
    """Train task ids in a seeded order, without any whose content is an evaluation task."""
    ids = [t for t in env.task_ids() if task_key(env, t) not in excluded]
    random.Random(f"{seed}|{env.name}").shuffle(ids)
    return ids


def _replay_accepted(env: Any, task_id: str, plan: ExpertPlan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    try:
        trajectory = replay(env, task_id, plan.messages)
    except Exception as exc:  # noqa: BLE001 - e.g. a game host that did not load in time on a loaded machine
        log.warning("expert replay of %s %s failed: %s", env.name, task_id, exc)
        return {"task_id": task_id, "error": f"{type(exc).__name__}: {exc}"}
    if not accepted(env, task_id, trajectory):
        return None
    return {"task_id": task_id, "source": plan.source, "messages": trajectory.messages}


def _attempt_batch(env: Any, batch: list[str], options: ExpertOptions, pool: ThreadPoolExecutor) -> list:
    """Plan + replay of each task, in order. An expert that plans batches (BabyAI: one bot process for all)
    plans the batch first; elsewhere each thread plans and replays its own task, so one task's replay overlaps
    another's plan."""
    if expert_for(env.name).plans is not None:
        plans = expert_plans(env, batch, options, pool.map)
        return list(pool.map(lambda tp: _replay_accepted(env, *tp), zip(batch, plans)))
    return list(pool.map(lambda t: _replay_accepted(env, t, expert_plan(env, t, options)), batch))


def _env_kwargs(cfg: ExpertDataConfig, env_name: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"data_dir": cfg.data_dir} if cfg.data_dir else {}
    train_env_kwargs = expert_for(env_name).train_env_kwargs
    return {**kwargs, **train_env_kwargs(cfg.options())} if train_env_kwargs else kwargs


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "max": 0.0}
    return {"mean": round(statistics.mean(values), 1), "median": float(statistics.median(values)),
            "max": float(max(values))}


def collect_env(cfg: ExpertDataConfig, env_name: str, wanted: int, tokenizer: Any,
                summary: ExpertDataSummary, log=print) -> list[dict[str, Any]]:
    """Kept records of one env (first `wanted` successes in the seeded task order)."""
    started = time.monotonic()
    env = load_env(env_name, split=env_spec(env_name).train_split, prompt_style=cfg.prompt_style,
                   **_env_kwargs(cfg, env_name))
    records: list[dict[str, Any]] = []
    tried = long = errors = 0
    tokens: list[int] = []
    assistant_tokens: list[int] = []
    sources: dict[str, int] = {}
    last_log = started
    try:
        candidates = candidate_tasks(env, cfg.seed, evaluation_keys(env_name, cfg.data_dir))
        chunk = expert_for(env_name).batch * cfg.env_threads
        with ThreadPoolExecutor(cfg.env_threads, thread_name_prefix=f"expert-{env_name}") as pool:
            for start in range(0, len(candidates), chunk):
                batch = candidates[start:start + chunk]
                for result in _attempt_batch(env, batch, cfg.options(), pool):
                    if len(records) >= wanted:
                        break
                    tried += 1
                    if result is None:
                        continue
                    if "error" in result:
                        errors += 1
                        continue
                    n_tokens = chat_tokens(tokenizer, result["messages"])
                    if n_tokens > cfg.max_tokens:
                        long += 1
                        continue
                    tokens.append(n_tokens)
                    assistant_tokens.append(sum(len(tokenizer.encode(m["content"], add_special_tokens=False))
                                                for m in result["messages"] if m["role"] == "assistant"))
                    sources[result["source"]] = sources.get(result["source"], 0) + 1
                    records.append({"conversations": to_sharegpt(result["messages"]), "env": env_name,
                                    "task_id": result["task_id"], "source": result["source"],
                                    "tokens": n_tokens})
                if len(records) >= wanted:
                    break
                if time.monotonic() - last_log >= LOG_EVERY_S:
                    last_log = time.monotonic()
                    log(f"  {env_name}: {len(records)}/{wanted} kept after {tried} tried "
                        f"({last_log - started:.0f} s)")
    finally:
        env.close()
    summary.counts[env_name], summary.attempted[env_name], summary.dropped_long[env_name] = len(records), tried, long
    summary.token_stats[env_name] = {**_stats(tokens), "assistant_mean": round(statistics.mean(assistant_tokens), 1)
                                     if assistant_tokens else 0.0}
    summary.sources[env_name] = dict(sorted(sources.items()))
    summary.errors[env_name] = errors
    summary.seconds[env_name] = round(time.monotonic() - started, 1)
    return records


def build_expert_dataset(cfg: ExpertDataConfig, dataset_dir: Path | None = None,
                         overwrite: bool = False) -> ExpertDataSummary:
    """Build, write and register the expert SFT dataset; prints per-env counts and token lengths.

    Refuses to replace an existing `<name>.json` unless `overwrite`."""
    out_dir = Path(dataset_dir) if dataset_dir is not None else resolve(cfg.dataset_dir)
    path = ensure_new(out_dir / f"{cfg.name}.json", overwrite)
    tokenizer = load_tokenizer(cfg.model)
    summary = ExpertDataSummary(name=cfg.name, path=path)
    records: list[dict[str, Any]] = []
    for env_name, wanted in cfg.wanted().items():
        print(f"{env_name}: collecting {wanted} expert trajectories", flush=True)
        records += collect_env(cfg, env_name, wanted, tokenizer, summary,
                               log=lambda text: print(text, flush=True))
    rules = content_rules(tokenizer)  # contents as the served chat template renders them (Llama-3 trims them)
    records = [served_sharegpt(record, rules) for record in records]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, records, indent=1)
    register_dataset(out_dir / "dataset_info.json", cfg.name, dataset_info_entry(cfg.name))
    write_json_atomic(out_dir / f"{cfg.name}.summary.json",
                      {"name": cfg.name, "file": path.name, "counts": summary.counts, "attempted": summary.attempted,
                       "dropped_long": summary.dropped_long, "errors": summary.errors,
                       "token_stats": summary.token_stats, "sources": summary.sources, "seconds": summary.seconds,
                       "config": asdict(cfg)})
    print(summary.table(), flush=True)
    if any(summary.errors.values()):
        print(f"env errors during replays (counted as failures): {summary.errors}", flush=True)
    print(f"wrote {len(records)} trajectories to {path}; registered {cfg.name!r} in "
          f"{out_dir / 'dataset_info.json'}", flush=True)
    return summary
