"""The settings `make demo` and `make experiment` share (densepolicy/loop_config.py): one definition per shared
key, one validation, one warm-start hook; an unknown key in either config is named; the demo's former `model`."""
from __future__ import annotations

import dataclasses

import pytest

from densepolicy.config import ConfigError
from densepolicy.demo import Demo, DemoConfig
from densepolicy.experiment import Experiment, ExperimentConfig
from densepolicy.loop_config import LoopConfig, cached_warm_start, load_loop_config
from densepolicy.paths import PROJECT_ROOT

CONFIGS = {DemoConfig: PROJECT_ROOT / "configs" / "demo.yaml",
           ExperimentConfig: PROJECT_ROOT / "configs" / "experiment.yaml"}
SHARED = {"base_model", "warm_model", "warm_start", "evaluate_base", "output_dir", "proc_per_server", "tmux_start_id",
          "device", "gpu", "serving", "sampler", "train_config", "train_overrides", "dataset_name"}
loops = pytest.mark.parametrize("cls", list(CONFIGS), ids=lambda cls: cls.__name__)


def load(cls, overrides=(), path=None):
    return load_loop_config(cls, path or CONFIGS[cls], ["device=cpu", *overrides])


@loops
def test_a_shared_key_is_defined_once_for_both_loops(cls):
    """Each shared key's type, default and help are LoopConfig's field itself, not a copy in DemoConfig or
    ExperimentConfig (a re-declared field would be another object)."""
    base = {f.name: f for f in dataclasses.fields(LoopConfig)}
    assert set(base) == SHARED
    own = {f.name: f for f in dataclasses.fields(cls)}
    assert all(own[name] is base[name] for name in SHARED)
    assert not SHARED & set(vars(cls).get("__annotations__", {}))  # none re-declared in the subclass


@loops
@pytest.mark.parametrize("override, key", [("proc_per_server=0", "proc_per_server"),
                                           ("tmux_start_id=-1", "tmux_start_id")])
def test_a_shared_key_is_validated_once_for_both_loops(cls, override, key):
    with pytest.raises(ConfigError, match=f"key '{key}' must be >= "):
        load(cls, [override])


@loops
def test_an_unknown_key_on_the_command_line_or_in_the_file_is_named(cls, tmp_path):
    with pytest.raises(ConfigError, match="command line: unknown key 'warm_modle'"):
        load(cls, ["warm_modle=x"])
    bad = tmp_path / "loop.yaml"
    bad.write_text(CONFIGS[cls].read_text() + "evalute_base: true\n")
    with pytest.raises(ConfigError, match=f"{bad}: unknown key 'evalute_base' for {cls.__name__}"):
        load(cls, path=bad)


def test_the_loops_keep_their_own_values_and_share_the_defaults():
    demo, experiment = load(DemoConfig), load(ExperimentConfig)
    assert (demo.output_dir, demo.tmux_start_id, demo.proc_per_server, demo.train_config, demo.dataset_name) == (
        "eval_results/demo", 70, 3, "cpu_tiny", "tree_dpo_demo")
    assert (experiment.output_dir, experiment.tmux_start_id, experiment.proc_per_server, experiment.train_config,
            experiment.dataset_name) == ("eval_results/experiment", 150, 6, "cpu_dpo", "tree_dpo_experiment")
    for cfg in (demo, experiment):
        assert (cfg.base_model, cfg.warm_model, cfg.warm_start, cfg.evaluate_base) == (
            "SmolLM2-135M-Instruct", "", [], False)
        as_text = {k: str(v) for k, v in {**cfg.serving, **cfg.sampler}.items()}  # (the dicts read numbers as text)
        assert as_text == {"max_model_len": "4096", "device": "cpu", "max_tokens": "192", "request_timeout_s": "900"}


@loops
def test_the_demos_former_model_key_is_read_as_base_model(cls, tmp_path, capsys):
    assert load(cls, ["model=my-model"]).base_model == "my-model"
    assert "key 'model' is now called 'base_model'" in capsys.readouterr().err
    old = tmp_path / "old.yaml"
    old.write_text("model: old-model\n" + CONFIGS[cls].read_text())
    assert load(cls, path=old).base_model == "old-model"
    old.write_text("model: old-model\nbase_model: new-model\n" + CONFIGS[cls].read_text())
    with pytest.raises(ConfigError, match="keys 'model' and 'base_model' name the same setting"):
        load(cls, path=old)


def test_both_loops_start_from_the_same_warm_start_hook(tmp_path):
    demo = Demo(load(DemoConfig, [f"output_dir={tmp_path / 'demo'}"]))
    experiment = Experiment(load(ExperimentConfig, [f"output_dir={tmp_path / 'exp'}"]))
    assert demo.warm_start is cached_warm_start and experiment.warm_start is cached_warm_start

    asked, said = [], []
    def build(overrides, log):
        asked.append(overrides)
        return tmp_path / "warm"
    cfg = load(DemoConfig, ["warm_start=[expert_data.seed=3]"])
    assert cfg.warm_start_model(said.append, build) == str(tmp_path / "warm")
    assert asked == [["expert_data.seed=3"]] and said == [f"warm-started model: {tmp_path / 'warm'}"]
    given = load(ExperimentConfig, [f"warm_model={tmp_path / 'mine'}"])
    assert given.warm_start_model(said.append, build) == str(tmp_path / "mine") and len(asked) == 1


def test_the_loops_read_a_task_config_through_the_samplers_lookup():
    """One lookup of configs/tasks/<dataset>.yaml for the loops and the workers: the same dict, and an unknown
    dataset named with the key and the datasets that exist."""
    from densepolicy.config import read_yaml
    from densepolicy.loop_stages import task_config
    from densepolicy.sampling.config import task_config_path

    assert task_config("babyai") == read_yaml(task_config_path("babyai"))
    with pytest.raises(ConfigError, match=r"key 'datasets': unknown dataset 'nope'.*known: .*babyai"):
        task_config("nope")
