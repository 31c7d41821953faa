"""Density-scaling study: budgeted datasets (real post-processing functions), scoring, plotting, and one
tiny end-to-end N with real LLaMA-Factory training and a command-style evaluation hook."""
from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from densepolicy.config import ConfigError, from_dict
from densepolicy.training.density import (
    DensityStudyConfig,
    StudyEvalConfig,
    budget_pairs,
    build_dataset,
    launcher_command,
    plot_density,
    run_study,
    score_results,
)
from densepolicy.paths import PROJECT_ROOT
from tests.harness.treedpo_helpers import write_pairs_csv

# pairs per task: uneven, so "the N tasks with most pairs" is a real choice
TASKS = {"t00": 12, "t01": 10, "t02": 9, "t03": 7, "t04": 6, "t05": 5, "t06": 4, "t07": 3, "t08": 2, "t09": 1}
EVAL_STUB = Path(__file__).parents[2] / "harness" / "density_eval_stub.py"


def study_cfg(tmp_path: Path, **changes) -> DensityStudyConfig:
    data = {"pairs_file": str(tmp_path / "pairs.csv"), "group": "math", "pair_budget": 12, "task_counts": [2, 4, 8],
            "output_dir": str(tmp_path / "study"), "cutoff_len": 1024, "evaluation": {"kind": "none"}}
    data.update(changes)
    return from_dict(DensityStudyConfig, data)


def task_counts_of(pairs_csv: Path) -> Counter:
    with open(pairs_csv, newline="", encoding="utf-8") as fh:
        return Counter(row["task_id"] for row in csv.DictReader(fh))


def test_fixed_budget_over_the_densest_tasks(tmp_path):
    write_pairs_csv(tmp_path / "pairs.csv", TASKS)
    cfg = study_cfg(tmp_path)
    by_n = {}
    for n in cfg.task_counts:
        budget_pairs(cfg, n, tmp_path / f"N{n}.csv")
        by_n[n] = task_counts_of(tmp_path / f"N{n}.csv")
    for n, counts in by_n.items():
        assert sum(counts.values()) == 12  # same budget for every N
        assert set(counts) == set(list(TASKS)[:n])  # the N tasks with most pairs
        assert all(counts[t] <= TASKS[t] for t in counts)
    # denser = more pairs per task
    assert max(by_n[2].values()) > max(by_n[8].values())
    # seeded: same seed -> same rows, other seed -> another subsample
    budget_pairs(cfg, 4, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "N4.csv").read_text()
    other = study_cfg(tmp_path, seed=7)
    budget_pairs(other, 4, tmp_path / "seed7.csv")
    assert (tmp_path / "seed7.csv").read_text() != (tmp_path / "N4.csv").read_text()


def test_budgeted_pairs_become_a_registered_dataset(tmp_path):
    write_pairs_csv(tmp_path / "pairs.csv", TASKS)
    cfg = study_cfg(tmp_path)
    budget_pairs(cfg, 4, tmp_path / "N4.csv")
    written = build_dataset(cfg, tmp_path / "N4.csv", tmp_path / "data", "density_math_12_N4", "")
    assert written == 12
    records = json.loads((tmp_path / "data" / "density_math_12_N4.json").read_text())
    assert len(records) == 12 and {"conversations", "chosen", "rejected"} <= set(records[0])
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    assert info["density_math_12_N4"]["ranking"] is True


def test_score_results_aggregates_shards_at_each_max_trial(tmp_path):
    rows = [("a", 1, 1), ("b", 1, 3), ("c", 1, 7), ("d", 0, ""), ("e", 1, 4)]
    for shard, part in enumerate((rows[:3], rows[3:])):
        with open(tmp_path / f"gsm8k.test.{shard}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["task_id", "dataset", "status", "score", "turns"])
            w.writeheader()
            for task, score, turns in part:
                w.writerow({"task_id": task, "dataset": "gsm8k", "status": "success" if score else "fail",
                            "score": score, "turns": turns})
    assert score_results(tmp_path, "gsm8k", [1, 4, 10]) == {1: 20.0, 4: 60.0, 10: 80.0}
    with pytest.raises(RuntimeError, match="no math"):
        score_results(tmp_path, "math", [4])


def test_launcher_command_is_the_documented_evaluation():
    cfg = StudyEvalConfig(procs_per_gpu=2, tmux_start_id=61, launcher_args=["sampler.max_tasks=8"])
    argv = launcher_command(cfg, Path("/m/density_N4"), "gsm8k", Path("/s/eval/N4/gsm8k"))
    assert argv == [str(PROJECT_ROOT / "distributed_test.sh"), "/m/density_N4", "gsm8k", "codeact_agent", "2", "61",
                    "wait=true", "output_dir=/s/eval/N4/gsm8k", "sampler.max_tasks=8"]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="task_counts"):
        study_cfg(tmp_path, task_counts=[4, 4])
    with pytest.raises(ConfigError, match="evaluation.command"):
        study_cfg(tmp_path, evaluation={"kind": "command"})
    with pytest.raises(ConfigError, match="pairs_file"):
        run_study(study_cfg(tmp_path, pairs_file=str(tmp_path / "missing.csv")), progress=False)


def test_plot_density_draws_one_panel_per_dataset_and_trial(tmp_path):
    rows = [{"density": d, "acc_math@4": a, "acc_math@10": a + 2}
            for d, a in ((1.0, 83.1), (0.5, 79.5), (0.25, 81.8), (0.125, 80.1))]
    out = plot_density(rows, ["acc_math@4", "acc_math@10"], tmp_path / "fig.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > 1.8 * height  # two panels side by side


@pytest.mark.integration
def test_study_trains_and_evaluates_one_tiny_n_and_resumes(tmp_path, tiny_llama):
    write_pairs_csv(tmp_path / "pairs.csv", TASKS)
    cfg = study_cfg(tmp_path, pair_budget=4, task_counts=[2],
                    train={"config": "cpu_tiny", "model": str(tiny_llama), "overrides": ["max_steps=1"]},
                    evaluation={"kind": "command", "datasets": ["gsm8k"], "max_trials": [4, 10],
                                "command": [sys.executable, str(EVAL_STUB), "{model_dir}", "{dataset}", "{eval_dir}"]})
    rows = run_study(cfg, progress=False)
    study = tmp_path / "study"
    assert len(rows) == 1
    row = rows[0]
    assert int(row["tasks"]) == 2 and int(row["pairs"]) == 4 and float(row["density"]) == 1.0
    # the stub evaluator scores from the model's own config (hidden size), see density_eval_stub.py
    expected = json.loads((study / "eval" / "N2" / "gsm8k" / "expected.json").read_text())
    assert row["acc_gsm8k@4"] == expected["4"] and row["acc_gsm8k@10"] == expected["10"]
    assert (study / "models" / "density_N2" / "model.safetensors").is_file()
    assert (study / "density_study.png").is_file()
    with open(study / "density_study.csv", newline="") as fh:
        saved = list(csv.DictReader(fh))
    assert saved[0]["dataset_name"] == "density_math_4_N2" and float(saved[0]["acc_gsm8k@10"]) == expected["10"]
    # re-running resumes: nothing is retrained or re-evaluated
    stamp = (study / "models" / "density_N2" / "model.safetensors").stat().st_mtime
    again = run_study(cfg, progress=False)
    assert (study / "models" / "density_N2" / "model.safetensors").stat().st_mtime == stamp
    assert float(again[0]["acc_gsm8k@4"]) == expected["4"]
