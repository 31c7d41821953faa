"""The concurrent tree sampler against the scripted fake server and a scripted env (fast)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from agents.runtime import request_seed
from agents.tree import branch_temperature, parse_node_key
from agents.tree_rules import compute_node_stats
from densepolicy.sampling.config import resolve_sampler_config
from densepolicy.sampling.worker import run_worker
from tests.harness import fakes
from tests.harness.worker_runs import SCRIPTED_ENV_ARGS

BASE = [*SCRIPTED_ENV_ARGS, "in_context_number=0",
        "base=3", "max_steps=4", "window_size=4", "max_sample_number=6", "max_tasks=4"]


def run(server, tmp: Path, *extra: str) -> tuple[list[dict], list[dict]]:
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", BASE + list(extra))
    run_worker(cfg, "fake", server.base_url, 0, 1, tmp)
    with (tmp / "gsm8k.train.0.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    dump = [json.loads(line) for line in (tmp / "trees" / "gsm8k.train.0.jsonl").open()]
    return rows, dump


def comparable(rows, dump):
    strip = lambda r: {k: v for k, v in r.items() if k != "wall_time_s"}  # noqa: E731
    return sorted(map(json.dumps, map(strip, rows))), sorted(json.dumps(d, sort_keys=True) for d in dump)


def test_each_node_generated_once_from_its_parents_messages(fake_server, tmp_path):
    fakes.reset_counts()
    server = fake_server(fakes.scripted_reply, latency_s=0.005)
    rows, dump = run(server, tmp_path)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert len(server.requests) == len(dump) == sum(int(r["nodes"]) for r in rows)
    by_seed = {(r["seed"]): r for r in server.requests}
    nodes = {(d["task_id"], d["node_id"]): d for d in dump}
    for d in dump:
        req = by_seed[request_seed(62471893, d["task_id"], d["node_id"])]
        assert req["temperature"] == branch_temperature(d["label"])
        assert "End Action" in req["stop"] and req["max_tokens"] == 512
        # the request is the parent's request + [parent's assistant, parent's observation]
        if d["parent_id"]:
            parent = nodes[(d["task_id"], d["parent_id"])]
            preq = by_seed[request_seed(62471893, d["task_id"], d["parent_id"])]
            assert req["messages"] == preq["messages"] + [
                {"role": "assistant", "content": parent["assistant"]},
                {"role": "user", "content": parent["observation"]}]
        else:
            assert req["messages"] == d["prompt"]  # no in-context examples here
    # forks, not replays: one env.start per task, and every episode is closed
    assert fakes.COUNTS["start"] == 4
    assert fakes.COUNTS["close"] == fakes.COUNTS["start"] + fakes.COUNTS["fork"]
    invalid = [d for d in dump if d["observation"].startswith("Invalid generation")]
    assert invalid, "the scripted model should produce some invalid generations"
    assert fakes.COUNTS["act"] + fakes.COUNTS["answer"] == len(dump) - len(invalid)
    assert fakes.COUNTS["fork"] == len(dump) - len(invalid)   # nothing ran for an invalid step: no fork


def test_dump_matches_post_processing_stats_and_csv(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    rows, dump = run(server, tmp_path)
    for row in rows:
        nodes = [d for d in dump if d["task_id"] == row["task_id"]]
        stats = compute_node_stats(nodes)
        for d in nodes:
            s = stats[d["node_id"]]
            assert d["visits"] == s.runs
            assert (d["value"] is None and s.value is None) or d["value"] == pytest.approx(s.value)
        extra = json.loads(row["extra"])
        assert int(row["runs"]) == len(extra["runs"]) == sum(d["terminal"] for d in nodes)
        assert float(row["score"]) == max(r["outcome"] for r in extra["runs"])
        assert int(row["pairs"]) >= 6 or extra["stop_reason"] != "pairs"
        # terminal nodes end every run; children never hang below a terminal node
        terminal = {d["node_id"] for d in nodes if d["terminal"]}
        assert not any(d["parent_id"] in terminal for d in nodes)
        assert all(len(parse_node_key(r["run_index"])) <= 4 for r in extra["runs"])


def test_sequential_baseline_and_small_episode_cap_give_the_same_tree(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    reference = comparable(*run(server, tmp_path / "concurrent", "max_tasks=2"))
    fakes.reset_counts()
    seq_rows, seq_dump = run(server, tmp_path / "sequential", "execution=sequential", "max_tasks=2")
    assert fakes.COUNTS["fork"] == 0 and fakes.COUNTS["start"] > 2 * 5   # fresh episode per leaf (replay)
    assert comparable([{**r, "extra": _no_replays(r["extra"])} for r in seq_rows], seq_dump)[1] == reference[1]
    fakes.reset_counts()
    capped_rows, capped_dump = run(server, tmp_path / "capped", "max_live_episodes=2", "max_tasks=2")
    assert sum(json.loads(r["extra"])["replays"] for r in capped_rows) > 0
    assert comparable(capped_rows, capped_dump)[1] == reference[1]
    assert fakes.COUNTS["close"] == fakes.COUNTS["start"] + fakes.COUNTS["fork"]


def _no_replays(extra: str) -> str:
    data = json.loads(extra)
    data["replays"] = 0
    return json.dumps(data)


def test_sibling_batching_uses_n_and_is_repeatable(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    rows, dump = run(server, tmp_path / "a", "batch_siblings=true", "base=10", "max_steps=3")
    assert any(r["n"] > 1 for r in server.requests)
    assert len(server.requests) < len(dump)
    again = run(server, tmp_path / "b", "batch_siblings=true", "base=10", "max_steps=3")
    assert comparable(*again)[1] == comparable(rows, dump)[1]


def test_existing_shard_is_resumed_not_duplicated(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    rows, _ = run(server, tmp_path)
    n_requests = len(server.requests)
    rows2, dump2 = run(server, tmp_path)
    assert len(server.requests) == n_requests          # nothing re-run
    assert [r["task_id"] for r in rows2] == [r["task_id"] for r in rows]
    assert len({(d["task_id"], d["node_id"]) for d in dump2}) == len(dump2)


def test_task_type_filter_and_contiguous_shards(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", BASE[:-1] + [
        "max_tasks=3", "task_type=even", "max_sample_number=1"])
    ids = []
    for shard in range(2):
        run_worker(cfg, "fake", server.base_url, shard, 2, tmp_path)
        with (tmp_path / f"gsm8k.train.{shard}.csv").open(newline="") as fh:
            ids.append([r["task_id"] for r in csv.DictReader(fh)])
    assert sorted(ids[0]) == ["0", "2"] and ids[1] == ["4"]


def test_a_failing_fork_is_rebuilt_from_an_ancestor(fake_server, tmp_path, monkeypatch):
    server = fake_server(fakes.scripted_reply)
    reference = comparable(*run(server, tmp_path / "ok", "max_tasks=1"))
    real_fork, calls = fakes.ScriptedEpisode.fork, {"n": 0}

    def flaky_fork(self):
        calls["n"] += 1
        if calls["n"] % 7 == 3 and len(self.state) > 0:   # some forks of non-root episodes die
            raise RuntimeError("sandbox process died")
        return real_fork(self)

    monkeypatch.setattr(fakes.ScriptedEpisode, "fork", flaky_fork)
    rows, dump = run(server, tmp_path / "flaky", "max_tasks=1")
    assert rows[0]["status"] == "done" and json.loads(rows[0]["extra"])["replays"] > 0
    assert comparable(rows, dump)[1] == reference[1]


def test_resuming_with_other_settings_is_refused(fake_server, tmp_path):
    from densepolicy.config import ConfigError
    server = fake_server(fakes.scripted_reply)
    run(server, tmp_path, "max_tasks=1")
    run(server, tmp_path, "max_tasks=1", "task_concurrency=1", "execution=sequential")   # runtime-only: fine
    with pytest.raises(ConfigError, match=r"base: 3 -> 4"):
        run(server, tmp_path, "max_tasks=1", "base=4")
