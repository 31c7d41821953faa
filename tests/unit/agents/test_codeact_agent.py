"""The evaluation agent (codeact_agent): outcomes, Max-Trial turns, limits, context overflow."""
from __future__ import annotations

import csv
import json

from densepolicy.sampling.config import resolve_sampler_config
from densepolicy.sampling.worker import run_worker
from tests.harness.worker_runs import SCRIPTED_ENV_ARGS

ARGS = [*SCRIPTED_ENV_ARGS, "max_tasks=1"]


def evaluate(server, tmp_path, *extra):
    cfg = resolve_sampler_config("codeact_agent", "gsm8k", ARGS + list(extra))
    run_worker(cfg, "fake", server.base_url, 0, 1, tmp_path)
    with (tmp_path / f"gsm8k.{cfg.split}.0.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_success_after_wrong_answers_counts_turns(fake_server, tmp_path):
    # task "0": the answer is "0"
    replies = ["Action:\nprint(7)\nEnd Action", "Answer: 5", "no action here", "Answer: 0"]
    server = fake_server(replies)
    (row,) = evaluate(server, tmp_path)
    assert (row["status"], row["score"], row["turns"], row["steps"]) == ("success", "1.0", "2", "4")
    history = json.loads(row["history"])
    assert history[-1] == {"role": "user", "content": "Your answer is correct."}
    assert history[-3]["content"].startswith("Invalid generation.")
    assert history[-5]["content"] == "Your answer is incorrect."
    # 8 in-context GSM8K examples, greedy, seeded requests
    assert history[0]["content"].count("Now, let's move on to the next task.") == 0
    assert sum(m["content"].count("Now, let's move on to the next task.") for m in history) == 8
    assert all(r["temperature"] == 0.0 and isinstance(r["seed"], int) for r in server.requests)


def test_max_turn_and_max_steps(fake_server, tmp_path):
    server = fake_server(lambda messages, request: "Answer: 9")
    (row,) = evaluate(server, tmp_path / "turns")
    assert (row["status"], row["score"], row["turns"]) == ("max_turn", "0.0", "10")
    server = fake_server(lambda messages, request: "Action:\nprint(1)\nEnd Action")
    (row,) = evaluate(server, tmp_path / "steps", "max_turn=null", "max_steps=3")
    assert (row["status"], row["steps"], row["turns"]) == ("max_steps", "3", "0")


def test_context_overflow_is_its_own_outcome(fake_server, tmp_path):
    server = fake_server(lambda messages, request: "Action:\nprint('" + "x " * 200 + "')\nEnd Action",
                         max_model_len=6000)
    (row,) = evaluate(server, tmp_path, "context_length=1000000")   # our estimate is off: the server decides
    assert row["status"] == "context_overflow" and row["score"] == "0.0"
    assert "context" in json.loads(row["extra"])["log_infos"][0]
    (row,) = evaluate(server, tmp_path / "estimate", "context_length=3000")  # our own check stops first
    assert row["status"] == "context_overflow"
    assert "limitation 3000" in json.loads(row["extra"])["log_infos"][0]


def test_requests_carry_the_registered_models_stop_token_ids(fake_server, tmp_path):
    """`--model <dir>` of a Llama-3-style checkpoint: every request of the worker sends <|eot_id|>'s id (from the
    model's own tokenizer), so generation stops there even when its generation_config.json does not say so."""
    model_dir = tmp_path / "Meta-Llama-3-8B-Instruct-trained"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{{ '<|start_header_id|>' + messages[0]['content'] | trim + '<|eot_id|>' }}",
        "added_tokens_decoder": {"128001": {"content": "<|end_of_text|>"}, "128009": {"content": "<|eot_id|>"}}}))
    server = fake_server(lambda messages, request: "Answer: 0")
    cfg = resolve_sampler_config("codeact_agent", "gsm8k", ARGS)
    run_worker(cfg, str(model_dir), server.base_url, 0, 1, tmp_path / "out")
    assert server.requests and all(r["stop_token_ids"] == [128009] and r["top_k"] == 0 for r in server.requests)
