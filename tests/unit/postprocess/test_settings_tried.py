"""The settings-tried table over finished experiments, from reports written by the experiment's own writer."""
import csv
import json
import subprocess
import sys

import pytest

from densepolicy.experiment import TREEDPO, WARM, write_report
from densepolicy.paths import PROJECT_ROOT
from densepolicy.postprocess import comparison
from densepolicy.postprocess.settings_tried import ExperimentDirError, differing_settings, settings_tried
from tests.harness.loop_fakes import write_eval_run

TASKS = [str(i) for i in range(20)]


def _runs(tmp_path, name, rate_every):
    """4 sampled runs; in run k the tasks t with (t + k) % rate_every == 0 are solved (each task 1/rate_every)."""
    return [comparison.load_outcomes(write_eval_run(tmp_path / f"{name}{k}", "babyai",
                                                    {t: (int(t) + k) % rate_every == 0 for t in TASKS}))
            for k in range(4)]


def _experiment(tmp_path, name, config, dpo_every, tasks=TASKS):
    warm_runs, dpo_runs = _runs(tmp_path, f"{name}_w", 4), _runs(tmp_path, f"{name}_d", dpo_every)
    c = comparison.compare("babyai", {WARM: warm_runs[0], TREEDPO: dpo_runs[0]}, [(TREEDPO, WARM)],
                           samples={WARM: warm_runs, TREEDPO: dpo_runs}, temperature=0.7)
    settings = {"config": config, "models": {WARM: "w", TREEDPO: "d"},
                "tasks": {"train": {}, "evaluation": {"babyai": list(tasks)}}, "pairs": {"babyai": 50},
                "dpo_steps": 24, "rounds": [{"round": 1, "policy": "w", "heldout_pairs": 4,
                                             "heldout_metrics": {"rewards/accuracies": 0.5}}],
                "git_commit": "abc"}
    root = tmp_path / name
    write_report(root, [c], settings)
    return root, c


BASE_CONFIG = {"heldout": "valid", "train_overrides": [], "output_dir": "a", "tmux_start_id": 150,
               "datasets": [{"name": "babyai", "screen_tasks": 96}]}


def test_one_row_per_experiment_with_the_settings_that_differ_and_the_paired_effect(tmp_path):
    a, ca = _experiment(tmp_path, "a", BASE_CONFIG, 4)
    b, cb = _experiment(tmp_path, "b", {**BASE_CONFIG, "output_dir": "b", "tmux_start_id": 160,
                                        "train_overrides": ["pref_ftx=1.0"]}, 2)
    rows = settings_tried([a, b])
    assert [r["settings"] for r in rows] == ["train_overrides=[]", 'train_overrides=["pref_ftx=1.0"]']
    (_, _, ra), = ca.rate_tests
    (_, _, rb), = cb.rate_tests
    assert rows[0]["effect"] == str(round(ra.effect, 4)) and rows[1]["effect"] == str(round(rb.effect, 4))
    assert float(rows[1]["effect"]) == pytest.approx(0.25)  # 50 % vs 25 % of the tasks
    assert rows[1]["heldout"] == "valid" and rows[1]["pairs"] == 50 and rows[1]["dpo_steps"] == 24
    assert rows[1]["heldout_reward_accuracy"] == 0.5 and all(r["same_tasks_as_first"] for r in rows)


def test_rows_on_other_held_out_tasks_are_marked_not_comparable(tmp_path):
    a, _ = _experiment(tmp_path, "a", BASE_CONFIG, 4)
    b, _ = _experiment(tmp_path, "b", {**BASE_CONFIG, "heldout": "test"}, 4, tasks=TASKS[::-1][:19] + ["x"])
    rows = settings_tried([a, b])
    assert [r["same_tasks_as_first"] for r in rows] == [True, False]
    assert rows[1]["settings"] == 'heldout="test"'


def test_nested_per_dataset_settings_are_named_by_dataset():
    one = {"datasets": [{"name": "babyai", "screen_tasks": 96}, {"name": "gsm8k", "screen_tasks": 40}]}
    two = {"datasets": [{"name": "babyai", "screen_tasks": 384}, {"name": "gsm8k", "screen_tasks": 40}]}
    assert differing_settings([one, two]) == ["datasets.babyai.screen_tasks"]


def test_a_directory_without_a_report_is_named(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "settings.json").write_text("{\"config\": ")
    with pytest.raises(ExperimentDirError, match=r"half/settings.json.*--report-only"):
        settings_tried([tmp_path / "half"])


def test_the_command_prints_the_table_writes_the_csv_and_never_overwrites_it(tmp_path):
    a, _ = _experiment(tmp_path, "a", BASE_CONFIG, 4)
    b, _ = _experiment(tmp_path, "b", {**BASE_CONFIG, "train_overrides": ["pref_ftx=1.0"]}, 2)
    out = tmp_path / "tried.csv"
    cmd = [sys.executable, str(PROJECT_ROOT / "scripts" / "compare_experiments.py"), str(a), str(b), "--csv", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| train_overrides=[\"pref_ftx=1.0\"] | valid | babyai | 50 (4) | 24 |" in done.stdout
    assert "+25.0 (" in done.stdout
    with open(out, newline="") as fh:
        assert [r["settings"] for r in csv.DictReader(fh)] == ["train_overrides=[]", 'train_overrides=["pref_ftx=1.0"]']
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert json.loads((a / "settings.json").read_text())["git_commit"] == "abc"  # inputs only read
