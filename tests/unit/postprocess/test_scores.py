"""`post_process_test_result.py --see_score`: Max-Trial accuracy, ALFWorld per type + macro, BabyAI
(docs/original.md §0.1, §2.7)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from densepolicy.postprocess.config import ScoresConfig
from densepolicy.postprocess.scores import build_tables, render_markdown, render_text, score_file

ROOT = Path(__file__).resolve().parents[3]


def write_results(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["task_id", "dataset", "status", "score", "turns", "task_type"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"status": "success" if row.get("score") == 1 else "fail", "task_type": "", **row})
    return path


def math_rows(dataset: str, outcomes: list[tuple[int, int]]) -> list[dict]:
    """(score, turns) per task."""
    return [{"task_id": str(i), "dataset": dataset, "score": s, "turns": t} for i, (s, t) in enumerate(outcomes)]


def test_accuracy_at_t_counts_answer_attempts(tmp_path):
    # 5 tasks: solved at attempt 1, 1, 3, 10; one unsolved after 10 attempts
    path = write_results(tmp_path / "math.test.None.csv",
                         math_rows("math", [(1, 1), (1, 1), (1, 3), (1, 10), (0, 10)]))
    score = score_file(path, ScoresConfig())
    assert [round(score.acc(t), 2) for t in (1, 2, 3, 4, 9, 10)] == [0.4, 0.4, 0.6, 0.6, 0.6, 0.8]
    assert score.n == 5 and score.kind == "accuracy"


def test_tables_side_by_side_and_alfworld_macro_average(tmp_path):
    base = tmp_path / "eval_results" / "codeact_agent.base-model" / "30.10.None"
    trained = tmp_path / "eval_results" / "codeact_agent.trained-model" / "30.10.None"
    files = [
        write_results(base / "gsm8k.test.None.csv", math_rows("gsm8k", [(1, 1), (0, 10), (1, 4), (0, 10)])),
        write_results(trained / "gsm8k.test.None.csv", math_rows("gsm8k", [(1, 1), (1, 2), (1, 4), (0, 10)])),
    ]
    alf = [{"task_id": f"g{i}", "dataset": "alfworld", "score": s, "turns": "", "task_type": t}
           for i, (t, s) in enumerate([("put", 1), ("put", 0), ("clean", 1), ("cool", 0), ("heat", 1),
                                       ("examine", 0), ("puttwo", 1), ("puttwo", 1)])]
    files.append(write_results(base / "alfworld.valid_unseen.None.csv", alf))
    files.append(write_results(base / "babyai.test.None.csv",
                               [{"task_id": f"L:{i}", "dataset": "babyai", "score": int(i < 3), "turns": ""}
                                for i in range(8)]))
    tables = build_tables([score_file(f) for f in files])
    assert tables.math_header == ["model", "GSM8K@1", "GSM8K@4*", "GSM8K@8*", "GSM8K@10*"]
    assert tables.math_rows == [["base-model", "25.00", "50.00", "50.00", "50.00"],
                                ["trained-model", "25.00", "75.00", "75.00", "75.00"]]
    # put 50, examine 0, clean 100, cool 0, heat 100, puttwo 100 -> macro 58.33 (micro would be 62.5)
    assert tables.embodied_rows == [["base-model", "50.00", "0.00", "100.00", "0.00", "100.00", "100.00",
                                     "58.33", "37.50"]]
    text = render_text(tables)
    assert "WITH CORRECTNESS FEEDBACK" in text and "trained-model" in text
    assert "| base-model | 50.00 | 0.00 |" in render_markdown(tables)
    metrics = {(r["label"], r["dataset"], r["metric"]): r["value"] for r in tables.tidy}
    assert metrics[("trained-model", "gsm8k", "acc@2")] == 50.0
    assert metrics[("base-model", "alfworld", "success_avg_macro")] == 58.33


def test_cli_see_score_writes_csv_and_markdown_and_flags_tree_files(tmp_path):
    run = tmp_path / "codeact_agent_tree.m" / "temperature_8_3_4"
    tree_file = write_results(run / "math.train.None.csv",
                              [{"task_id": "1", "dataset": "math", "score": 1, "turns": "", "status": "done"}])
    eval_file = write_results(tmp_path / "codeact_agent.m" / "10.10.None" / "math.test.None.csv",
                              math_rows("math", [(1, 2), (0, 10)]))
    cmd = [sys.executable, str(ROOT / "post_process_test_result.py"), "--see_score", "--files", str(eval_file),
           str(tree_file), "--labels", "eval", "tree", "--output", str(tmp_path / "table"),
           "--allow_mismatch"]  # math.test vs math.train: different task sets
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "coverage (any leaf solved), not accuracy" in out.stdout
    with (tmp_path / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["label"], r["metric"]): r["value"] for r in rows}[("eval", "acc@2")] == "50.0"
    assert (tmp_path / "table.md").read_text().startswith("**!! NOT COMPARABLE (--allow_mismatch): math: 'eval' vs")
    assert "\n### Math" in (tmp_path / "table.md").read_text()
    seed_form = subprocess.run([sys.executable, str(ROOT / "post_process_test_result.py"), "--see_score",
                                "--data_dir", str(run), "--dataset_file_name_list", "math.train.{}.csv"],
                               capture_output=True, text=True, cwd=ROOT)
    assert seed_form.returncode == 0 and (run / "math.train.None.scores.md").is_file()
    dup = subprocess.run(cmd[:4] + [str(eval_file), str(eval_file), "--labels", "x", "x"],
                         capture_output=True, text=True, cwd=ROOT)
    assert dup.returncode == 2 and "two files for label 'x'" in dup.stderr


@pytest.mark.parametrize("bad", ["scores.max_trial=0", "scores.table_trials=[1,12]"])
def test_bad_score_config_is_rejected(tmp_path, bad):
    path = write_results(tmp_path / "math.test.None.csv", math_rows("math", [(1, 1)]))
    out = subprocess.run([sys.executable, str(ROOT / "post_process_test_result.py"), "--see_score", "--files",
                          str(path), bad], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and bad.split("=")[0].split(".")[1] in out.stderr


def test_a_new_env_is_scored_by_its_spec_alone(tmp_path, monkeypatch):
    # one registry entry puts a new env's results in the table of its score layout
    from envs.spec import ENV_SPECS, EnvSpec

    for name, title, layout in (("algebra", "Algebra", "attempts"), ("maze", "Maze", "success")):
        monkeypatch.setitem(ENV_SPECS, name, EnvSpec(name=name, factory="envs.maze_env:MazeEnv", family=name,
                                                     packages=("x",), title=title, score=layout))
    run = tmp_path / "eval_results" / "codeact_agent.m" / "r"
    files = [write_results(run / "algebra.test.None.csv", math_rows("algebra", [(1, 1), (1, 4), (0, 10), (0, 10)])),
             write_results(run / "maze.test.None.csv",
                           [{"task_id": str(i), "dataset": "maze", "score": int(i < 1), "turns": ""} for i in range(4)])]
    tables = build_tables([score_file(f) for f in files])
    assert tables.math_header == ["model", "Algebra@1", "Algebra@4*", "Algebra@8*", "Algebra@10*"]
    assert tables.math_rows == [["m", "25.00", "50.00", "50.00", "50.00"]]
    assert tables.embodied_header[-2:] == ["BabyAI", "Maze"] and tables.embodied_rows[0][-2:] == ["–", "25.00"]
    assert tables.other_rows == [] and "macro avg, BabyAI, Maze" in render_text(tables)
