"""`make experiment` end to end without a server: the same held-out ids for every model, the prompts per
model, DPO from the warm start on the pairs found, and the report. Launcher and server are replaced by
synthetic result files (tests/harness/loop_fakes.py); pairs and the report run through the real code."""
import csv
import json
import signal
import subprocess
import sys

import pytest

from densepolicy.config import ConfigError, load_config
from densepolicy.experiment import BASE, TREEDPO, WARM, Experiment, ExperimentConfig
from densepolicy.loop_stages import LoopStages, StageError
from densepolicy.paths import PROJECT_ROOT
from tests.harness.loop_fakes import TREE_WITH_PAIRS, OfflineStages


class Stages(OfflineStages, LoopStages):
    tree_spec = TREE_WITH_PAIRS

    def prepare_dataset(self, pairs_csv, name, model, data_dir=None):
        # the dataset is written inside the experiment's output dir: experiments side by side never share one
        assert data_dir is not None and data_dir.is_relative_to(self.root), data_dir
        self.calls.append(("prepare_dataset", model, sum(1 for _ in csv.DictReader(open(pairs_csv)))))

    def train(self, config, dataset, model, out, overrides, data_dir=None):
        assert data_dir == out.parent / "lf_data", "DPO reads the dataset the experiment prepared"
        self.calls.append(("train", model, config, list(overrides)))
        assert not (out.exists() and any(out.iterdir())), "train.py refuses a non-empty output directory"
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")


def task_ids_of(sets):
    """The task ids a launcher run was given (its `task_ids=` setting)."""
    (text,) = [s for s in sets if s.startswith("task_ids=")]
    return json.loads(text.split("=", 1)[1])


def run_offline(cfg, tmp_path, solved):
    """`make experiment` with `cfg` on the offline stages (warm start = tmp_path/warm); asserts it exits 0."""
    exp = Experiment(cfg, warm_start=lambda overrides, log: tmp_path / "warm")
    exp.stages = Stages(exp.root, tag="experiment", n_stages=exp.stages.n_stages, proc_per_server=1,
                        tmux_start_id=0, serving={}, sampler={}, solved=solved)
    assert exp.main() == 0
    return exp


