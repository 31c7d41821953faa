"""`codeact_agent_tree`: tree sampling over the CodeAct agent (docs/original.md §3) with concurrency and forks.

Per task, `agents.tree.TreeSearch` decides which leaves (full-length label paths) to run; this
module runs them. All leaves of an iteration are in flight together and several tasks run at once,
so the LLM server batches their requests. Every node is generated once (same-prefix leaves await
the same in-flight node), from its parent's message list (identical prefix, so the server's prefix
cache hits), and executed on a fork of its parent's live episode (no replay from reset).

Determinism: request seeds derive from (seed, task id, node id) and proposals from a per-task RNG,
so the tree only depends on the nodes' texts. Every finished node is appended to the task's journal;
after a kill the task restarts its loop with the journaled nodes as a cache and reaches the same tree.

Episodes hold sandbox processes: terminal nodes close theirs at once; others stay in a worker-wide
LRU pool of `max_live_episodes`. An evicted (or journal-restored) node that must grow gets a fork of
its nearest live ancestor with the missing actions replayed (counted in `replays`).
`execution=sequential` reproduces the original's cost model for benchmarks: one request at a time,
each leaf starts from a fresh episode and replays every cached ancestor action.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.parser import parse_generation
from agents.runtime import (MESSAGE_OVERHEAD_TOKENS, StepOutcome, WorkerContext, execute_generation, generated_text,
                            request_seed)
from agents.tree import NodeId, TreeRules, TreeSearch, branch_temperature, node_key, parse_node_key
from densepolicy.serving.llm_client import ContextLengthError
from envs.base import Episode

log = logging.getLogger(__name__)


@dataclass(eq=False)
class TreeNode:
    """One generated step. `episode` is the live env state after this step (None when closed)."""

    node: NodeId
    temperature: float
    assistant: str
    observation: str
    terminal: bool
    success: bool | None
    status: str
    turns: int
    context_tokens: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    episode: Episode | None = None
    shares_parent_state: bool = False  # an invalid generation: nothing ran, the parent's state is ours
    owner: Any = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def journal_record(self) -> dict[str, Any]:
        """What the resume journal keeps (everything but the live episode)."""
        return {"node_id": node_key(self.node), "temperature": self.temperature, "assistant": self.assistant,
                "observation": self.observation, "terminal": self.terminal, "success": self.success,
                "status": self.status, "turns": self.turns, "context_tokens": self.context_tokens,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> TreeNode:
        return cls(node=parse_node_key(rec["node_id"]), temperature=rec["temperature"],
                   assistant=rec["assistant"], observation=rec["observation"], terminal=rec["terminal"],
                   success=rec["success"], status=rec["status"], turns=rec["turns"],
                   context_tokens=rec["context_tokens"], prompt_tokens=rec["prompt_tokens"],
                   completion_tokens=rec["completion_tokens"],
                   shares_parent_state=rec["status"] != "context_overflow"
                   and parse_generation(rec["assistant"]).kind == "invalid")


class EpisodePool:
    """Worker-wide LRU of live node episodes; closes the least recently used beyond `capacity`."""

    def __init__(self, ctx: WorkerContext, capacity: int) -> None:
        self.ctx, self.capacity = ctx, capacity
        self.live: OrderedDict[TreeNode, None] = OrderedDict()
        self.evictions = 0

    def add(self, node: TreeNode) -> None:
        self.live[node] = None
        self.live.move_to_end(node)
        self._evict()

    def touch(self, node: TreeNode) -> None:
        if node in self.live:
            self.live.move_to_end(node)

    def discard(self, node: TreeNode) -> Episode | None:
        """Forget `node` and hand back its episode (the caller closes it)."""
        self.live.pop(node, None)
        episode, node.episode = node.episode, None
        return episode

    def _evict(self) -> None:
        if len(self.live) <= self.capacity:
            return
        for node in list(self.live):
            if len(self.live) <= self.capacity:
                break
            if node.lock.locked():  # being forked right now
                continue
            episode = self.discard(node)
            if episode is not None:
                self.evictions += 1
                self.ctx.executor.submit(episode.close)


class TreeTask:
    """Tree sampling of one task. `journal` persists finished nodes; `on_node` reports progress."""

    def __init__(self, ctx: WorkerContext, pool: EpisodePool, task_id: str, journal: Any = None,
                 on_node: Callable[[TreeNode], None] | None = None) -> None:
        cfg = ctx.cfg
        self.ctx, self.pool, self.task_id, self.journal = ctx, pool, task_id, journal
        self.on_node = on_node or (lambda node: None)
        self.rules = tree_rules(cfg)
        self.nodes: dict[NodeId, TreeNode] = {}
        self.inflight: dict[NodeId, asyncio.Future] = {}
        self.sibling_requests: dict[tuple[NodeId, float], asyncio.Future] = {}
        self.root_episode: Episode | None = None
        self.root_lock = asyncio.Lock()
        self.root_messages: list[dict] = []
        self.first_step_roots: dict[int, tuple[list[dict], int]] = {}  # incontext_draw=first_step: per label
        self.train_prompt: list[dict] = []
        self.root_tokens = 0
        self.replays = 0
        self.replay_mismatches = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.sequential = cfg.execution == "sequential"
        self.time_offset = 0.0  # task time spent by earlier (killed) runs, from the journal
        self.started = time.monotonic()
        if journal is not None:
            for rec in journal.records():
                node = TreeNode.from_record(rec)
                self.nodes[node.node] = node
                self.prompt_tokens += node.prompt_tokens
                self.completion_tokens += node.completion_tokens
                self.time_offset = max(self.time_offset, float(rec.get("elapsed_s", 0.0)))

    # -- public ----------------------------------------------------------------------------------
    async def run(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Sample the tree; returns (shard-CSV row fields, tree-dump records)."""
        self.started = time.monotonic()
        self.root_episode = await self.ctx.blocking(self.ctx.env.start, self.task_id)
        try:
            self.root_messages, self.train_prompt = self.ctx.opening(self.root_episode, self.task_id)
            self.root_tokens = self.ctx.counter.messages(self.root_messages)
            if self.ctx.cfg.incontext_draw == "first_step":  # the original: a fresh draw per first-step node
                for label in range(self.rules.base):
                    messages, _ = self.ctx.opening(self.root_episode, self.task_id, draw=str(label))
                    self.first_step_roots[label] = (messages, self.ctx.counter.messages(messages))
            search = TreeSearch(self.rules, seed=request_seed(self.ctx.cfg.seed, self.task_id, "proposals"))
            queue = search.first_queue()
            while not search.should_stop():
                if self.sequential:
                    ends = [await self._run_leaf_sequential(full) for full in queue]
                else:
                    ends = await _gather_all([self._run_leaf(full) for full in queue])
                for full, end in zip(queue, ends):
                    search.record(full, end.node, 1.0 if end.success else 0.0, end.status)
                queue = search.next_queue()
            return self._row(search, self._elapsed()), self._dump(search)
        finally:
            await self._close_all()

    # -- leaves ----------------------------------------------------------------------------------
    async def _run_leaf(self, full: NodeId) -> TreeNode:
        for depth in range(1, len(full) + 1):
            node = await self._get(full[:depth])
            if node.terminal:
                return node
        raise AssertionError(f"node {node_key(full)} at max depth is not terminal")

    async def _get(self, nid: NodeId) -> TreeNode:
        node = self.nodes.get(nid)
        if node is not None:
            return node
        pending = self.inflight.get(nid)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.inflight[nid] = future
        try:
            node = await self._expand(nid)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self.inflight.pop(nid, None)
        self._store(node)
        future.set_result(node)
        return node

    def _store(self, node: TreeNode) -> None:
        self.nodes[node.node] = node
        self.prompt_tokens += node.prompt_tokens
        self.completion_tokens += node.completion_tokens
        if self.journal is not None:
            self.journal.append({**node.journal_record(), "elapsed_s": round(self._elapsed(), 3)})
        self.on_node(node)

    def _elapsed(self) -> float:
        return self.time_offset + time.monotonic() - self.started

    async def _expand(self, nid: NodeId, episode: Episode | None = None) -> TreeNode:
        """Generate and execute node `nid`. `episode` (sequential mode) is acted on in place."""
        parent = self.nodes[nid[:-1]] if len(nid) > 1 else None
        temperature = self._temperature(nid[-1])
        context = parent.context_tokens if parent else self._root(nid[0])[1]
        turns = parent.turns if parent else 0
        budget = self.ctx.completion_budget(context)
        generated = await self._generate(nid, parent, temperature, budget) if budget else None
        if generated is None:
            return TreeNode(nid, temperature, "", "", True, False, "context_overflow", turns, context)
        text, prompt_tokens, completion_tokens, request_prompt = generated
        owned = episode is None
        parsed = parse_generation(text)
        stateless = owned and parsed.kind == "invalid"
        if stateless:  # no env call: the child keeps its parent's state, no fork needed
            outcome = StepOutcome("invalid", parsed.feedback, False, False)
        else:
            if episode is None:
                episode = await self._fork(parent)
            outcome = await self.ctx.blocking(execute_generation, episode, text, self.ctx.env.requires_answer)
        at_max = len(nid) >= self.rules.max_steps
        status = ("success" if outcome.success else "fail") if outcome.done else ("max_steps" if at_max else "")
        node = TreeNode(
            nid, temperature, text, outcome.observation, terminal=outcome.done or at_max,
            success=(outcome.success if (outcome.done or at_max) else None), status=status,
            turns=turns + (outcome.kind == "answer"),
            context_tokens=(request_prompt + self.ctx.counter.text(text)
                            + self.ctx.counter.text(outcome.observation) + 2 * MESSAGE_OVERHEAD_TOKENS),
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, shares_parent_state=stateless)
        if owned and not stateless:
            if node.terminal:
                await self.ctx.blocking(episode.close)
            else:
                node.episode, node.owner = episode, self
                self.pool.add(node)
        return node

    # -- generation ------------------------------------------------------------------------------
    def _temperature(self, label: int) -> float:
        return branch_temperature(label, self.rules.contrastive_method, self.rules.temperature_cycle)

    def _root(self, label: int) -> tuple[list[dict], int]:
        """(opening messages, their tokens) under first-step label `label`: the task's one opening, or with
        `incontext_draw=first_step` that label's own in-context example draw."""
        return self.first_step_roots.get(label) or (self.root_messages, self.root_tokens)

    def messages(self, node: TreeNode | None, label: int = 0) -> list[dict]:
        """The chat up to and including `node`'s observation (children share this exact prefix); for
        node None, the opening under first-step label `label`."""
        out = list(self._root(node.node[0] if node is not None else label)[0])
        if node is None:
            return out
        for depth in range(1, len(node.node) + 1):
            step = self.nodes[node.node[:depth]]
            out.append({"role": "assistant", "content": step.assistant})
            out.append({"role": "user", "content": step.observation})
        return out

    async def _generate(self, nid: NodeId, parent: TreeNode | None, temperature: float,
                        budget: int) -> tuple[str, int, int, int] | None:
        """(text, prompt tokens, completion tokens charged to this node, request prompt tokens),
        or None when the server says the prompt does not fit."""
        cfg, messages = self.ctx.cfg, self.messages(parent, nid[0])
        try:
            if not cfg.batch_siblings or (parent is None and self.first_step_roots):  # own openings: no n>1
                res = await self.ctx.client.chat(
                    messages, n=1, temperature=temperature, top_p=cfg.top_p, stop=self.ctx.stop,
                    max_tokens=budget, seed=request_seed(cfg.seed, self.task_id, node_key(nid)))
                text = generated_text(res, 0)
                return text, res.prompt_tokens, res.completion_tokens, res.prompt_tokens
            group = [k for k in range(self.rules.base) if self._temperature(k) == temperature]
            key = (nid[:-1], temperature)
            owner = key not in self.sibling_requests
            if owner:
                self.sibling_requests[key] = asyncio.ensure_future(self.ctx.client.chat(
                    messages, n=len(group), temperature=temperature, top_p=cfg.top_p, stop=self.ctx.stop,
                    max_tokens=budget, seed=request_seed(cfg.seed, self.task_id,
                                                         f"{node_key(nid[:-1])}|T{temperature}")))
            res = await asyncio.shield(self.sibling_requests[key])
            j = group.index(nid[-1])
            text = generated_text(res, j)
            first = nid[-1] == group[0]  # charge the shared request once, to the group's first label
            return (text, res.prompt_tokens if first else 0, res.completion_tokens if first else 0,
                    res.prompt_tokens)
        except ContextLengthError as exc:
            log.info("task %s node %s: %s", self.task_id, node_key(nid), exc)
            return None

    # -- episodes --------------------------------------------------------------------------------
    async def _fork(self, node: TreeNode | None) -> Episode:
        """A fork of `node`'s live episode (the root's for None), materialising it if needed."""
        while node is not None and node.shares_parent_state:
            node = self.nodes[node.node[:-1]] if len(node.node) > 1 else None
        if node is None:
            async with self.root_lock:
                try:
                    return await self.ctx.blocking(self.root_episode.fork)
                except Exception as exc:  # noqa: BLE001 - a dead sandbox: start the task afresh
                    log.warning("task %s: fork of the initial episode failed (%s); restarting it", self.task_id, exc)
                    old, self.root_episode = self.root_episode, await self.ctx.blocking(self.ctx.env.start, self.task_id)
                    self.ctx.executor.submit(old.close)
                    return await self.ctx.blocking(self.root_episode.fork)
        async with node.lock:
            for attempt in (1, 2):
                if node.episode is None:
                    node.episode, node.owner = await self._materialize(node), self
                    self.pool.add(node)
                self.pool.touch(node)
                try:
                    return await self.ctx.blocking(node.episode.fork)
                except Exception as exc:  # rebuild from an ancestor once, then give up
                    if attempt == 2:
                        raise
                    log.warning("task %s: fork of node %s failed (%s); rebuilding it by replay",
                                self.task_id, node_key(node.node), exc)
                    broken = self.pool.discard(node)
                    if broken is not None:
                        self.ctx.executor.submit(broken.close)
            raise AssertionError("unreachable")

    async def _materialize(self, node: TreeNode) -> Episode:
        """Rebuild `node`'s state: fork the nearest live ancestor, replay the actions below it."""
        depth = len(node.node) - 1
        while depth > 0 and self.nodes[node.node[:depth]].episode is None:
            depth -= 1
        ancestor = self.nodes[node.node[:depth]] if depth else None
        episode = await self._fork(ancestor)
        self.replays += 1
        log.info("task %s: replaying %d step(s) to rebuild node %s", self.task_id,
                 len(node.node) - depth, node_key(node.node))
        for d in range(depth + 1, len(node.node) + 1):
            await self._replay_step(episode, self.nodes[node.node[:d]])
        return episode

    async def _replay_step(self, episode: Episode, step: TreeNode) -> None:
        outcome = await self.ctx.blocking(execute_generation, episode, step.assistant,
                                          self.ctx.env.requires_answer)
        if outcome.observation != step.observation:
            self.replay_mismatches += 1
            log.warning("task %s node %s: replayed observation differs from the recorded one",
                        self.task_id, node_key(step.node))

    async def _close_all(self) -> None:
        episodes = [self.pool.discard(n) for n in list(self.pool.live) if n.owner is self]
        episodes.append(self.root_episode)
        for episode in episodes:
            if episode is not None:
                await self.ctx.blocking(episode.close)
        for future in self.sibling_requests.values():
            future.cancel()

    # -- the original's cost model -----------------------------------------------------------------
    async def _run_leaf_sequential(self, full: NodeId) -> TreeNode:
        """One leaf from a fresh episode: replay cached ancestors, generate the rest (docs/original.md §3.2)."""
        episode = await self.ctx.blocking(self.ctx.env.start, self.task_id)
        try:
            for depth in range(1, len(full) + 1):
                nid = full[:depth]
                node = self.nodes.get(nid)
                if node is None:
                    node = await self._expand(nid, episode=episode)
                    self._store(node)
                elif node.status != "context_overflow":
                    self.replays += 1
                    await self._replay_step(episode, node)
                if node.terminal:
                    return node
            raise AssertionError(f"node {node_key(full)} at max depth is not terminal")
        finally:
            await self.ctx.blocking(episode.close)

    # -- outputs ---------------------------------------------------------------------------------
    def _row(self, search: TreeSearch, wall_time: float) -> dict[str, Any]:
        stop_reason = ("pairs" if search.pair_count >= self.rules.max_sample_number else
                       "max_runs" if len(search.rows) >= self.rules.max_runs else
                       "uniform" if search.uniform() else "empty_iterations")
        runs = [{"full_index": node_key(r.full_index), "run_index": node_key(r.run_index),
                 "outcome": r.outcome, "status": r.status} for r in search.rows]
        return {"status": "done", "score": search.coverage, "turns": "",
                "steps": max((len(r.run_index) for r in search.rows), default=0),
                "runs": len(search.rows), "nodes": len(self.nodes), "pairs": search.pair_count,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "wall_time_s": round(wall_time, 3), "history": [],
                "extra": {"stop_reason": stop_reason, "iterations": search.iterations,
                          "duplicates": search.duplicates, "empty_iterations": search.empty_iterations,
                          "replays": self.replays, "replay_mismatches": self.replay_mismatches,
                          "runs": runs}}

    def _dump(self, search: TreeSearch) -> list[dict[str, Any]]:
        stats = search.tree.stats
        records = []
        for nid in sorted(self.nodes, key=lambda n: (len(n), n)):
            node, s = self.nodes[nid], stats.get(nid)
            rec = {"task_id": self.task_id, "node_id": node_key(nid), "parent_id": node_key(nid[:-1]),
                   "depth": len(nid), "label": nid[-1], "temperature": node.temperature,
                   "assistant": node.assistant, "observation": node.observation, "terminal": node.terminal,
                   "success": node.success if node.terminal else None, "status": node.status,
                   "visits": s.runs if s else 0, "value": s.value if s else None}
            if len(nid) == 1:
                rec["prompt"] = self.train_prompt
            records.append(rec)
        return records


def tree_rules(cfg: Any) -> TreeRules:
    """The `TreeRules` of a `SamplerConfig`: its `tree` section with the depth `max_steps`."""
    return cfg.tree.rules(cfg.max_steps)


async def _gather_all(coros: list) -> list:
    """Run coroutines concurrently; on the first failure cancel the others and re-raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
