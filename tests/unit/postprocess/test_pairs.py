"""`post_process_training_data.py`: pair extraction from hand-made tree dumps and pair budgets (docs/original.md §6)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from densepolicy.postprocess.budget import allocate, merge_all_pairs
from densepolicy.postprocess.pairs import PAIR_COLUMNS, read_pairs
from densepolicy.postprocess.config import Budget, MergePairsConfig
from densepolicy.testing.synthetic_trees import tree_from_spec, write_jsonl

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = str(ROOT / "post_process_training_data.py")
PROMPT = [{"role": "user", "content": "Goal: put a cool apple in the fridge."}]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT)


def make_run(tmp_path: Path) -> Path:
    """A merged run dir with two ALFWorld tasks whose pairs are known by hand."""
    run = tmp_path / "eval_results" / "codeact_agent_tree.m" / "temperature_8_3_4"
    task_a = "pick_cool_then_place_in_recep-Apple-None-Fridge-1/trial_T1"
    spec_a = {  # first step: 0 (value 1, 2 runs) vs 1 (value 0, 2 runs) -> selected
        "0:Action: goto('fridge 1')": {"0:Action: cool('apple', 'fridge 1')": "S", "1:Action: look()": "S"},
        "1:Action: look()": {"0:Action: look()": "F", "1:Action: inventory()": "F"},
    }
    task_b = "pick_and_place_simple-Mug-None-Desk-2/trial_T2"
    spec_b = {"0:Action: take('mug', 'desk 2')": {"0:Action: put('mug', 'shelf 1')": "S",
                                                  "1:Action: put('mug', 'floor')": "F",
                                                  "2:Action: put('mug', 'shelf 1')": "F"},
              "1:Action: look()": "U"}
    nodes = tree_from_spec(task_a, spec_a, PROMPT) + tree_from_spec(task_b, spec_b, PROMPT)
    write_jsonl(run / "trees" / "alfworld.train.None.jsonl", nodes)
    with (run / "alfworld.train.None.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["task_id", "dataset", "split", "status", "score", "task_type"])
        writer.writeheader()
        writer.writerow({"task_id": task_a, "dataset": "alfworld", "split": "train", "status": "done",
                         "score": 1.0, "task_type": "cool"})
        writer.writerow({"task_id": task_b, "dataset": "alfworld", "split": "train", "status": "done",
                         "score": 1.0, "task_type": "put"})
    return run


def test_process_result_seed_arguments_write_known_pairs(tmp_path):
    run = make_run(tmp_path)
    out = cli("--process_result", "--data_dir", str(run), "--dataset_file_name_list", "alfworld.train.{}.csv",
              "--data_sub_dir", "alfworld", "--dataset_file_name", "alfworld.train.None.csv",
              "--plot_tree", "pick_and_place_simple-Mug-None-Desk-2/trial_T2")
    assert out.returncode == 0, out.stderr
    pairs_csv = run / "alfworld" / "alfworld.train.pairs.csv"
    rows = [row for _, row in read_pairs(pairs_csv)]
    with pairs_csv.open() as fh:
        assert next(csv.reader(fh)) == PAIR_COLUMNS
    got = {(r["chosen_node"], r["rejected_node"]): r for r in rows}
    # task a: (0, 1) first step; (0-0, 0-1) equal values -> none; (1-0, 1-1) equal -> none
    # task b: 0-0 beats 0-1; 0-0 vs 0-2 has identical stripped text -> skipped; 1 unvisited -> no pair
    assert sorted(got) == [("0", "1"), ("0-0", "0-1")]
    first = got[("0", "1")]
    assert first["prompt"] == PROMPT and first["depth"] == "1"
    assert first["chosen"] == "Action: goto('fridge 1')" and first["rejected"] == "Action: look()"
    assert (first["chosen_value"], first["rejected_value"], first["selected"]) == (1.0, 0.0, True)
    assert (first["dataset"], first["task_type"]) == ("alfworld", "cool")
    second = got[("0-0", "0-1")]
    assert second["prompt"] == PROMPT + [{"role": "assistant", "content": "Action: take('mug', 'desk 2')"},
                                         {"role": "user", "content": "obs after 0"}]
    assert second["chosen"] == "Action: put('mug', 'shelf 1')" and second["task_type"] == "put"
    assert "2 candidate pairs, 2 selected" in out.stdout and "identical action text" in out.stdout
    assert (run / "alfworld" / "alfworld.train.pairs_per_task.png").stat().st_size > 1000
    pictures = list((run / "alfworld").glob("alfworld.train.tree_pick_and_place_simple*.png"))
    assert len(pictures) == 1 and pictures[0].read_bytes()[:4] == b"\x89PNG"

    again = cli("--process_result", "--tree_file", str(run / "trees" / "alfworld.train.None.jsonl"),
                "--output", str(pairs_csv))
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwrites silently


def test_process_result_simple_form_and_config_override(tmp_path):
    run = make_run(tmp_path)
    out_csv = tmp_path / "p.pairs.csv"
    out = cli("--process_result", "--tree_file", str(run / "trees" / "alfworld.train.None.jsonl"),
              "--output", str(out_csv), "pairs.thre_value=1.0", "pairs.histogram=false")
    assert out.returncode == 0, out.stderr
    rows = [row for _, row in read_pairs(out_csv)]
    assert len(rows) == 2 and all(r["selected"] for r in rows)  # both gaps are exactly 1.0
    assert not (tmp_path / "p.pairs_per_task.png").exists()
    bad = cli("--process_result", "--tree_file", str(run / "trees" / "alfworld.train.None.jsonl"),
              "--output", str(tmp_path / "x.csv"), "pairs.thre_valeu=1")
    assert bad.returncode == 2 and "thre_valeu" in bad.stderr


def test_unmerged_and_ungrouped_dumps_are_refused(tmp_path):
    run = tmp_path / "run"
    (run / "math.train.0.csv").parent.mkdir(parents=True)
    (run / "math.train.0.csv").write_text("task_id\n")
    out = cli("--process_result", "--data_dir", str(run), "--dataset_file_name_list", "math.train.{}.csv")
    assert out.returncode == 2 and "--merge_distributed_result first" in out.stderr
    nodes = tree_from_spec("a", {"0": "S"}) + tree_from_spec("b", {"0": "S"}) + tree_from_spec("a", {"1": "F"})
    write_jsonl(run / "t.jsonl", nodes)
    out = cli("--process_result", "--tree_file", str(run / "t.jsonl"), "--output", str(run / "o.csv"))
    assert out.returncode == 2 and "t.jsonl:3" in out.stderr and "not contiguous" in out.stderr


def test_allocate_hits_the_budget_exactly_and_keeps_the_richest_tasks():
    counts = {"t1": 10, "t2": 7, "t3": 3, "t4": 3, "t5": 1}
    quotas = allocate(counts, Budget(pairs=9, tasks=3), seed=0)
    assert set(quotas) == {"t1", "t2", "t3"}               # t3 beats t4 on the id tie-break
    assert sum(quotas.values()) == 9
    assert all(quotas[t] <= counts[t] for t in quotas)
    assert quotas["t1"] >= quotas["t2"] >= quotas["t3"]     # proportional: 4.5, 3.15, 1.35
    assert allocate(counts, Budget(pairs=100, tasks=2), seed=0) == {"t1": 10, "t2": 7}


def write_pairs(path: Path, dataset: str, task_type: str, per_task: dict[str, int]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PAIR_COLUMNS)
        writer.writeheader()
        for task, n in per_task.items():
            for i in range(n + 1):  # one extra unselected row per task
                writer.writerow({"task_id": task, "dataset": dataset, "task_type": task_type,
                                 "prompt": json.dumps(PROMPT), "chosen": f"c{i}", "rejected": f"r{i}",
                                 "chosen_node": str(i), "rejected_node": "x", "chosen_value": 1,
                                 "rejected_value": 0, "chosen_visits": 1, "rejected_visits": 1,
                                 "depth": 1, "selected": i < n})


def test_merge_all_pairs_budgets_density_and_seed(tmp_path):
    root = tmp_path / "eval_results"
    (root / "a" / "pairs").mkdir(parents=True)
    (root / "b" / "pairs").mkdir(parents=True)
    write_pairs(root / "a" / "pairs" / "math.train.pairs.csv", "math", "", {f"m{i}": 2 + i for i in range(10)})
    write_pairs(root / "b" / "pairs" / "alfworld.train.pairs.csv", "alfworld", "put", {"p1": 5, "p2": 2})
    extra = tmp_path / "gsm8k.pairs.csv"
    write_pairs(extra, "gsm8k", "", {"g": 3})
    out = cli("--merge_all_pairs", "--data_dir", str(root), "merge_all_pairs.budgets.math.pairs=20",
              "merge_all_pairs.budgets.math.tasks=4", "merge_all_pairs.budgets.alfworld_put.pairs=4",
              "merge_all_pairs.budgets.alfworld_put.tasks=1")
    assert out.returncode == 0, out.stderr
    merged = root / "merged_all_pairs.alfworld_put-4-1.math-20-4.csv"
    rows = [row for _, row in read_pairs(merged)]
    per_task = Counter(r["task_id"] for r in rows)
    assert sum(v for k, v in per_task.items() if k.startswith("m")) == 20
    assert {k for k in per_task if k.startswith("m")} == {"m6", "m7", "m8", "m9"}  # the 4 richest tasks
    assert per_task["p1"] == 4 and "p2" not in per_task
    assert all(r["selected"] for r in rows) and "source_file" in rows[0]

    cfg = MergePairsConfig(budgets={"math": Budget(pairs=20, tasks=4)}, seed=7)
    inputs = [root / "a" / "pairs" / "math.train.pairs.csv", extra]
    first = merge_all_pairs(inputs, tmp_path / "s1.csv", cfg, show_progress=False)
    merge_all_pairs(inputs, tmp_path / "s2.csv", cfg, show_progress=False)
    assert (tmp_path / "s1.csv").read_bytes() == (tmp_path / "s2.csv").read_bytes()  # seeded
    assert first.groups["gsm8k"].pairs_kept == 3                                     # unbudgeted: kept
    cfg.seed = 8
    merge_all_pairs(inputs, tmp_path / "s3.csv", cfg, show_progress=False)
    assert (tmp_path / "s1.csv").read_bytes() != (tmp_path / "s3.csv").read_bytes()
    cfg.unbudgeted = "drop"
    dropped = merge_all_pairs(inputs, tmp_path / "s4.csv", cfg, show_progress=False)
    assert dropped.groups["gsm8k"].pairs_kept == 0
    with pytest.raises(FileExistsError):
        merge_all_pairs(inputs, tmp_path / "s4.csv", cfg, show_progress=False)


def test_alfworld_task_types_come_from_the_environments_table():
    from densepolicy.postprocess.pairs import alfworld_task_type
    from envs.alfworld_games import TASK_TYPE_PREFIXES

    folders = {"pick_and_place_simple": "put", "look_at_obj_in_light": "examine",
               "pick_clean_then_place_in_recep": "clean", "pick_cool_then_place_in_recep": "cool",
               "pick_heat_then_place_in_recep": "heat", "pick_two_obj_and_place": "puttwo"}
    for folder, kind in folders.items():
        assert alfworld_task_type(f"{folder}-Mug-None-Desk-308/trial_T20190908_010101_000001") == kind
    assert set(folders.values()) == set(TASK_TYPE_PREFIXES.values())
    assert alfworld_task_type("not_a_game/trial_1") == ""
