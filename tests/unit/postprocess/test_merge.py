"""`post_process_test_result.py --merge_distributed_result` on hand-made shards (docs/original.md §5, docs/formats.md)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from densepolicy.postprocess.merge import merge_distributed
from densepolicy.results_io import CorruptFileError, iter_csv, iter_jsonl
from densepolicy.testing.synthetic_trees import tree_from_spec, write_jsonl

ROOT = Path(__file__).resolve().parents[3]
COLUMNS = ["task_id", "dataset", "split", "method", "model", "status", "score", "turns", "steps", "runs",
           "nodes", "pairs", "task_type", "target", "history", "extra"]


def tree_row(task_id: str, runs: int, nodes: int, status: str = "done") -> dict:
    return {"task_id": task_id, "dataset": "math", "split": "train", "method": "codeact_agent_tree",
            "model": "m", "status": status, "score": 1.0, "turns": "", "steps": 3, "runs": runs,
            "nodes": nodes, "pairs": 0, "task_type": "", "target": "4",
            "history": "", "extra": json.dumps({"note": "a,b \"quoted\"\nnewline"})}


def write_shard(run: Path, name: str, rows: list[dict], trees: dict[str, dict] | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    if trees is not None:  # as a worker writes it: each row's `nodes` is what the tree dump holds
        rows = [{**r, "nodes": len(tree_from_spec(r["task_id"], trees[r["task_id"]]))} if r["task_id"] in trees
                else r for r in rows]
    with (run / f"{name}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if trees is not None:
        nodes = [n for task, spec in trees.items() for n in tree_from_spec(task, spec)]
        write_jsonl(run / "trees" / f"{name}.jsonl", nodes)


def merged(run: Path, stem: str = "math.train"):
    rows = [row for _, row in iter_csv(run / f"{stem}.None.csv")]
    nodes = [n for _, n in iter_jsonl(run / "trees" / f"{stem}.None.jsonl")]
    return rows, nodes


def test_merge_moves_shards_dedupes_and_keeps_matching_tree_nodes(tmp_path):
    run = tmp_path / "run"
    # task "b" is in shard 0 (2 runs) and again in shard 1 (3 runs, more complete): keep shard 1's row
    write_shard(run, "math.train.0", [tree_row("a", 2, 3), tree_row("b", 2, 3)],
                {"a": {"0": "S", "1": "F"}, "b": {"0": "S", "1": "F"}})
    write_shard(run, "math.train.1", [tree_row("b", 3, 4), tree_row("c", 1, 1)],
                {"b": {"0": "S", "1": "F", "2:other": "F"}, "c": {"0": "S"}})
    report = merge_distributed(run, "math.train.{}.csv", show_progress=False)
    rows, nodes = merged(run)
    assert sorted(r["task_id"] for r in rows) == ["a", "b", "c"]
    assert next(r for r in rows if r["task_id"] == "b")["runs"] == "3"
    assert json.loads(rows[0]["extra"]) == {"note": "a,b \"quoted\"\nnewline"}  # JSON cells survive
    b_nodes = sorted(n["node_id"] for n in nodes if n["task_id"] == "b")
    assert b_nodes == ["0", "1", "2"]  # from shard 1 only, not mixed with shard 0's tree
    assert report.duplicates_dropped == 1 and report.duplicate_tasks == ["b"]
    assert not (run / "math.train.0.csv").exists() and not (run / "trees" / "math.train.0.jsonl").exists()
    assert (run / "distributed_result" / "math.train.1.csv").is_file()
    assert (run / "distributed_result" / "trees" / "math.train.1.jsonl").is_file()


def test_merge_is_idempotent_and_picks_up_later_shards(tmp_path):
    run = tmp_path / "run"
    write_shard(run, "math.train.0", [tree_row("a", 2, 2)], {"a": {"0": "S", "1": "F"}})
    merge_distributed(run, "math.train.{}.csv", show_progress=False)
    first = (run / "math.train.None.csv").read_bytes(), (run / "trees" / "math.train.None.jsonl").read_bytes()
    merge_distributed(run, "math.train.{}.csv", show_progress=False)
    second = (run / "math.train.None.csv").read_bytes(), (run / "trees" / "math.train.None.jsonl").read_bytes()
    assert first == second
    # a resumed worker 0 writes a new shard 0 with a new task: it is archived as 0~1 and merged too
    write_shard(run, "math.train.0", [tree_row("z", 1, 1)], {"z": {"0": "S"}})
    report = merge_distributed(run, "math.train.{}.csv", show_progress=False)
    rows, nodes = merged(run)
    assert sorted(r["task_id"] for r in rows) == ["a", "z"]
    assert {n["task_id"] for n in nodes} == {"a", "z"}
    assert (run / "distributed_result" / "math.train.0~1.csv").is_file()
    assert (run / "distributed_result" / "trees" / "math.train.0~1.jsonl").is_file()
    assert report.rows_read == 2


def test_seed_template_name_and_missing_shards(tmp_path):
    run = tmp_path / "run"
    tpl = "math.None_split_0.0.{}.csv"
    write_shard(run, "math.None_split_0.0.0", [tree_row("a", 1, 1)], {"a": {"0": "S"}})
    write_shard(run, "math.None_split_0.0.2", [tree_row("b", 1, 1)], {"b": {"0": "F"}})
    report = merge_distributed(run, tpl, num_shards=4, expected_tasks=["a", "b", "q"], show_progress=False)
    assert report.missing_shards == [1, 3] and report.missing_tasks == ["q"]
    assert "missing shard id(s): 1, 3" in report.summary() and "1 expected task(s) have no row: q" in report.summary()
    (run / "run_manifest.json").write_text(json.dumps({"num_shards": 3}))  # the launcher's record
    assert merge_distributed(run, tpl, show_progress=False).missing_shards == [1]
    assert (run / "math.None_split_0.0.None.csv").is_file()
    assert (run / "trees" / "math.None_split_0.0.None.jsonl").is_file()


def test_empty_shards_are_fine(tmp_path):
    run = tmp_path / "run"
    write_shard(run, "math.train.0", [], {})                     # header only, empty tree dump
    write_shard(run, "math.train.1", [])                         # header only: worker never finished a task
    write_shard(run, "math.train.2", [tree_row("a", 1, 1)], {"a": {"0": "S"}})
    report = merge_distributed(run, "math.train.{}.csv", show_progress=False)
    rows, nodes = merged(run)
    assert [r["task_id"] for r in rows] == ["a"] and len(nodes) == 1
    assert report.missing_shards == []


@pytest.mark.parametrize("damage", ["truncated_csv", "bad_cells", "bad_json_cell", "truncated_tree"])
def test_corrupt_shard_names_file_and_line_and_nothing_moves(tmp_path, damage):
    run = tmp_path / "run"
    write_shard(run, "math.train.0", [tree_row("a", 1, 1)], {"a": {"0": "S"}})
    write_shard(run, "math.train.1", [tree_row("b", 1, 1), tree_row("c", 1, 1)], {"b": {"0": "S"}, "c": {"0": "F"}})
    shard = run / "math.train.1.csv"
    tree = run / "trees" / "math.train.1.jsonl"
    if damage == "truncated_csv":
        shard.write_bytes(shard.read_bytes()[:-25])               # killed mid-row
    elif damage == "bad_cells":
        shard.write_text(shard.read_text() + "d,math,only three\n")
    elif damage == "bad_json_cell":
        shard.write_text(shard.read_text().replace('{""note""', '{note', 1))
    else:
        tree.write_bytes(tree.read_bytes()[:-10])
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(CorruptFileError) as info:
        merge_distributed(run, "math.train.{}.csv", show_progress=False)
    assert info.value.path == (tree if damage == "truncated_tree" else shard)
    assert info.value.line >= 2
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing moved or written


def test_cli_merge_reports_and_fails_cleanly(tmp_path):
    run = tmp_path / "run"
    write_shard(run, "gsm8k.test.0", [dict(tree_row("a", 0, 0, status="success"), dataset="gsm8k")])
    cmd = [sys.executable, str(ROOT / "post_process_test_result.py"), "--merge_distributed_result",
           "--data_dir", str(run), "--dataset_file_name_list", "gsm8k.test.{}.csv"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "1 rows -> 1 tasks" in out.stdout and "mean score (accuracy): 100.00" in out.stdout
    bad = subprocess.run(cmd[:-1] + ["gsm8k.test.csv"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "must contain exactly one '{}'" in bad.stderr
    (run / "distributed_result" / "gsm8k.test.0.csv").write_text("task_id,score\n\"a,1\n")
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "gsm8k.test.0.csv:2" in bad.stderr
