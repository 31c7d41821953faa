"""`make experiment` end to end without a server: the same held-out ids for every model, the prompts per
model, DPO from the warm start on the pairs found, and the report. Launcher and server are replaced by
synthetic result files (tests/loop_fakes.py); pairs and the report run through the real code."""
import csv
import json
import signal
import subprocess
import sys

import pytest

from densepolicy.config import load_config
from densepolicy.experiment import BASE, TREEDPO, WARM, Experiment, ExperimentConfig
from densepolicy.loop_stages import LoopStages, StageError
from densepolicy.paths import PROJECT_ROOT
from tests.loop_fakes import TREE_WITH_PAIRS, OfflineStages


class Stages(OfflineStages, LoopStages):
    tree_spec = TREE_WITH_PAIRS

    def prepare_dataset(self, pairs_csv, name, model):
        self.calls.append(("prepare_dataset", model, sum(1 for _ in csv.DictReader(open(pairs_csv)))))

    def train(self, config, dataset, model, out, overrides):
        self.calls.append(("train", model, config, list(overrides)))
        out.mkdir(parents=True)


def test_experiment_flow_and_report(tmp_path):
    root = tmp_path / "exp"
    (root / "old.txt").parent.mkdir(parents=True)
    (root / "old.txt").write_text("an older experiment")
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1",
        "datasets=[{name: gsm8k, sample_tasks: 3, eval_tasks: 5, evaluate: [max_turn=1]},"
        " {name: babyai, sample_tasks: 2, eval_tasks: 4}]"])
    warm_dir = str(tmp_path / "warm")

    def solved(model, task):  # TreeDPO solves everything, the warm start half, the base nothing
        return model.endswith("treedpo_model") or (model == warm_dir and sum(map(ord, task)) % 2 == 0)

    exp = Experiment(cfg, warm_start=lambda overrides, log: tmp_path / "warm")
    exp.stages = Stages(root, tag="experiment", n_stages=11, proc_per_server=1, tmux_start_id=0, serving={},
                        sampler={}, solved=solved)
    assert exp.main() == 0

    assert list(tmp_path.glob("exp.prev-*/old.txt")), "the older experiment is moved aside, not overwritten"
    calls = exp.stages.calls
    runs = {c[0]: c for c in calls if c[0] not in ("serve", "prepare_dataset", "train")}
    assert list(runs) == ["sample", "eval_warm", "eval_treedpo", "eval_base"]
    tasks = json.loads((root / "tasks.json").read_text())
    assert len(tasks["evaluation"]["gsm8k"]) == 5 and len(tasks["evaluation"]["babyai"]) == 4
    assert len(tasks["train"]["gsm8k"]) == 3
    assert not set(tasks["train"]["babyai"]) & set(tasks["evaluation"]["babyai"])
    for kind in ("eval_warm", "eval_treedpo", "eval_base"):
        for name, sets in runs[kind][2].items():
            assert f"task_ids={json.dumps(tasks['evaluation'][name])}" in sets  # the same ids for every model
            assert ("in_context_number=0" in sets) == (kind != "eval_base")  # base keeps its usual prompt
    assert all("in_context_number=0" in s for s in runs["sample"][2].values())
    assert runs["eval_base"][1] == cfg.base_model and runs["eval_warm"][1] == warm_dir
    (_, model, n_pairs), = [c for c in calls if c[0] == "prepare_dataset"]
    (_, train_model, config, overrides), = [c for c in calls if c[0] == "train"]
    assert model == train_model == warm_dir and config == "cpu_dpo" and n_pairs > 0
    assert overrides[-1] == f"max_steps={min(30, -(-2 * n_pairs // 4))}"

    report = (root / "report.md").read_text()
    for model in (BASE, WARM, TREEDPO):
        assert f"| {model} |" in report
    assert f"| {TREEDPO} vs {WARM} |" in report and f"| {WARM} vs {BASE} |" in report
    with open(root / "results.csv", newline="") as fh:
        rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(fh)}
    assert rows[("gsm8k", TREEDPO)]["solved"] == "5" and rows[("babyai", BASE)]["solved"] == "0"
    settings = json.loads((root / "settings.json").read_text())
    assert settings["tasks"]["evaluation"] == tasks["evaluation"] and settings["pairs"]["gsm8k"] > 0