def test_experiment_flow_and_report(tmp_path):
    root = tmp_path / "exp"
    (root / "old.txt").parent.mkdir(parents=True)
    (root / "old.txt").write_text("an older experiment")
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1", "evaluate_base=true", "eval_samples=4",
        "datasets=[{name: gsm8k, sample_tasks: 3, eval_tasks: 5, evaluate: [max_turn=1]},"
        " {name: babyai, sample_tasks: 2, eval_tasks: 4}]"])
    warm_dir = str(tmp_path / "warm")

    def solved(model, task):  # TreeDPO solves everything, the warm start half, the base nothing
        return model.endswith("treedpo_model") or (model == warm_dir and sum(map(ord, task)) % 2 == 0)

    exp = run_offline(cfg, tmp_path, solved)

    assert list(tmp_path.glob("exp.prev-*/old.txt")), "the older experiment is moved aside, not overwritten"
    calls = exp.stages.calls
    runs = {c[0]: c for c in calls if c[0] not in ("serve", "prepare_dataset", "train")}
    sampled = [f"{kind}/sample{k}" for kind in ("eval_warm", "eval_treedpo", "eval_base") for k in range(4)]
    assert list(runs) == ["sample", "eval_warm", *sampled[:4], "eval_treedpo", *sampled[4:8], "eval_base",
                          *sampled[8:]]
    for k in range(4):  # sample k: the same seed and temperature for every model, a different seed per sample
        sets = [runs[f"{kind}/sample{k}"][2]["babyai"] for kind in ("eval_warm", "eval_treedpo", "eval_base")]
        assert all(f"seed={cfg.eval_seed + k}" in s and f"temperature={cfg.eval_temperature}" in s for s in sets)
    assert not any(s.startswith(("seed=", "temperature=")) for s in runs["eval_warm"][2]["babyai"])  # greedy
    tasks = json.loads((root / "tasks.json").read_text())
    assert len(tasks["evaluation"]["gsm8k"]) == 5 and len(tasks["evaluation"]["babyai"]) == 4
    assert len(tasks["train"]["gsm8k"]) == 3
    assert not set(tasks["train"]["babyai"]) & set(tasks["evaluation"]["babyai"])
    for kind in ("eval_warm", "eval_treedpo", "eval_base", *sampled):
        for name, sets in runs[kind][2].items():
            assert f"task_ids={json.dumps(tasks['evaluation'][name])}" in sets  # the same ids for every model
            assert ("in_context_number=0" in sets) == (not kind.startswith("eval_base"))  # base: usual prompt
    assert all("in_context_number=0" in s for s in runs["sample"][2].values())
    assert runs["eval_base"][1] == cfg.base_model and runs["eval_warm"][1] == warm_dir
    (_, model, n_pairs), (_, held_model, n_held) = [c for c in calls if c[0] == "prepare_dataset"]
    (_, train_model, config, overrides), = [c for c in calls if c[0] == "train"]
    assert model == held_model == train_model == warm_dir and config == "cpu_dpo" and n_pairs > 0
    # one of the 5 tasks with pairs (dpo_heldout_tasks 0.2) is held out of DPO and scored after it
    assert n_held == (n_pairs + n_held) // 5 and n_held > 0
    assert f"max_steps={min(30, -(-2 * n_pairs // 4))}" in overrides
    assert f"eval_dataset={cfg.dataset_name}_heldout" in overrides and "do_eval=true" in overrides

    report = (root / "report.md").read_text()
    for model in (BASE, WARM, TREEDPO):
        assert f"| {model} |" in report
    assert f"| {TREEDPO} vs {WARM} |" in report and f"| {WARM} vs {BASE} |" in report
    with open(root / "results.csv", newline="") as fh:
        rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(fh)}
    assert rows[("gsm8k", TREEDPO)]["solved"] == "5" and rows[("babyai", BASE)]["solved"] == "0"
    settings = json.loads((root / "settings.json").read_text())
    assert settings["tasks"]["evaluation"] == tasks["evaluation"] and settings["pairs"]["gsm8k"] > 0
    assert settings["tree_nodes"] == {"gsm8k": 15, "babyai": 10}  # 5 nodes per tree in the fake run
    assert "per 1,000 nodes" in report
    with open(root / "sampled_results.csv", newline="") as fh:
        sampled_rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(fh)}
    assert sampled_rows[("gsm8k", TREEDPO)]["episodes"] == "20" and sampled_rows[("gsm8k", TREEDPO)]["mean"] == "1.0"
    assert (root / "paired_rate_tests.csv").exists() and (root / "per_task_sampled.csv").exists()


def test_two_rounds_sample_with_the_newest_model_and_train_it_further(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1", "evaluate_base=false", "eval_samples=1", "rounds=2",
        "datasets=[{name: babyai, sample_tasks: 3, eval_tasks: 4}]"])
    warm_dir = str(tmp_path / "warm")
    exp = run_offline(cfg, tmp_path, lambda model, task: False)
    calls = exp.stages.calls
    served = [c[1] for c in calls if c[0] == "serve"]
    round1, round2 = root / "round1" / "treedpo_model", root / "round2" / "treedpo_model"
    assert served == [warm_dir, str(round1), str(round2)]       # round 2 samples with the round-1 model
    trains = [(c[1], c[2]) for c in calls if c[0] == "train"]
    assert trains == [(warm_dir, "cpu_dpo"), (str(round1), "cpu_dpo")]
    samples = [c for c in calls if c[0] in ("sample", "round2/sample")]
    assert [c[0] for c in samples] == ["sample", "round2/sample"]
    ids = [task_ids_of(c[2]["babyai"]) for c in samples]
    assert ids[0] != ids[1]                                      # new train tasks in the new round
    evals = [c[1] for c in calls if c[0] == "eval_treedpo"]
    assert evals == [str(round2)]                                # the last model is the one evaluated
    settings = json.loads((root / "settings.json").read_text())
    assert [r["round"] for r in settings["rounds"]] == [1, 2] and settings["models"][TREEDPO] == str(round2)
    assert json.loads((root / "tasks.json").read_text())["train_by_round"][1]["babyai"] == ids[1]
    assert "| 2 | `" in (root / "report.md").read_text()


