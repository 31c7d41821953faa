"""One sampling/evaluation worker: shard K of N of a dataset, resumable, many tasks in flight.

`sample_tree.py` is a thin CLI over `run_worker`. Outputs (docs/formats.md) go to
`<output_dir>/<dataset>.<split>.<K>.csv` (+ `trees/…jsonl` for the tree, `state/…` while running).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.codeact_agent import run_agent_task
from agents.codeact_agent_tree import EpisodePool, TreeTask
from agents.runtime import TokenCounter, WorkerContext
from densepolicy.config import ConfigError
from densepolicy.file_lock import cancel_on_signals, terminate_on_signals
from densepolicy.paths import data_dir
from densepolicy.results_io import is_fix_then_rerun
from densepolicy.sampling.config import SamplerConfig, shard_file_stem, shard_slice
from densepolicy.sampling.run_record import record_sampling_shard
from densepolicy.sampling.shard_identity import check_shard_settings, lock_shard, record_shard_settings
from densepolicy.sampling.shard_writer import ShardWriter
from densepolicy.serving.llm_client import ContextLengthError, LLMClient, LLMError, LLMRejectedError
from densepolicy.serving.models import ModelError, resolve_model
from envs import load_env
from envs.base import EnvError

log = logging.getLogger(__name__)


class ServerDownError(RuntimeError):
    """The LLM server kept failing after all retries; finished work is saved and the run can resume."""


class ServerRejectedError(RuntimeError):
    """The LLM server refused a request in a way a rerun cannot fix (unknown model, bad request,
    replies that stay malformed); the message is the server's."""


def load_task_env(cfg: SamplerConfig) -> Any:
    """The env of `cfg.env`: a registry name (envs.load_env) or 'module:Factory' (custom envs, tests),
    rendering observations in `cfg.prompt_style`. A missing data directory or data file is a `ConfigError`
    naming it."""
    kwargs = {"data_dir": cfg.data_dir} if cfg.data_dir else {}
    if cfg.data_dir and not data_dir(cfg.data_dir).is_dir():
        raise ConfigError(f"key 'data_dir': {data_dir(cfg.data_dir)} is not a directory")
    if ":" in cfg.env:
        module, factory = cfg.env.split(":", 1)
        try:
            env = getattr(importlib.import_module(module), factory)(split=cfg.split, **kwargs)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"key 'env': cannot load custom env {cfg.env!r}: {exc}") from None
        env.prompt_style = cfg.prompt_style
        return env
    try:
        return load_env(cfg.env, split=cfg.split, prompt_style=cfg.prompt_style, **kwargs)
    except EnvError as exc:
        raise ConfigError(f"env {cfg.env!r} ({cfg.split}): {exc}") from None


def select_tasks(env: Any, cfg: SamplerConfig) -> list[str]:
    """The split's task ids, filtered by `task_type`, `task_ids` and `max_tasks` (before sharding)."""
    ids = [str(t) for t in env.task_ids()]
    if cfg.task_ids:
        known = set(ids)
        wanted = [str(t) for t in cfg.task_ids]
        missing = [t for t in wanted if t not in known]
        if missing:
            raise ConfigError(f"key 'task_ids': {missing[0]!r} is not a task of {cfg.env}/{cfg.split}")
        ids = wanted
    if cfg.task_type:
        ids = [t for t in ids if env.task_info(t).get("task_type") == cfg.task_type]
        if not ids:
            raise ConfigError(f"key 'task_type': no task of {cfg.env}/{cfg.split} has type {cfg.task_type!r}")
    if cfg.max_tasks is not None:
        ids = ids[:cfg.max_tasks]
    return ids


@dataclass
class ModelInfo:
    """What the worker needs to know about the served model."""

    name: str
    served_name: str
    context_length: int
    stop: list[str]
    path: Path | None
    stop_token_ids: tuple[int, ...] = ()
    """End-of-turn token ids sent with every request (configs/models.yaml `stop_token_ids`)."""


def model_info(model: str, cfg: SamplerConfig) -> ModelInfo:
    """Resolve `--model` (registry name or directory). An unknown model (e.g. a fake server's) is
    accepted when `context_length` is configured."""
    try:
        spec = resolve_model(model)
    except (ModelError, ConfigError) as exc:
        if cfg.context_length is None:
            raise ConfigError(f"{exc} (or set context_length=... to use an unregistered served model)") from None
        return ModelInfo(model, model, cfg.context_length, [], None)
    return ModelInfo(spec.name, spec.served_name, cfg.context_length or spec.context_length, list(spec.stop),
                     spec.path, spec.stop_token_ids)


