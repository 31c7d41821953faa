"""The experiment's table and report from synthetic per-task results (paired by task id)."""
import csv
import json

import pytest

from densepolicy.experiment import ExperimentConfig, dpo_steps, write_report
from densepolicy.config import ConfigError, load_config
from densepolicy.paths import PROJECT_ROOT
from densepolicy.postprocess import comparison
from densepolicy.postprocess.significance import exact_mcnemar, wilson_interval
from tests.harness.loop_fakes import INVALID, VALID, eval_row, write_eval_run, write_rows

TASKS = [str(i) for i in range(20)]


def outcomes_from(tmp_path, name, solved_ids, dataset="gsm8k"):
    run = write_eval_run(tmp_path / name, dataset, {t: t in solved_ids for t in TASKS})
    return comparison.load_outcomes(run)


def test_protocol_rate_counts_only_the_models_own_steps(tmp_path):
    rows = [eval_row("a", "babyai", True, [VALID, INVALID, "Answer: 3"]),
            eval_row("b", "babyai", False, [INVALID, INVALID]),
            eval_row("c", "babyai", False, [])]  # e.g. context overflow before the first step
    got = comparison.load_outcomes(write_rows(tmp_path / "babyai.test.None.csv", rows))
    # the in-context example's assistant turn (valid) is not the model's: a has 2/3 valid, b 0/2
    assert {t: (o.solved, o.steps, o.valid_steps) for t, o in got.items()} == {
        "a": (True, 3, 2), "b": (False, 2, 0), "c": (False, 0, 0)}


def test_math_counts_only_the_first_answer(tmp_path):
    rows = [eval_row("1", "gsm8k", True, [VALID, "Answer: 3"], turns=1),
            eval_row("2", "gsm8k", True, ["Answer: 2", "Answer: 3"], turns=2)]  # right at the 2nd attempt
    got = comparison.load_outcomes(write_rows(tmp_path / "gsm8k.test.None.csv", rows))
    assert got["1"].solved and not got["2"].solved


def test_table_rates_intervals_and_paired_tests(tmp_path):
    warm = outcomes_from(tmp_path, "warm", {"0", "1", "2", "3", "4"})
    # TreeDPO solves the warm model's tasks but one, and 7 more: 7 vs 1 discordant
    dpo = outcomes_from(tmp_path, "dpo", {"0", "1", "2", "3", "10", "11", "12", "13", "14", "15", "16"})
    base = outcomes_from(tmp_path, "base", set())
    c = comparison.compare("gsm8k", {"base": base, "warm": warm, "dpo": dpo}, [("dpo", "warm"), ("warm", "base")])
    scores = {s.model: s for s in c.scores}
    assert [s.model for s in c.scores] == ["base", "warm", "dpo"]
    assert (scores["dpo"].n, scores["dpo"].solved) == (20, 11)
    assert scores["dpo"].ci == pytest.approx(wilson_interval(11, 20))
    assert scores["warm"].protocol_rate == pytest.approx(5 / 20)
    (a, b, t1), (_, _, t2) = c.tests
    assert (a, b, t1.a_only, t1.b_only) == ("dpo", "warm", 7, 1)
    assert t1.p_value == pytest.approx(exact_mcnemar(7, 1)) and t1.p_value == pytest.approx(0.0703125)
    assert (t2.a_only, t2.b_only, t2.p_value) == (5, 0, pytest.approx(0.0625))
    text = comparison.markdown_tables([c])
    assert "| dpo | 20 | 11 | 55.0 |" in text and "| dpo vs warm | 20 | 7 | 1 | 0.0703 |" in text


def test_refuses_models_run_on_different_task_ids(tmp_path):
    warm = outcomes_from(tmp_path, "warm", {"0"})
    other = dict(warm)
    other.pop("19")
    other["20"] = other["0"]
    with pytest.raises(ValueError, match="same task ids"):
        comparison.compare("gsm8k", {"warm": warm, "dpo": other}, [("dpo", "warm")])


def test_refuses_duplicate_task_rows(tmp_path):
    rows = [eval_row("1", "gsm8k", True, [VALID]), eval_row("1", "gsm8k", False, [INVALID])]
    with pytest.raises(ValueError, match="duplicate task"):
        comparison.load_outcomes(write_rows(tmp_path / "gsm8k.test.None.csv", rows))