def test_sampled_episodes_give_per_task_rates_and_a_paired_rate_test(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1", "evaluate_base=false", "eval_samples=4",
        "datasets=[{name: babyai, sample_tasks: 2, eval_tasks: 40, eval_samples: 4}]"])
    warm_dir = str(tmp_path / "warm")

    def solved(model, task, seed):
        # greedy: nobody solves; sampled: the warm start solves task i in sample k iff (i + k) % 4 == 0 (25 %),
        # TreeDPO in two of the four samples (50 %), on every task
        i = sum(map(ord, task))
        if seed is None:
            return False
        k = seed - cfg.eval_seed
        return (i + k) % 4 == 0 if model == warm_dir else (i + k) % 2 == 0

    run_offline(cfg, tmp_path, solved)
    with open(root / "paired_rate_tests.csv", newline="") as fh:
        (test,) = list(csv.DictReader(fh))
    assert (test["model_a"], test["model_b"], test["tasks"], test["samples_per_task"]) == (TREEDPO, WARM, "40", "4")
    assert float(test["effect"]) == pytest.approx(0.25)  # 50 % - 25 % on every task
    assert float(test["permutation_p"]) < 1e-6 and float(test["wilcoxon_p"]) < 1e-6
    assert test["tasks_a_better"] == "40"
    with open(root / "paired_tests.csv", newline="") as fh:
        (greedy,) = list(csv.DictReader(fh))
    assert greedy["p_value"] == "1.0"  # the greedy run alone sees nothing
    report = (root / "report.md").read_text()
    assert "| warm+TreeDPO vs warm-start | 40 | +25.0 |" in report


def test_screen_grows_trees_only_on_train_tasks_with_mixed_rollouts(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1", "evaluate_base=false", "eval_samples=0",
        "datasets=[{name: babyai, sample_tasks: 3, screen_tasks: 12, screen_samples: 3, eval_tasks: 4}]"])
    warm_dir = str(tmp_path / "warm")
    kinds = {}

    def solved(model, task, seed):
        # train task j: always solved if j % 3 == 0, never if j % 3 == 1, in one of three rollouts if j % 3 == 2
        if model != warm_dir or seed is None or seed < cfg.eval_seed + 100:
            return False
        j = kinds.setdefault(task, len(kinds))
        return j % 3 == 0 or (j % 3 == 2 and seed == cfg.eval_seed + 100)

    exp = run_offline(cfg, tmp_path, solved)
    screens = [c for c in exp.stages.calls if c[0].startswith("screen/")]
    assert [c[0] for c in screens] == ["screen/sample0", "screen/sample1", "screen/sample2"]
    candidates = task_ids_of(screens[0][2]["babyai"])
    assert len(candidates) == 12 and all("split=train" in c[2]["babyai"] for c in screens)
    mixed = [t for t in candidates if kinds[t] % 3 == 2]
    tasks = json.loads((root / "tasks.json").read_text())
    assert tasks["train"]["babyai"] == mixed[:3]  # the first sample_tasks mixed candidates, in candidate order
    (sample,) = [c for c in exp.stages.calls if c[0] == "sample"]
    assert f"task_ids={json.dumps(mixed[:3])}" in sample[2]["babyai"]
    settings = json.loads((root / "settings.json").read_text())
    assert settings["screen"]["babyai"] == {"candidates": 12, "rollouts_per_task": 3, "always_solved": 4,
                                            "never_solved": 4, "mixed": 4, "trees": 3}
    assert "4 of 12 candidates mixed" in (root / "report.md").read_text()