def test_an_env_without_base_evaluation_is_compared_without_the_base_row(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1",
        "datasets=[{name: gsm8k, sample_tasks: 3, eval_tasks: 5, evaluate: [max_turn=1]},"
        " {name: babyai, sample_tasks: 2, eval_tasks: 4, evaluate_base: false}]"])
    exp = Experiment(cfg, warm_start=lambda overrides, log: tmp_path / "warm")
    exp.stages = Stages(root, tag="experiment", n_stages=11, proc_per_server=1, tmux_start_id=0, serving={},
                        sampler={}, solved=lambda model, task: model.endswith("treedpo_model"))
    assert exp.main() == 0
    (eval_base,) = [c for c in exp.stages.calls if c[0] == "eval_base"]
    assert list(eval_base[2]) == ["gsm8k"]  # the base model is evaluated on gsm8k only
    with open(root / "results.csv", newline="") as fh:
        rows = {(r["dataset"], r["model"]) for r in csv.DictReader(fh)}
    assert ("gsm8k", BASE) in rows and ("babyai", BASE) not in rows and ("babyai", TREEDPO) in rows
    with open(root / "paired_tests.csv", newline="") as fh:
        pairs = {(r["dataset"], r["model_a"], r["model_b"]) for r in csv.DictReader(fh)}
    assert ("babyai", TREEDPO, WARM) in pairs and ("gsm8k", WARM, BASE) in pairs and ("babyai", WARM, BASE) not in pairs


def test_report_only_rebuilds_the_report_of_an_interrupted_run_from_what_finished(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1",
        "datasets=[{name: gsm8k, sample_tasks: 3, eval_tasks: 5, evaluate: [max_turn=1]}]"])
    exp = Experiment(cfg, warm_start=lambda overrides, log: tmp_path / "warm")
    exp.stages = Stages(root, tag="experiment", n_stages=11, proc_per_server=1, tmux_start_id=0, serving={},
                        sampler={}, solved=lambda model, task: model.endswith("treedpo_model"))
    assert exp.main() == 0
    # as if the run had been stopped during the base model's evaluation: shards written, merge not done
    (merged_base,) = (root / "eval_base" / "gsm8k").glob("*.None.csv")
    merged_base.rename(merged_base.with_name("gsm8k.test.0.csv"))
    for name in ("report.md", "results.csv", "paired_tests.csv", "settings.json"):
        (root / name).unlink()

    # today's config differs from the run's; the report must describe the run (run.json)
    later = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml",
                        [f"output_dir={root}", "budget=0.5", "seed=1"])
    assert Experiment(later).report_only() == 0

    with open(root / "results.csv", newline="") as fh:
        rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {("gsm8k", WARM), ("gsm8k", TREEDPO)}
    assert rows[("gsm8k", TREEDPO)]["solved"] == "5" and rows[("gsm8k", WARM)]["solved"] == "0"
    settings = json.loads((root / "settings.json").read_text())
    assert settings["config"]["budget"] == 1.0 and settings["config"]["seed"] == cfg.seed
    assert settings["unfinished evaluations (left out)"] == [f"{BASE} on gsm8k"]
    assert settings["models"][WARM] == str(tmp_path / "warm") and settings["pairs"]["gsm8k"] > 0
    stages = list(settings["timings_s"])
    assert stages[0].startswith("warm start") and len(stages) == 8  # every stage of the first run, from timings.json
    assert f"| {TREEDPO} vs {WARM} |" in (root / "report.md").read_text()


def test_report_only_without_a_run_names_the_missing_file(tmp_path):
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [f"output_dir={tmp_path}"])
    with pytest.raises(StageError, match="tasks.json not found"):
        Experiment(cfg).report_only()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_run_started_with_sigint_ignored_still_stops_on_sigint_and_sigterm(sig):
    # `make experiment &` from a script starts Python with SIGINT ignored; stop_on_signals turns both signals
    # into KeyboardInterrupt, which the stages answer by stopping their workers
    code = ("import time\nfrom densepolicy.loop_stages import stop_on_signals\nstop_on_signals()\n"
            "try:\n    print('ready', flush=True)\n    time.sleep(60)\nexcept KeyboardInterrupt as exc:\n    print('stopped', exc)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    assert proc.communicate(timeout=20)[0].strip() == f"stopped {sig.name}"