def test_report_files(tmp_path):
    warm = outcomes_from(tmp_path, "warm", {"0", "1"})
    dpo = outcomes_from(tmp_path, "dpo", {"0", "1", "2"})
    bw = outcomes_from(tmp_path, "bw", {"0"}, dataset="babyai")
    bd = outcomes_from(tmp_path, "bd", set(), dataset="babyai")
    comps = [comparison.compare("gsm8k", {"warm-start": warm, "warm+TreeDPO": dpo}, [("warm+TreeDPO", "warm-start")]),
             comparison.compare("babyai", {"warm-start": bw, "warm+TreeDPO": bd}, [("warm+TreeDPO", "warm-start")])]
    out = tmp_path / "exp"
    settings = {"config": {"budget": 0.5}, "models": {"warm-start": str(PROJECT_ROOT / "models" / "w"), "warm+TreeDPO": "d"},
                "pairs": {"gsm8k": 12, "babyai": 0}, "dpo_steps": 3, "timings_s": {"sampling": 12.0}}
    report = write_report(out, comps, settings)
    text = report.read_text()
    assert "### gsm8k (20 held-out tasks, accuracy@1)" in text and "### babyai (20 held-out tasks, success)" in text
    assert "gsm8k 12, babyai 0; DPO steps: 3" in text and "- gsm8k: 0, 1, 2, 3" in text
    assert "warm-start = `models/w`" in text and str(PROJECT_ROOT) not in text  # no machine paths in reports
    with open(out / "results.csv", newline="") as fh:
        rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(fh)}
    assert rows[("gsm8k", "warm+TreeDPO")]["solved"] == "3" and rows[("babyai", "warm-start")]["rate"] == "0.05"
    with open(out / "paired_tests.csv", newline="") as fh:
        tests = list(csv.DictReader(fh))
    assert [(t["dataset"], t["a_only"], t["b_only"]) for t in tests] == [("gsm8k", "1", "0"), ("babyai", "0", "1")]
    with open(out / "per_task.csv", newline="") as fh:
        assert sum(1 for _ in csv.DictReader(fh)) == 2 * 2 * 20
    assert (out / "success.png").stat().st_size > 1000
    assert json.loads((out / "settings.json").read_text())["pairs"] == {"gsm8k": 12, "babyai": 0}


def test_config_and_budget(tmp_path):
    cfg = load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml",
                      ["budget=0.5", "dpo_max_steps=30", "dpo_epochs=2"])
    assert cfg.scaled(150) == 75 and cfg.scaled(1) == 1
    assert dpo_steps(cfg, 1000) == 15  # capped at dpo_max_steps x budget
    assert dpo_steps(cfg, 6) == 3  # ceil(2 epochs * 6 pairs / (2 per device x 2 accumulation))
    assert dpo_steps(cfg, 1) == 1
    with pytest.raises(ConfigError, match="budget"):
        load_config(ExperimentConfig, PROJECT_ROOT / "configs" / "experiment.yaml", ["budget=0"])


def test_sampled_episodes_are_scored_per_task_and_refused_when_unpaired(tmp_path):
    warm = outcomes_from(tmp_path, "warm", {"0"})
    runs_warm = [outcomes_from(tmp_path, f"w{k}", {str(i) for i in range(k, 20, 4)}) for k in range(4)]  # 25 %
    runs_dpo = [outcomes_from(tmp_path, f"d{k}", {str(i) for i in range(20) if (i + k) % 2}) for k in range(4)]
    c = comparison.compare("gsm8k", {"warm": warm, "dpo": warm}, [("dpo", "warm")],
                           samples={"warm": runs_warm, "dpo": runs_dpo}, temperature=0.7)
    means = {s.model: s.mean for s in c.sampled}
    assert means["warm"].mean == pytest.approx(0.25) and means["dpo"].mean == pytest.approx(0.5)
    assert means["warm"].samples == 80 and means["warm"].tasks == 20
    (_, _, r), = c.rate_tests
    assert r.effect == pytest.approx(0.25) and r.a_better == 20 and r.permutation_p < 1e-5
    text = comparison.markdown_tables([c])
    assert "4 episodes per task at temperature 0.7" in text and "| dpo vs warm | 20 | +25.0 |" in text
    rows = comparison.sampled_task_rows([c])
    assert len(rows) == 20 * 2 * 4 and {r["sample"] for r in rows} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="same number of sampled episodes"):
        comparison.compare("gsm8k", {"warm": warm, "dpo": warm}, [], samples={"warm": runs_warm, "dpo": runs_dpo[:3]})
    shifted = dict(runs_dpo[0])
    shifted["99"] = shifted.pop("0")
    with pytest.raises(ValueError, match="sample 0 of 'dpo'"):
        comparison.compare("gsm8k", {"warm": warm, "dpo": warm}, [],
                           samples={"warm": runs_warm[:1], "dpo": [shifted]})


def test_a_full_disk_while_the_report_is_written_is_one_line_exit_5_and_no_temp_file(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from densepolicy import experiment
    from densepolicy.results_io import OutputWriteError

    warm = outcomes_from(tmp_path, "warm", {"0"})
    comps = [comparison.compare("gsm8k", {"warm-start": warm, "warm+TreeDPO": warm}, [("warm+TreeDPO", "warm-start")])]
    out = tmp_path / "exp"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputWriteError, match=r"cannot write .*exp/results.csv: No space left on device"):
        write_report(out, comps, {"config": {}, "models": {"warm-start": "w", "warm+TreeDPO": "d"}})
    assert [p.name for p in out.iterdir()] == []  # nothing half-written, no .tmp left

    def report_only(self):
        write_report(out, comps, {"config": {}, "models": {}})

    monkeypatch.setattr(experiment.Experiment, "report_only", report_only)
    assert experiment.main(["--report-only", f"output_dir={out}"]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert err[0].endswith("then rerun the same command to resume (add resume=true)")