def test_a_focused_screen_draws_its_second_pass_from_the_levels_the_first_found_mixed(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1", "evaluate_base=false", "eval_samples=0",
        "datasets=[{name: babyai, sample_tasks: 40, screen_tasks: 80, screen_samples: 2, screen_focus: 0.5,"
        " screen: [max_steps=8], evaluate: [max_steps=10], eval_tasks: 4}]"])
    warm_dir = str(tmp_path / "warm")

    def level(task):
        return task.rpartition(":")[0]

    def solved(model, task, seed):
        # GoTo* levels: solved in the first rollout only (every seed mixed); Open*: always; the rest never
        if model != warm_dir or seed is None or seed < cfg.eval_seed + 100:
            return False
        return ("GoTo" in level(task) and seed == cfg.eval_seed + 100) or "-Open" in level(task)

    exp = run_offline(cfg, tmp_path, solved)
    screens = {c[0]: c for c in exp.stages.calls if "screen" in c[0]}
    assert list(screens) == ["screen/sample0", "screen/sample1", "screen_focus/sample0", "screen_focus/sample1"]

    first, second = (task_ids_of(screens[k][2]["babyai"]) for k in ("screen/sample0", "screen_focus/sample0"))
    assert len(first) == 40 and len(second) == 40 and not set(first) & set(second)
    first_goto = {level(t) for t in first if "GoTo" in level(t)}
    assert first_goto and {level(t) for t in second} <= first_goto  # only levels the first pass saw mixed
    for call in screens.values():  # the screen's own settings come after the evaluation's: max_steps=8 wins
        sets = call[2]["babyai"]
        assert sets.index("max_steps=8") > sets.index("max_steps=10") and "split=train" in sets
    record = json.loads((root / "settings.json").read_text())["screen"]["babyai"]
    mixed_first = sum("GoTo" in level(t) for t in first)
    assert record["first_pass"]["mixed"] == mixed_first and record["focused_pass"]["mixed"] == 40
    assert record["mixed"] == mixed_first + 40 and record["candidates"] == 80
    assert sorted(record["focused_pass"]["task_types"]) == sorted(first_goto)
    train = json.loads((root / "tasks.json").read_text())["train"]["babyai"]
    assert train[:mixed_first] == [t for t in first if "GoTo" in level(t)] and len(train) == 40  # first pass first
    report = (root / "report.md").read_text()
    assert f"first pass: {mixed_first} of 40 mixed" in report and "40 of 40 mixed (100.0 %)" in report


def test_a_focused_screen_without_mixed_task_types_has_no_second_pass(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1", "evaluate_base=false", "eval_samples=0",
        "datasets=[{name: babyai, sample_tasks: 4, screen_tasks: 10, screen_samples: 2, screen_focus: 0.5,"
        " eval_tasks: 4}]"])
    exp = run_offline(cfg, tmp_path, lambda model, task, seed=None: False)
    assert not [c for c in exp.stages.calls if c[0].startswith("screen_focus/")]
    record = json.loads((root / "settings.json").read_text())["screen"]["babyai"]
    assert record["focused_pass"] == {"candidates": 0, "task_types": []} and record["candidates"] == 5


@pytest.mark.parametrize("focus", ["-0.1", "1.0"])
def test_screen_focus_out_of_range_is_refused_with_its_key(focus):
    with pytest.raises(ConfigError, match=r"datasets.babyai.screen_focus"):
        load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml",
                    [f"datasets=[{{name: babyai, screen_tasks: 10, screen_samples: 2, screen_focus: {focus}}}]"])


def test_an_env_without_base_evaluation_is_compared_without_the_base_row(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1", "evaluate_base=true", "eval_samples=4",
        "datasets=[{name: gsm8k, sample_tasks: 3, eval_tasks: 5, evaluate: [max_turn=1]},"
        " {name: babyai, sample_tasks: 2, eval_tasks: 4, evaluate_base: false}]"])
    exp = run_offline(cfg, tmp_path, lambda model, task: model.endswith("treedpo_model"))
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
        f"output_dir={root}", "budget=1", "evaluate_base=true", "eval_samples=4",
        "datasets=[{name: gsm8k, sample_tasks: 3, eval_tasks: 5, evaluate: [max_turn=1]}]"])
    run_offline(cfg, tmp_path, lambda model, task: model.endswith("treedpo_model"))
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
    assert settings["unfinished evaluations (left out)"] == [f"{BASE} on gsm8k (4 of 5 runs merged)"]
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
            "try:\n    print('ready', flush=True)\n    time.sleep(60)\n"
            "except KeyboardInterrupt as exc:\n    print('stopped', exc)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    assert proc.communicate(timeout=20)[0].strip() == f"stopped {sig.name}"