class Progress:
    """tqdm bar over tasks; postfix: nodes, pairs (tree) or solved (agent), and generated tokens/s."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str, tree: bool = True) -> None:
        self.bar, self.tree, self.solved = None, tree, 0
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="task", dynamic_ncols=True)
        self.nodes = self.pairs = self.tokens = 0
        self.started = time.monotonic()
        self._last = 0.0

    def node(self, node: Any) -> None:
        self.nodes += 1
        self.tokens += node.completion_tokens
        self._refresh()

    def task(self, row: dict[str, Any]) -> None:
        self.pairs += int(row.get("pairs") or 0)
        self.solved += float(row.get("score") or 0) > 0
        if not self.tree:
            self.tokens += int(row.get("completion_tokens") or 0)
        if self.bar is not None:
            self.bar.update(1)
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.bar is None or (not force and now - self._last < 0.5):
            return
        self._last = now
        rate = self.tokens / max(now - self.started, 1e-9)
        if self.tree:
            self.bar.set_postfix(nodes=self.nodes, pairs=self.pairs, tok_s=f"{rate:.0f}", refresh=True)
        else:
            self.bar.set_postfix(solved=self.solved, tok_s=f"{rate:.0f}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def _run_tasks(cfg: SamplerConfig, env: Any, model: ModelInfo, server_url: str, todo: list[str],
                     writer: ShardWriter, progress: Progress, client: Any = None) -> dict[str, Any]:
    if client is None:
        client = LLMClient(server_url, model.served_name, max_concurrency=cfg.max_concurrency,
                           timeout_s=cfg.request_timeout_s, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
                           retry_window_s=cfg.retry_window_s, stop_token_ids=model.stop_token_ids)
    counter = TokenCounter.for_model_dir(model.path) if model.path else TokenCounter(None)
    stop = list(dict.fromkeys(model.stop + cfg.stop))
    ctx = WorkerContext(cfg=cfg, env=env, client=client, context_length=model.context_length, stop=stop,
                        counter=counter)
    pool = EpisodePool(ctx, cfg.max_live_episodes)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for task_id in todo:
        queue.put_nowait(task_id)
    concurrency = 1 if cfg.execution == "sequential" else cfg.task_concurrency

    async def one(task_id: str) -> None:
        info = dict(env.task_info(task_id) or {})
        base = {"task_id": task_id, "dataset": cfg.dataset, "split": cfg.split, "method": cfg.method,
                "model": model.name, "task_type": info.get("task_type", ""), "target": info.get("target", "")}
        journal = writer.journal(task_id) if cfg.method == "codeact_agent_tree" else None
        try:
            if cfg.method == "codeact_agent_tree":
                result, records = await TreeTask(ctx, pool, task_id, journal, progress.node).run()
            else:
                result, records = await run_agent_task(ctx, task_id), []
        except ContextLengthError as exc:  # only reachable if a prompt alone exceeds the context
            result, records = {"status": "context_overflow", "score": 0.0, "extra": {"error": str(exc)}}, []
        except LLMRejectedError as exc:
            raise ServerRejectedError(str(exc)) from None
        except LLMError as exc:
            raise ServerDownError(str(exc)) from None
        except Exception as exc:  # a broken task must not stop the shard (configurable)
            if cfg.on_task_error == "raise" or is_fix_then_rerun(exc) or isinstance(exc, UnicodeEncodeError):
                # an output we cannot write (disk full, ...) or encode stops the worker: never a lost task
                raise
            log.exception("task %s failed", task_id)
            result, records = {"status": "error", "score": 0.0, "extra": {"error": f"{type(exc).__name__}: {exc}"}}, []
        finally:
            if journal is not None:
                journal.close()
        row = {**base, **result}
        writer.finish_task(row, records)
        progress.task(row)

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, max(len(todo), 1)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    finally:
        ctx.executor.shutdown(wait=True, cancel_futures=False)
        if hasattr(client, "aclose"):
            await client.aclose()
    return dict(getattr(client, "stats", {}) or {})


def run_worker(cfg: SamplerConfig, model: str, server_url: str, shard: int, num_shards: int,
               output_dir: str | Path, client: Any = None) -> dict[str, Any]:
    """Run shard `shard` of `num_shards`; returns a summary. Raises `ServerDownError` if the server
    stays down (finished tasks and nodes are saved; rerun the same command to resume),
    `ServerRejectedError` if it refuses requests, `LockHeldError` if another process writes the shard,
    `ConfigError` / `CorruptFileError` for settings, data or shard files that are wrong,
    `OutputWriteError` for an output that cannot be written (disk full, read-only, permissions: fix it
    and rerun to resume), `file_lock.Terminated` on SIGTERM/SIGHUP (after releasing the lock)."""
    with terminate_on_signals():  # SIGTERM: the `finally` below releases the shard lock
        return _run_worker(cfg, model, server_url, shard, num_shards, output_dir, client)


def _run_worker(cfg: SamplerConfig, model: str, server_url: str, shard: int, num_shards: int,
                output_dir: str | Path, client: Any = None) -> dict[str, Any]:
    info = model_info(model, cfg)
    env = load_task_env(cfg)
    lock = None
    try:
        selected = select_tasks(env, cfg)
        ids = shard_slice(selected, shard, num_shards)
        stem = shard_file_stem(cfg, shard)
        lock = lock_shard(output_dir, stem, cfg.lock_stale_s)  # held until the worker ends
        new_settings = check_shard_settings(output_dir, stem, cfg, info.name)
        record_sampling_shard(output_dir, cfg, env, selected, shard, num_shards, info)
        writer = ShardWriter(output_dir, stem, tree=cfg.method == "codeact_agent_tree", lock=lock)
        done = writer.open()
        if new_settings is not None:
            record_shard_settings(output_dir, stem, new_settings)
        todo = [t for t in ids if t not in done]
        if done:
            log.info("resuming %s: %d of %d tasks already finished", writer.csv_path, len(set(ids) & done), len(ids))
        progress = Progress(len(ids), len(ids) - len(todo), cfg.progress,
                            f"{cfg.method} {cfg.dataset}.{cfg.split} shard {shard}/{num_shards}",
                            tree=cfg.method == "codeact_agent_tree")
        started = time.monotonic()
        try:
            stats = asyncio.run(cancel_on_signals(  # SIGTERM inside the loop: cancel, clean up, then Terminated
                _run_tasks(cfg, env, info, server_url, todo, writer, progress, client)))
        finally:
            progress.close()
            writer.close()
        return {"csv": str(writer.csv_path), "tasks": len(ids), "ran": len(todo), "nodes": progress.nodes,
                "wall_time_s": time.monotonic() - started, **stats}
    finally:
        env.close()
        if lock is not None:
            lock.release()
