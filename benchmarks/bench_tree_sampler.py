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
Writes benchmarks/results/tree_sampler_<server>.csv.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from densepolicy.paths import vllm_lock_file  # noqa: E402
from densepolicy.sampling.config import resolve_sampler_config  # noqa: E402
from densepolicy.sampling.worker import load_task_env, run_worker  # noqa: E402
from densepolicy.serving.llm_client import read_metrics  # noqa: E402
from tests.fakes import _unit  # noqa: E402
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


def run_mode(mode: str, overrides: list[str], model: str, url: str, out: Path, prefix_metrics: bool) -> dict:
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", overrides + [f"execution={mode}"])
    before = read_metrics(url) if prefix_metrics else {}
    started = time.monotonic()
    summary = run_worker(cfg, model, url, 0, 1, out / mode)
    wall = time.monotonic() - started
    after = read_metrics(url) if prefix_metrics else {}
    with (out / mode / "gsm8k.train.0.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    nodes = sum(int(r["nodes"]) for r in rows)
    pairs = sum(int(r["pairs"]) for r in rows)
    completion = sum(int(r["completion_tokens"]) for r in rows)
    concurrency = 1 if mode == "sequential" else cfg.max_concurrency
    result = {"mode": mode, "tasks": len(rows), "nodes": nodes, "runs": sum(int(r["runs"]) for r in rows),
              "pairs": pairs, "wall_s": round(wall, 2), "s_per_node": round(wall / max(nodes, 1), 4),
              "requests": summary.get("calls", 0), "mean_in_flight": round(summary.get("mean_in_flight", 0), 2),
              "saturation": round(summary.get("mean_in_flight", 0) / concurrency, 3),
              "completion_tokens_per_pair": round(completion / pairs, 1) if pairs else "",
              "replays": sum(json.loads(r["extra"])["replays"] for r in rows)}
    hits = after.get("vllm:prefix_cache_hits_total", 0) - before.get("vllm:prefix_cache_hits_total", 0)
    queries = after.get("vllm:prefix_cache_queries_total", 0) - before.get("vllm:prefix_cache_queries_total", 0)
    result["prefix_cache_hit_rate"] = round(hits / queries, 3) if queries else ""
    return result


def tree_signature(out: Path, mode: str) -> list[str]:
    lines = (out / mode / "trees" / "gsm8k.train.0.jsonl").read_text().splitlines()
    return sorted(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["fake", "vllm"], default="fake")
    parser.add_argument("--server_url", default=None,
                        help="with --server vllm: use this running server instead of starting one")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="with --server_url: the served model")
    parser.add_argument("--env", default="tests.fakes:ScriptedMathEnv",
                        help="env of the tasks: the in-process scripted env (default; isolates the sampler) "
                             "or a real one such as gsm8k (adds sandbox fork/exec costs)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks (default 8 fake, 2 vllm)")
    parser.add_argument("--latency_s", type=float, default=0.2, help="fake server: seconds per request")
    parser.add_argument("--batch_capacity", type=int, default=64, help="fake server: sequence slots")
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
    if args.server == "fake":
        from densepolicy.testing.fake_server import FakeOpenAIServer
        responder = GoldAwareResponder(task_targets(cfg, tasks))
        with FakeOpenAIServer(responder, latency_s=args.latency_s, batch_capacity=args.batch_capacity) as server:
            for mode in ("sequential", "concurrent"):
                results.append(run_mode(mode, common, "fake", server.base_url, out, prefix_metrics=False))
        same = tree_signature(out, "sequential") == tree_signature(out, "concurrent")
        setting = f"fake server {args.latency_s * 1000:.0f} ms, {args.batch_capacity} slots"
    else:
        from densepolicy.config import load_config
        from densepolicy.serving.server import ServingConfig, VLLMServer
        serving = load_config(ServingConfig, ROOT / "configs" / "serving.yaml",
                              ["device=cpu", "port=0", "kv_cache_gb=1", "max_model_len=2048"])
        if args.server_url:
            for mode in ("sequential", "concurrent"):
                results.append(run_mode(mode, common, args.model, args.server_url, out, prefix_metrics=True))
            setting = f"running vLLM server {args.model}"
        else:
            lock = open(vllm_lock_file(), "a+")
            print("waiting for the machine-wide vLLM lock ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)  # at most one vLLM-CPU server per machine
            with lock, VLLMServer("SmolLM2-135M-Instruct", serving, out / "vllm.log") as server:
                for mode in ("sequential", "concurrent"):
                    results.append(run_mode(mode, common, server.served_name, server.base_url, out,
                                            prefix_metrics=True))
            setting = "vLLM-CPU SmolLM2-135M"
        same = tree_signature(out, "sequential") == tree_signature(out, "concurrent")
    seq, con = results
    speedup = seq["wall_s"] / max(con["wall_s"], 1e-9)
    for r in results:
        r.update(server=args.server, env=env, setting=setting, speedup_vs_sequential=round(seq["wall_s"] / r["wall_s"], 2),
                 identical_trees=same)
    env_tag = "scripted" if env.startswith("tests.fakes") else env
    print_and_write(results, RESULTS / f"tree_sampler_{args.server}_{env_tag}.csv",
                    title=f"Tree sampler, {setting}, env {env}, {tasks} tasks, base 3, 4 steps")
    print(f"\nwall-time ratio sequential/concurrent: {speedup:.1f}x; concurrent s/node {con['s_per_node']} "
          f"(original 3.6 s); saturation {con['saturation']}; identical trees: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