def test_heldout_valid_evaluates_on_the_validation_split_and_leaves_out_envs_without_one(tmp_path):
    root = tmp_path / "exp"
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
        f"output_dir={root}", "budget=1", "evaluate_base=false", "eval_samples=0", "heldout=valid",
        "datasets=[{name: gsm8k, sample_tasks: 2, eval_tasks: 5},"
        " {name: babyai, sample_tasks: 2, eval_tasks: 6, valid_split: valid}]"])
    run_offline(cfg, tmp_path, lambda model, task: False)
    tasks = json.loads((root / "tasks.json").read_text())
    assert list(tasks["evaluation"]) == ["babyai"] and len(tasks["evaluation"]["babyai"]) == 6
    seeds = {int(t.rsplit(":", 1)[1]) for t in tasks["evaluation"]["babyai"]}
    assert min(seeds) >= 1000  # the valid seeds, not the test split's seed 0 nor train seeds 1..25
    with pytest.raises(Exception, match="no dataset has a valid_split"):
        Experiment(load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [
            f"output_dir={root}", "heldout=valid", "datasets=[{name: gsm8k}]"]))


def test_a_warm_start_trained_in_another_prompt_style_is_refused_before_sampling(tmp_path):
    warm = tmp_path / "warm"
    warm.mkdir()
    (warm / "warm_start.json").write_text(json.dumps({"inputs": {"expert_data": {"prompt_style": "compact"}}}))
    stages = LoopStages(tmp_path / "exp", tag="experiment", n_stages=1, proc_per_server=1, tmux_start_id=0,
                        serving={}, sampler={"prompt_style": "original"})
    with pytest.raises(StageError, match="prompt_style is 'original' but .* trained on 'compact'"):
        stages.check_prompt_style(str(warm), {"babyai": ["max_steps=8", 'task_ids=["x"]']})
    stages.sampler = {}
    stages.check_prompt_style(str(warm), {"babyai": ["max_steps=8"]})              # the default style: compact
    stages.check_prompt_style(str(tmp_path), {"babyai": ["prompt_style=original"]})  # not a warm start: no check


def test_resume_continues_in_the_same_output_dir_with_the_same_settings_only(tmp_path):
    root = tmp_path / "exp"
    overrides = [f"output_dir={root}", "budget=1", "evaluate_base=false", "eval_samples=1",
                 "datasets=[{name: babyai, sample_tasks: 2, eval_tasks: 4}]"]
    run_offline(load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", overrides), tmp_path,
                lambda model, task: False)
    first_tasks = (root / "tasks.json").read_text()
    exp = run_offline(load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml",
                                  [*overrides, "resume=true"]), tmp_path, lambda model, task: False)
    assert not list(tmp_path.glob("exp.prev-*")), "resume keeps the output directory"
    assert list(root.glob("treedpo_model.prev-*/config.json")), "the older DPO model is moved aside, not reused"
    assert (root / "tasks.json").read_text() == first_tasks and (root / "report.md").exists()
    assert [c[0] for c in exp.stages.calls if c[0] == "train"] == ["train"]
    with pytest.raises(ConfigError, match="key 'resume'.*other settings \\(eval_samples: 1 -> 2\\)"):
        Experiment(load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml",
                               [*overrides, "resume=true", "eval_samples=2"])).main()
    with pytest.raises(ConfigError, match="key 'resume'.*nothing to resume"):
        Experiment(load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml",
                               [f"output_dir={tmp_path / 'none'}", "resume=true"])).main()


def test_reuse_from_copies_trees_and_warm_evaluations_and_refuses_other_settings(tmp_path):
    """A DPO sweep on the same pairs: reuse_from=A copies A's screen, trees and warm-start evaluations into B
    (A is only read) and only DPO and the TreeDPO evaluation run; a non-DPO setting or another warm start is
    refused with the key."""
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["budget=1", "evaluate_base=false", "eval_samples=2",
              "datasets=[{name: babyai, sample_tasks: 2, eval_tasks: 4}]"]

    def config(*extra):
        return load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", [*common, *extra])

    solved = lambda model, task, seed: seed is not None and seed % 2 == 0  # noqa: E731
    run_offline(config(f"output_dir={first}"), tmp_path, solved)
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    exp = run_offline(config(f"output_dir={second}", f"reuse_from={first}", "train_overrides=[pref_ftx=1.0]",
                             "dpo_epochs=4", "tmux_start_id=300"), tmp_path, solved)
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before, "the reused run is only read"
    for kind in ("sample/babyai", "eval_warm/babyai", "eval_warm/sample1/babyai"):
        copied = sorted(p.relative_to(second) for p in (second / kind).rglob("*.csv"))
        assert copied and copied == sorted(p.relative_to(first) for p in (first / kind).rglob("*.csv"))
    (train,) = [c for c in exp.stages.calls if c[0] == "train"]
    assert "pref_ftx=1.0" in train[3]
    assert json.loads((second / "run.json").read_text())["reused_from"] == str(first)
    with pytest.raises(ConfigError, match=r"key 'reuse_from'.*other settings than DPO's \(eval_samples: 2 -> 3\)"):
        run_offline(config(f"output_dir={tmp_path / 'c'}", f"reuse_from={first}", "eval_samples=3"), tmp_path,
                    solved)
    run = json.loads((first / "run.json").read_text())
    (first / "run.json").write_text(json.dumps({**run, "warm_fingerprint": "another"}))
    with pytest.raises(ConfigError, match="key 'reuse_from'.*another warm start"):
        run_offline(config(f"output_dir={tmp_path / 'd'}", f"reuse_from={first}"), tmp_path, solved)
    assert not (tmp_path / "d" / "sample").exists(), "nothing is copied from a run of another warm start"


class FinishingStages(Stages):
    """Stages whose dataset files and trained models look like the real ones where resume looks: the dataset JSON,
    train.py's densepolicy_train.json (written last) and the model's provenance record of its dataset."""

    def prepare_dataset(self, pairs_csv, name, model, data_dir=None):
        super().prepare_dataset(pairs_csv, name, model, data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / f"{name}.json").write_text(open(pairs_csv).read())

    def train(self, config, dataset, model, out, overrides, data_dir=None):
        super().train(config, dataset, model, out, overrides, data_dir)
        import hashlib
        sha = hashlib.sha256((data_dir / f"{dataset}.json").read_bytes()).hexdigest()
        (out / "provenance.json").write_text(json.dumps(
            {"schema": 1, "records": {"model": {"datasets": [{"name": dataset, "sha256": sha}]}}}))
        (out / "densepolicy_train.json").write_text("{}")


def test_resume_reuses_a_dpo_model_that_finished_on_the_same_dataset(tmp_path):
    root = tmp_path / "exp"
    overrides = [f"output_dir={root}", "budget=1", "evaluate_base=false", "eval_samples=1",
                 "datasets=[{name: babyai, sample_tasks: 2, eval_tasks: 4}]"]

    def run(*extra):
        exp = Experiment(load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml",
                                     [*overrides, *extra]), warm_start=lambda overrides, log: tmp_path / "warm")
        exp.stages = FinishingStages(exp.root, tag="experiment", n_stages=exp.stages.n_stages, proc_per_server=1,
                                     tmux_start_id=0, serving={}, sampler={}, solved=lambda model, task: False)
        assert exp.main() == 0
        return [c[0] for c in exp.stages.calls if c[0] == "train"]

    assert run() == ["train"]
    assert run("resume=true") == [], "a finished DPO model on the same dataset is reused"
    assert not list(root.glob("treedpo_model.prev-*"))
    (root / "treedpo_model" / "densepolicy_train.json").unlink()  # training stopped before train.py finished
    assert run("resume=true") == ["train"]
    assert list(root.glob("treedpo_model.prev-*")), "an unfinished model is moved aside and trained anew"
